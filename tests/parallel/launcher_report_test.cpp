// launcher_report_test.cpp — the local launcher's failure report: after every rank has ended, one
// line per failed rank with its exit code or signal name and its last stderr line, the first
// failure marked as the root cause and the others as consequences.
#include <signal.h>

#include <algorithm>
#include <mutex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "hybridmoe/dist.h"
#include "parallel/runtime/launch_order.h"

namespace hybridmoe {
namespace {

/// The launcher's own lines (rank -1), captured.
struct LauncherLines {
  std::mutex mutex;
  std::vector<std::string> lines;
};

dist::LaunchOptions shell(int64_t nproc, const std::string& script, LauncherLines* cap) {
  dist::LaunchOptions o;
  o.nproc = nproc;
  o.command = {"/bin/sh", "-c", script};
  o.grace_s = 1;
  o.on_line = [cap](int64_t rank, bool is_stderr, const std::string& line) {
    if (rank >= 0) return;
    EXPECT_TRUE(is_stderr) << line;
    std::lock_guard<std::mutex> lock(cap->mutex);
    cap->lines.push_back(line);
  };
  return o;
}

TEST(LauncherReport, SignalNames) {
  EXPECT_EQ(dist::signal_name(SIGKILL), "SIGKILL");
  EXPECT_EQ(dist::signal_name(SIGSEGV), "SIGSEGV");
  EXPECT_EQ(dist::signal_name(SIGABRT), "SIGABRT");
  EXPECT_EQ(dist::signal_name(SIGTERM), "SIGTERM");
  EXPECT_EQ(dist::signal_name(0), "signal 0");
}

TEST(LauncherReport, KilledRankIsTheRootCauseAndTheEndedOnesConsequences) {
  LauncherLines cap;
  // Rank 1 kills itself once the others have printed their line; the launcher then ends them.
  auto o = shell(3,
                 "if [ \"$RANK\" = 1 ]; then echo 'rank 1 about to die' >&2; sleep 1; "
                 "kill -9 $$; fi; echo \"rank $RANK waits\" >&2; exec sleep 30",
                 &cap);
  const dist::LaunchResult r = dist::launch_local(o);
  EXPECT_EQ(r.exit_code, 128 + SIGKILL);
  EXPECT_EQ(r.failed_rank, 1);
  ASSERT_EQ(r.failures.size(), 3u);
  const dist::RankFailure& root = r.failures[0];
  EXPECT_EQ(root.rank, 1);
  EXPECT_EQ(root.signal, SIGKILL);
  EXPECT_EQ(root.code, 137);
  EXPECT_TRUE(root.root_cause);
  EXPECT_FALSE(root.ended_by_launcher);
  EXPECT_EQ(root.last_error, "rank 1 about to die");
  for (size_t i = 1; i < 3; ++i) {
    const dist::RankFailure& f = r.failures[i];
    EXPECT_TRUE(f.rank == 0 || f.rank == 2) << f.rank;
    EXPECT_EQ(f.signal, SIGTERM);
    EXPECT_FALSE(f.root_cause);
    EXPECT_TRUE(f.ended_by_launcher);
    EXPECT_EQ(f.last_error, "rank " + std::to_string(f.rank) + " waits");
  }
  ASSERT_EQ(cap.lines.size(), 3u);
  EXPECT_EQ(cap.lines[0],
            "rank 1 failed (root cause): SIGKILL (exit code 137); last error line: rank 1 about "
            "to die");
  std::vector<std::string> rest(cap.lines.begin() + 1, cap.lines.end());
  std::sort(rest.begin(), rest.end());
  for (int64_t k : {0, 2}) {
    EXPECT_EQ(rest[k / 2], "rank " + std::to_string(k) +
                               " failed (consequence: ended by the launcher after rank 1 "
                               "failed): SIGTERM (exit code 143); last error line: rank " +
                               std::to_string(k) + " waits");
  }
}

TEST(LauncherReport, LaterFailuresAreConsequences) {
  LauncherLines cap;
  auto o = shell(2,
                 "if [ \"$RANK\" = 0 ]; then echo boom >&2; echo '  ' >&2; exit 3; fi; "
                 "sleep 0.5; echo 'first line' >&2; echo 'peer gone' >&2; exit 1",
                 &cap);
  o.kill_on_failure = false;
  const dist::LaunchResult r = dist::launch_local(o);
  EXPECT_EQ(r.exit_code, 3);
  ASSERT_EQ(r.failures.size(), 2u);
  EXPECT_FALSE(r.failures[1].ended_by_launcher);
  EXPECT_EQ(cap.lines, (std::vector<std::string>{
                           "rank 0 failed (root cause): exit code 3; last error line: boom",
                           "rank 1 failed (consequence: failed after rank 0): exit code 1; last "
                           "error line: peer gone"}));
}

// Ranks reaped in one pass: a killed rank first, then the one whose error came first (the other
// failed on its closed socket), ranks without stderr after, ties by rank.
TEST(LauncherReport, RanksReapedTogetherAreOrderedByWhatTheyReported) {
  using dist::detail::reaped_order;
  EXPECT_EQ(reaped_order({{0, false, 0.036}, {1, false, 0.001}}), (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(reaped_order({{0, false, 0.001}, {1, true, std::nullopt}, {2, false, 0.0005}}),
            (std::vector<int64_t>{1, 2, 0}));
  EXPECT_EQ(reaped_order({{0, false, std::nullopt}, {1, false, 0.2}, {2, false, 0.2}}),
            (std::vector<int64_t>{1, 2, 0}));
  EXPECT_EQ(reaped_order({}), (std::vector<int64_t>{}));
}

TEST(LauncherReport, WallClockLimitEndsEveryRank) {
  LauncherLines cap;
  auto o = shell(2, "exec sleep 30", &cap);
  o.max_time_s = 0.5;
  const dist::LaunchResult r = dist::launch_local(o);
  EXPECT_EQ(r.exit_code, 124);
  ASSERT_EQ(r.failures.size(), 2u);
  ASSERT_EQ(cap.lines.size(), 3u);
  EXPECT_EQ(cap.lines[0].rfind("launch_local: wall-clock limit of", 0), 0u) << cap.lines[0];
  std::vector<std::string> ends(cap.lines.begin() + 1, cap.lines.end());
  std::sort(ends.begin(), ends.end());
  for (int64_t k : {0, 1}) {
    EXPECT_EQ(ends[k], "rank " + std::to_string(k) +
                           " failed (ended by the launcher at the wall-clock limit of 0.5 s): "
                           "SIGTERM (exit code 143); last error line: (none)");
  }
}

TEST(LauncherReport, SuccessPrintsNothing) {
  LauncherLines cap;
  const dist::LaunchResult r = dist::launch_local(shell(2, "echo fine >&2", &cap));
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(r.failures.empty());
  EXPECT_TRUE(cap.lines.empty());
}

}  // namespace
}  // namespace hybridmoe
