// launch_order.h — internal: which of the ranks that the local launcher reaped in one pass ended
// first, so that its failure report names the right root cause.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace hybridmoe::dist::detail {

/// A rank the launcher found ended in one reaping pass.
struct ReapedRank {
  int64_t rank = 0;
  /// Ended by a signal the launcher did not send (a crash, a kill from outside).
  bool killed = false;
  /// When its last non-empty stderr line arrived (seconds since the launch); none without one.
  std::optional<double> last_stderr_s;
};

/// Ranks reaped in the same pass ended within one poll interval; this is the order the launcher
/// takes them in (the first failed one is the root cause): those killed first (a crash or a kill
/// is the cause, peers failing on its closed sockets the consequence), then by when their last
/// stderr line came (the rank that reported its error first failed first: a peer that failed on
/// its closed socket reports later), ranks without stderr lines after, ties by rank.
/// Example: reaped_order({{0, false, 0.036}, {1, false, 0.001}}) == {1, 0}.
std::vector<int64_t> reaped_order(std::vector<ReapedRank> reaped);

}  // namespace hybridmoe::dist::detail
