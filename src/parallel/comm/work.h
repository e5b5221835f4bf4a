// work.h — the one place where hybridmoe starts and waits for c10d operations (internal to the
// comm core). Every collective of collectives.h — autograd, flat, chunked, point-to-point —
// starts its c10d call through start_work() and waits through PendingWork::wait(), which owns:
//   * the timeout (the group's, counted from the start of the operation),
//   * the error text (operation, group ranks, peer if any, elapsed time),
//   * the comm statistics (bytes sent, time blocked in wait()),
//   * the recompute tape (a forward result is recorded, or replayed without communicating).
// It also holds the wire forms of 16-bit floats over Gloo and the control device of a group.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "hybridmoe/collectives.h"

namespace hybridmoe::dist::detail {

/// "group 'dp' (world ranks [0,2], this process is group rank 1 of 2)".
std::string describe(const Group& g);

/// A group as an IValue, so that it rides through autograd's saved_data (a capsule), and back.
c10::IValue pack(const Group& g);
const Group& unpack(const c10::IValue& v);

/// The message of an exception, without a c10 backtrace.
std::string error_text(const std::exception& e);

/// What one operation is, for start_work().
struct WorkSpec {
  const char* op = "";     ///< name in errors, comm_stats() and the tape
  std::string peer;        ///< point-to-point: "peer 1, tag 2" (in errors); empty otherwise
  int64_t bytes_sent = 0;  ///< what leaves this rank, for comm_stats()
  Taping taping = Taping::kNever;
};

/// Starts one c10d operation on `group`'s process group for `result`'s device: `launch(pg)`
/// returns its c10d::Work. `result` is the tensor wait() returns (the operation writes it);
/// `keep` are tensors the operation reads, kept alive until it completes. With
/// spec.taping == kForward and an active CommTape (comm_tape.h) in replay mode, nothing is
/// launched and wait() returns the recorded result (which must have result's shape); in record
/// mode wait() records the result. A failure to start raises an error naming op and group.
/// `finish` (optional) turns the operation's output into what wait() returns (e.g. drops the
/// padding of an all-gather); the tape then holds the finished result, and a replay returns it
/// without calling finish.
using Launch = std::function<c10::intrusive_ptr<c10d::Work>(c10d::ProcessGroup&)>;
using Finish = std::function<torch::Tensor(const torch::Tensor&)>;
PendingWork start_work(const WorkSpec& spec, const Group& group, torch::Tensor result,
                       std::vector<torch::Tensor> keep, const Launch& launch,
                       Finish finish = nullptr);

/// start_work(...).wait(): one blocking operation.
inline torch::Tensor run_work(const WorkSpec& spec, const Group& group, torch::Tensor result,
                              std::vector<torch::Tensor> keep, const Launch& launch,
                              Finish finish = nullptr) {
  return start_work(spec, group, std::move(result), std::move(keep), launch, std::move(finish))
      .wait();
}

/// The form in which Gloo moves `t` (pure data movement): CPU bfloat16 travels as float16 bits
/// (Gloo has no bfloat16); every other tensor as it is. The result shares t's storage.
torch::Tensor movable(const torch::Tensor& t);

/// Whether a sum of `t` over Gloo must be carried in float32 (CPU bfloat16, which Gloo cannot
/// add); the caller reduces t.to(kFloat32) and copies the sum back, rounding once.
bool reduces_in_float32(const torch::Tensor& t);

/// The device of a group's control messages (counts, barrier): the CPU when the group has a CPU
/// (Gloo) process group, else CUDA (an NCCL-only build).
torch::Device control_device(const Group& g);

/// The rows of every rank in group-rank order (rank j has counts[j] rows): each rank's rows padded
/// to the largest count, one all-gather, the padding dropped. x: [counts[rank], ...] →
/// [sum(counts), ...]. No autograd (all_gather_rows is its autograd form).
torch::Tensor all_gather_rows_raw(const char* op, const torch::Tensor& x,
                                  const std::vector<int64_t>& counts, const Group& g,
                                  Taping taping);

/// Refuses per-rank counts that are not one entry >= 0 per member of g, naming the operation, the
/// argument `what` and the group.
void check_splits(const char* op, const char* what, const std::vector<int64_t>& splits,
                  const Group& g);

}  // namespace hybridmoe::dist::detail
