// comm_run.h — internal plumbing shared by the collectives' source files: describing a group in
// error messages and running one c10d operation with the group's timeout, turning any failure
// into a c10::Error that names the operation and the group, and recording it in comm_stats().
#pragma once

#include <chrono>
#include <sstream>
#include <string>

#include "hybridmoe/comm_stats.h"
#include "hybridmoe/dist.h"

namespace hybridmoe::dist::detail {

/// "group 'dp' (world ranks [0,2], this process is group rank 1 of 2)".
inline std::string describe(const Group& g) {
  std::ostringstream out;
  out << "group '" << g.name << "' (world ranks [";
  for (size_t i = 0; i < g.ranks.size(); ++i) out << (i ? "," : "") << g.ranks[i];
  out << "], this process is group rank " << g.rank << " of " << g.size() << ")";
  return out.str();
}

/// The message of an exception, without a c10 backtrace.
inline std::string error_text(const std::exception& e) {
  if (const auto* ce = dynamic_cast<const c10::Error*>(&e)) return ce->what_without_backtrace();
  return e.what();
}

/// Starts one c10d operation with `launch(process_group)` and waits for it within the group's
/// timeout; any failure becomes a c10::Error naming `op` and the group. bytes_sent: what leaves
/// this rank (-1: the payload `like`), recorded with the wait time in comm_stats().
template <typename Launch>
void run(const Group& g, const char* op, const torch::Tensor& like, Launch&& launch,
         int64_t bytes_sent = -1) {
  TORCH_CHECK(g.is_member(), op, ": this process is not a member of group '", g.name, "'");
  const auto& pg = g.pg_for(like);
  CommTimer timer(
      op, bytes_sent >= 0 ? bytes_sent : like.numel() * static_cast<int64_t>(like.element_size()));
  const auto start = std::chrono::steady_clock::now();
  try {
    c10::intrusive_ptr<c10d::Work> work = launch(*pg);
    if (like.is_cuda()) {
      work->wait();  // stream-ordered; NCCL's watchdog enforces the timeout
    } else {
      work->wait(g.timeout);
    }
  } catch (const std::exception& e) {
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const bool timed_out = elapsed * 1000.0 >= 0.99 * static_cast<double>(g.timeout.count());
    TORCH_CHECK(false, "hybridmoe::dist::", op, " on ", describe(g), " failed after ", elapsed,
                " s (timeout ", g.timeout.count() / 1000.0, " s): ", error_text(e),
                timed_out ? " -- a member did not take part in time (it hung, died, or called a "
                            "different collective; HMOE_TIMEOUT_S sets the timeout)"
                          : "");
  }
}

}  // namespace hybridmoe::dist::detail
