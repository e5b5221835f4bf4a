// multirank.h — run the body of a GoogleTest case on N ranks (header-only test support).
//
// run_on_ranks(N, body) re-executes the test binary itself (/proc/self/exe) N times through
// dist::launch_local, with --gtest_filter=<this test> and HMOE_MULTIRANK_TEST / _CALL marking the
// workers. In each worker the same test runs again; its run_on_ranks call with the matching index
// initializes dist::World from the launcher's variables, runs `body` on that rank and finalizes
// (the other run_on_ranks calls of the test are skipped there). Gtest failures inside the body fail
// that worker, which fails its rank; the parent adds a failure (with every rank's output) unless
// all ranks exited 0. Workers use one thread, a collective timeout of 30 s and a wall-clock limit
// of 120 s by default, so a broken collective fails the test instead of hanging it.
//
// Example:
//   #include "support/multirank.h"
//
//   TEST(Collectives, AllReduceSums) {
//     hybridmoe::testing::run_on_ranks(4, [](hybridmoe::testing::RankContext& ctx) {
//       auto x = torch::full({2}, static_cast<double>(ctx.rank()), torch::kFloat64);
//       auto y = hybridmoe::dist::all_reduce_sum(x, ctx.group());
//       EXPECT_EQ(y[0].item<double>(), 0 + 1 + 2 + 3);
//     });
//   }
//
// Code of the test outside the body also runs in every worker, so keep it deterministic and
// cheap. A test may call run_on_ranks several times (e.g. on 2, 4 and 8 ranks). Checks on the
// returned result (per-rank exit codes, when a rank fails on purpose) belong in
// `if (!is_worker()) { ... }`: in a worker, run_on_ranks returns a result with every code 0.
//
//   auto r = run_on_ranks(3, body, options_with_expect_success_false);
//   if (!hybridmoe::testing::is_worker()) EXPECT_NE(r.rank_codes[1], 0);
//
// Set HMOE_MULTIRANK_VERBOSE=1 to see the ranks' output even when they pass.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "hybridmoe/dist.h"

namespace hybridmoe::testing {

inline constexpr const char* kWorkerTestVar = "HMOE_MULTIRANK_TEST";
inline constexpr const char* kWorkerCallVar = "HMOE_MULTIRANK_CALL";

/// True in a worker process started by run_on_ranks (false in the test process that started it).
inline bool is_worker() {
  const char* v = std::getenv(kWorkerTestVar);
  return v != nullptr && *v != '\0';
}

/// Options of run_on_ranks.
struct MultiRankOptions {
  double timeout_s = 30.0;    ///< collective timeout of the ranks (HMOE_TIMEOUT_S)
  double max_time_s = 120.0;  ///< wall-clock limit of the whole run
  /// End the other ranks when one fails (turn off when a test makes a rank fail on purpose and
  /// checks how the others react).
  bool kill_on_failure = true;
  /// Add a gtest failure unless every rank exits 0 (turn off to check rank_codes yourself).
  bool expect_success = true;
  dist::EnvMap extra_env;
};

/// What the body of a rank sees.
struct RankContext {
  dist::World& world;
  int64_t rank() const { return world.rank(); }
  int64_t size() const { return world.size(); }
  const dist::Group& group() const { return world.group(); }
  /// Set to false when a peer is expected to die: the final store sync would wait for it.
  bool finalize = true;
};

namespace detail {

inline std::string current_test_name() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  if (info == nullptr) return "";
  return std::string(info->test_suite_name()) + "." + info->name();
}

/// How many run_on_ranks calls the current test has made so far (per test name).
inline int64_t next_call_index(const std::string& test) {
  static std::map<std::string, int64_t> calls;
  return calls[test]++;
}

inline std::string self_executable() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "/proc/self/exe";
  return std::string(buf, static_cast<size_t>(n));
}

inline std::string env_or_empty(const char* key) {
  const char* v = std::getenv(key);
  return v ? std::string(v) : std::string();
}

/// The worker side: runs the body on this rank.
inline void run_worker(const std::function<void(RankContext&)>& body) {
  std::shared_ptr<dist::World> world;
  try {
    world = dist::init();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "dist::init failed: " << e.what();
    return;
  }
  RankContext ctx{*world};
  try {
    body(ctx);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "rank " << world->rank() << " threw: " << e.what();
    std::fflush(stdout);
    std::fflush(stderr);
    std::_Exit(1);  // do not wait in the final sync or in destructors for peers in a collective
  }
  if (ctx.finalize) {
    try {
      world->finalize();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "rank " << world->rank() << ": finalize failed: " << e.what();
    }
  }
}

}  // namespace detail

/// Runs `body` on nproc ranks (see the top of this file). In the parent it returns how the ranks
/// ended; in a worker it returns a result with every code 0.
inline dist::LaunchResult run_on_ranks(int64_t nproc, const std::function<void(RankContext&)>& body,
                                       const MultiRankOptions& options = MultiRankOptions()) {
  const std::string test = detail::current_test_name();
  const int64_t call = detail::next_call_index(test);
  dist::LaunchResult ok;
  ok.rank_codes.assign(static_cast<size_t>(nproc), 0);

  // 1. In a worker: run the body if this is the call being run, else skip.
  const std::string worker_test = detail::env_or_empty(kWorkerTestVar);
  if (!worker_test.empty()) {
    if (worker_test == test && detail::env_or_empty(kWorkerCallVar) == std::to_string(call)) {
      detail::run_worker(body);
    }
    return ok;
  }

  // 2. In the parent: start the workers, keep their output, report a failure with it.
  dist::LaunchOptions launch;
  launch.nproc = nproc;
  launch.command = {detail::self_executable(), "--gtest_filter=" + test, "--gtest_brief=1"};
  launch.timeout_s = options.timeout_s;
  launch.max_time_s = options.max_time_s;
  launch.kill_on_failure = options.kill_on_failure;
  launch.extra_env = options.extra_env;
  launch.extra_env[kWorkerTestVar] = test;
  launch.extra_env[kWorkerCallVar] = std::to_string(call);
  const bool verbose = !detail::env_or_empty("HMOE_MULTIRANK_VERBOSE").empty();
  std::ostringstream log;
  launch.on_line = [&](int64_t rank, bool /*is_stderr*/, const std::string& line) {
    std::ostringstream one;
    one << (rank < 0 ? std::string("[launch] ") : "[rank " + std::to_string(rank) + "] ") << line
        << "\n";
    log << one.str();
    if (verbose) std::cout << one.str() << std::flush;
  };
  dist::LaunchResult result = dist::launch_local(launch);
  if (options.expect_success && result.exit_code != 0) {
    std::ostringstream codes;
    for (size_t r = 0; r < result.rank_codes.size(); ++r) {
      codes << (r ? ", " : "") << "rank " << r << ": " << result.rank_codes[r];
    }
    ADD_FAILURE() << "multi-rank run of " << test << " on " << nproc << " ranks failed (exit "
                  << result.exit_code << ", first failing rank " << result.failed_rank
                  << (result.timed_out ? ", wall-clock limit reached" : "") << "; " << codes.str()
                  << "). Output of the ranks:\n"
                  << log.str();
  }
  return result;
}

}  // namespace hybridmoe::testing
