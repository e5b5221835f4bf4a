// failure_dist_test.cpp — a rank that throws, is killed or never shows up makes the others fail
// with a c10::Error naming the operation and the group within a short timeout, never hang.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include <gtest/gtest.h>

#include "hybridmoe/collectives.h"
#include "support/multirank.h"

namespace hybridmoe {
namespace {

using testing::MultiRankOptions;
using testing::RankContext;
using testing::run_on_ranks;

constexpr double kTimeoutS = 3.0;

/// Options for runs where one rank fails on purpose: short timeout, nobody ended early.
MultiRankOptions failing_run() {
  MultiRankOptions o;
  o.timeout_s = kTimeoutS;
  o.max_time_s = 60;
  o.kill_on_failure = false;
  o.expect_success = false;
  return o;
}

/// What a surviving rank checks: the collective fails quickly with a message that names the
/// operation and the group.
void expect_collective_error(RankContext& ctx, const char* op) {
  ctx.finalize = false;  // the failed peer will never reach the final sync
  const auto start = std::chrono::steady_clock::now();
  std::string message;
  try {
    for (int i = 0; i < 3; ++i) dist::all_reduce_sum(torch::ones({4}), ctx.group());
  } catch (const c10::Error& e) {
    message = e.what_without_backtrace();
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_FALSE(message.empty()) << "the collective should have failed";
  EXPECT_NE(message.find(op), std::string::npos) << message;
  EXPECT_NE(message.find("group 'world'"), std::string::npos) << message;
  EXPECT_LT(seconds, kTimeoutS + 5.0) << message;
  std::cout << "rank " << ctx.rank() << " got, after " << seconds << " s: " << message << "\n";
}

void expect_codes(const dist::LaunchResult& r, int64_t failing) {
  if (testing::is_worker()) return;  // the codes are known to the parent only
  ASSERT_EQ(r.rank_codes.size(), 3u);
  for (int64_t rank = 0; rank < 3; ++rank) {
    if (rank == failing) {
      EXPECT_NE(r.rank_codes[rank], 0) << "rank " << rank;
    } else {
      EXPECT_EQ(r.rank_codes[rank], 0) << "rank " << rank;
    }
  }
  EXPECT_FALSE(r.timed_out);
}

TEST(Failure, RankThrows) {
  auto r = run_on_ranks(
      3,
      [](RankContext& ctx) {
        dist::barrier(ctx.group());
        if (ctx.rank() == 1) throw std::runtime_error("rank 1 gives up on purpose");
        expect_collective_error(ctx, "all_reduce_sum");
      },
      failing_run());
  expect_codes(r, 1);
}

TEST(Failure, RankKilled) {
  auto r = run_on_ranks(
      3,
      [](RankContext& ctx) {
        dist::all_reduce_sum(torch::ones({4}), ctx.group());
        if (ctx.rank() == 2) ::raise(SIGKILL);
        expect_collective_error(ctx, "all_reduce_sum");
      },
      failing_run());
  expect_codes(r, 2);
  if (!testing::is_worker()) {
    EXPECT_EQ(r.rank_codes[2], 128 + SIGKILL);
  }
}

TEST(Failure, ServerRankKilled) {
  // Rank 0 also serves the rendezvous store.
  auto r = run_on_ranks(
      3,
      [](RankContext& ctx) {
        dist::barrier(ctx.group());
        if (ctx.rank() == 0) ::raise(SIGKILL);
        expect_collective_error(ctx, "all_reduce_sum");
      },
      failing_run());
  expect_codes(r, 0);
}

TEST(Failure, RankNeverShowsUp) {
  // Rank 1 stays alive but does not join: the others time out.
  auto r = run_on_ranks(
      3,
      [](RankContext& ctx) {
        dist::barrier(ctx.group());
        if (ctx.rank() == 1) {
          ctx.finalize = false;
          std::this_thread::sleep_for(std::chrono::duration<double>(kTimeoutS + 1.0));
          return;
        }
        expect_collective_error(ctx, "all_reduce_sum");
      },
      failing_run());
  if (testing::is_worker()) return;
  ASSERT_EQ(r.rank_codes.size(), 3u);
  EXPECT_EQ(r.rank_codes[0], 0);
  EXPECT_EQ(r.rank_codes[2], 0);
}

TEST(Failure, FailingRankEndsTheRunByDefault) {
  // With the default options a failure ends the other ranks and is reported to the parent.
  MultiRankOptions o;
  o.expect_success = false;
  o.timeout_s = 60;  // the others would wait this long on their own
  const auto start = std::chrono::steady_clock::now();
  auto r = run_on_ranks(
      2,
      [](RankContext& ctx) {
        if (ctx.rank() == 1) throw std::runtime_error("on purpose");
        dist::barrier(ctx.group());
      },
      o);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (testing::is_worker()) return;
  EXPECT_EQ(r.failed_rank, 1);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_LT(seconds, 30.0);
}

}  // namespace
}  // namespace hybridmoe
