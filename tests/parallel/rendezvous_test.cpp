// rendezvous_test.cpp — the rendezvous honours the timeout: threads of this process act as ranks
// (each with its own environment); when one of 3 ranks never starts, the others fail within a
// bounded time with an error naming the missing rank, the master address and port and the
// timeout; ranks that start late but within the timeout meet.
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "hybridmoe/dist.h"

namespace hybridmoe {
namespace {

using Clock = std::chrono::steady_clock;

constexpr double kTimeoutS = 3.0;

dist::EnvMap rank_env(int64_t rank, int64_t world, int64_t port) {
  return {{"RANK", std::to_string(rank)},
          {"WORLD_SIZE", std::to_string(world)},
          {"MASTER_ADDR", "127.0.0.1"},
          {"MASTER_PORT", std::to_string(port)}};
}

/// How one thread-rank's init() ended.
struct Outcome {
  std::string error;  // empty: init returned
  double seconds = 0;
};

/// Runs init() on the given ranks of a world of 3 (the others never start), each in a thread.
std::vector<Outcome> init_ranks(const std::vector<int64_t>& ranks, int64_t port) {
  std::vector<Outcome> out(ranks.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < ranks.size(); ++i) {
    threads.emplace_back([&, i] {
      const auto start = Clock::now();
      try {
        dist::init(dist::InitOptions()
                       .env(rank_env(ranks[i], 3, port))
                       .timeout_s(kTimeoutS)
                       .backend("gloo"));
      } catch (const c10::Error& e) {
        out[i].error = e.what_without_backtrace();
      }
      out[i].seconds = std::chrono::duration<double>(Clock::now() - start).count();
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

TEST(Rendezvous, MissingRankIsNamedWithinTheTimeout) {
  const int64_t port = dist::find_free_port();
  const std::string where = "127.0.0.1:" + std::to_string(port);
  const auto out = init_ranks({0, 1}, port);
  for (size_t i = 0; i < out.size(); ++i) {
    const std::string& e = out[i].error;
    ASSERT_FALSE(e.empty()) << "rank " << i << " should have failed";
    EXPECT_NE(
        e.find("rank " + std::to_string(i) + ": rendezvous at " + where + " timed out after 3 s"),
        std::string::npos)
        << e;
    EXPECT_NE(e.find("rank 2 of 3 never arrived"), std::string::npos) << e;
    EXPECT_LT(out[i].seconds, kTimeoutS + 5.0) << e;
    EXPECT_GE(out[i].seconds, kTimeoutS - 0.5) << e;
    std::cout << "rank " << i << " failed after " << out[i].seconds << " s: " << e << "\n";
  }
}

TEST(Rendezvous, MissingServerIsNamedWithinTheTimeout) {
  const int64_t port = dist::find_free_port();
  const std::string where = "127.0.0.1:" + std::to_string(port);
  const auto out = init_ranks({1, 2}, port);
  for (size_t i = 0; i < out.size(); ++i) {
    const std::string& e = out[i].error;
    ASSERT_FALSE(e.empty()) << "rank " << i + 1 << " should have failed";
    EXPECT_NE(e.find("rank " + std::to_string(i + 1) + ": rendezvous at " + where +
                     " timed out after 3 s"),
              std::string::npos)
        << e;
    EXPECT_NE(e.find("rank 0 never arrived (its store server at " + where), std::string::npos) << e;
    EXPECT_LT(out[i].seconds, kTimeoutS + 5.0) << e;
    std::cout << "rank " << i + 1 << " failed after " << out[i].seconds << " s: " << e << "\n";
  }
}

TEST(Rendezvous, LateRanksWithinTheTimeoutMeet) {
  // Rank 0 (the server) starts last, 1 s after the others; all three must meet.
  const int64_t port = dist::find_free_port();
  std::vector<dist::StorePtr> stores(3);
  std::vector<std::string> errors(3);
  std::vector<std::thread> threads;
  for (int64_t r : {1, 2, 0}) {
    threads.emplace_back([&, r] {
      if (r == 0) std::this_thread::sleep_for(std::chrono::seconds(1));
      try {
        stores[r] =
            dist::rendezvous(dist::parse_env(rank_env(r, 3, port)),
                             std::chrono::milliseconds(static_cast<int64_t>(kTimeoutS * 1000)));
      } catch (const c10::Error& e) {
        errors[r] = e.what_without_backtrace();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int64_t r = 0; r < 3; ++r) {
    EXPECT_EQ(errors[r], "") << "rank " << r;
    ASSERT_TRUE(stores[r]) << "rank " << r;
    EXPECT_TRUE(stores[r]->check({"hmoe/rank/" + std::to_string((r + 1) % 3) + "/arrived"}));
    EXPECT_EQ(stores[r]->getTimeout().count(), static_cast<int64_t>(kTimeoutS * 1000));
  }
  stores[1].reset();  // clients before the server
  stores[2].reset();
  stores[0].reset();
}

}  // namespace
}  // namespace hybridmoe
