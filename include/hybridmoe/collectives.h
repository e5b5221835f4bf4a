// collectives.h — the collectives of the distributed MoE layer, over a dist::Group.
//
// Autograd functions, each paired with its conjugate as backward:
//   all_to_all          (uneven row splits)       ↔ the reverse all_to_all
//   all_gather_rows     (uneven rows per rank)    ↔ reduce_scatter_rows
//   reduce_scatter_rows (uneven rows per rank)    ↔ all_gather_rows
//   all_reduce_sum      (Megatron's g)            ↔ identity
//   copy_to_group       (Megatron's f: identity)  ↔ all_reduce_sum
// Plain helpers (no autograd): per-expert count exchange, row-count gathering, coalesced in-place
// all-reduce and broadcast of tensor lists, barrier.
//
// Inside a recomputed region (recompute.h) the autograd collectives, the count exchange and the
// count gather take their forward results from the active CommTape (comm_tape.h) instead of
// communicating; their backward always communicates.
//
// Every operation — autograd, flat, chunked and point-to-point — is started and waited for by one
// PendingWork (src/parallel/comm/work.cpp): it waits within the group's timeout and turns a
// timeout or a peer's failure into a c10::Error naming the operation and the group (CUDA tensors
// wait on the stream; NCCL's own watchdog enforces the timeout there), records comm_stats(), and
// consults the recompute tape. Control messages (counts, barrier) travel on the group's control
// device: the CPU with Gloo, CUDA in an NCCL-only build. CPU bfloat16 crosses Gloo as float16
// bits, and is summed in float32. A group of one communicates nothing.
// Tensors are made contiguous; row tensors are [rows, ...] with any trailing shape.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/dist.h"

namespace hybridmoe::dist {

// ---- operations in flight ---------------------------------------------------------------------

/// Whether a collective's forward result goes on the active CommTape (comm_tape.h).
enum class Taping {
  kForward,  ///< a forward result: recorded, or replayed without communicating in a recomputed
             ///< region
  kNever,    ///< always communicates (backward passes, parameter and gradient synchronization)
};

/// One operation in flight (no autograd). wait() blocks until it completes, bounded by the
/// group's timeout counted from its start, and returns its result (the received rows; an
/// undefined tensor for a send); a timeout or a peer's failure raises a c10::Error naming the
/// operation, the group's ranks and the elapsed time. The time blocked in wait() and the bytes
/// sent are recorded in comm_stats(). Move-only; wait() may be called again (same result).
/// Under an active CommTape (Taping::kForward) the result is recorded at wait(), or replayed
/// without communicating.
///
/// Example:
///   PendingWork next = all_to_all_async("overlap_all_to_all", rows, out_splits, in_splits, ep);
///   ... compute ...
///   torch::Tensor received = next.wait();
class PendingWork {
 public:
  struct State;  ///< defined by the comm core (src/parallel/comm/work.cpp)
  PendingWork();
  explicit PendingWork(std::unique_ptr<State> state);
  ~PendingWork();
  PendingWork(PendingWork&&) noexcept;
  PendingWork& operator=(PendingWork&&) noexcept;
  /// An operation that needs no communication (a group of one): wait() returns `result`.
  static PendingWork ready(torch::Tensor result);

  torch::Tensor wait();
  /// True once wait() returned, for ready() work, and for a default-constructed PendingWork.
  bool done() const;

 private:
  std::unique_ptr<State> s_;
};

/// Starts an all-to-all (no autograd): sends input_splits[j] rows of x to group rank j and
/// receives output_splits[j] rows from each. `op` names it in errors, statistics and the tape.
/// x: [sum(input_splits), ...] → wait(): [sum(output_splits), ...].
///
/// Example:
///   auto work = all_to_all_async("probe_overlap", x, even, even, groups.ep);
///   auto y = work.wait();
PendingWork all_to_all_async(const char* op, const torch::Tensor& x,
                             const std::vector<int64_t>& output_splits,
                             const std::vector<int64_t>& input_splits, const Group& group,
                             Taping taping = Taping::kForward);

/// Starts sending x to group rank `peer`; `tag` must match the receiver's. wait() returns the
/// sent (contiguous) tensor, kept alive until then. x: any shape.
///
/// Example:
///   send_async(activation, stage + 1, /*tag=*/2 * m, groups.pp).wait();
PendingWork send_async(const torch::Tensor& x, int64_t peer, int64_t tag, const Group& group);

/// Receives a tensor of `sizes` and `options` from group rank `peer` with `tag`, waiting within
/// the group's timeout (an error names the group, the peer and the tag).
torch::Tensor recv(c10::IntArrayRef sizes, const torch::TensorOptions& options, int64_t peer,
                   int64_t tag, const Group& group);

// ---- autograd collectives ---------------------------------------------------------------------

/// Sends rows input_splits[j] rows to group rank j (in order) and receives output_splits[j] rows
/// from each; splits may be uneven and zero. Backward: the reverse all-to-all of the gradient.
/// x: [sum(input_splits), ...] → [sum(output_splits), ...].
///
/// Example (2 ranks; rank 0 sends 1 row to itself and 2 to rank 1):
///   auto y = all_to_all(x, /*output_splits=*/{1, r1_to_0}, /*input_splits=*/{1, 2}, group);
torch::Tensor all_to_all(const torch::Tensor& x, const std::vector<int64_t>& output_splits,
                         const std::vector<int64_t>& input_splits, const Group& group);

/// Concatenates every rank's rows in group-rank order. Row counts may differ per rank: pass them
/// as rows_per_rank (one per group rank) or leave it empty to exchange them. Backward: this rank's
/// rows of the gradient summed over the group (a reduce-scatter).
/// x: [n_me, ...] → [sum(n), ...].
///
/// Example:
///   auto all = all_gather_rows(x, groups.slice);   // x: [3, d] on rank 0, [2, d] on rank 1
torch::Tensor all_gather_rows(const torch::Tensor& x, const Group& group,
                              const std::vector<int64_t>& rows_per_rank = {});

/// Sums x over the group and keeps this rank's block of rows: rank j owns rows_per_rank[j] rows,
/// blocks in group-rank order. Empty rows_per_rank splits evenly (the first N % P ranks get one
/// more row). Backward: all_gather_rows of the gradient.
/// x: [sum(rows_per_rank), ...] (same shape on every rank) → [rows_per_rank[me], ...].
///
/// Example:
///   auto mine = reduce_scatter_rows(partial, groups.etp, {3, 2});
torch::Tensor reduce_scatter_rows(const torch::Tensor& x, const Group& group,
                                  const std::vector<int64_t>& rows_per_rank = {});

/// Sum over the group (Megatron's g / reduce_from_tensor_parallel); backward is the identity.
/// x: any shape → same shape.
///
/// Example:
///   auto out = all_reduce_sum(partial_expert_output, groups.etp);
torch::Tensor all_reduce_sum(const torch::Tensor& x, const Group& group);

/// Identity (Megatron's f / copy_to_tensor_parallel); backward sums the gradient over the group.
/// x: any shape → same shape.
///
/// Example:
///   auto h = column_parallel_matmul(copy_to_group(x, groups.tp), w_shard);
torch::Tensor copy_to_group(const torch::Tensor& x, const Group& group);

// ---- plain helpers ----------------------------------------------------------------------------

/// Splits n rows over p ranks as evenly as possible (the first n % p ranks get one more).
std::vector<int64_t> even_split(int64_t n, int64_t p);

/// All-to-all of counts, k per peer: send_counts[j * k + e] is what this rank sends to entry e of
/// rank j (e.g. its tokens for rank j's local expert e); the result's [j * k + e] is what rank j
/// sends to this rank's entry e. Runs on the group's control device (the CPU with Gloo, else
/// CUDA) and reads the result to the host. send_counts: P * k values.
///
/// Example:
///   auto recv = exchange_counts(plan.counts_host, groups.ep);  // E = P * local experts
std::vector<int64_t> exchange_counts(const std::vector<int64_t>& send_counts, const Group& group);

/// Tensor form of exchange_counts on the tensor's device. counts: [P * k] int64 → [P * k] int64.
torch::Tensor exchange_counts(const torch::Tensor& counts, const Group& group);

/// Every rank's value of n, in group-rank order.
std::vector<int64_t> all_gather_counts(int64_t n, const Group& group);

/// Every rank's list of counts (the same length k on every rank), in group-rank order: one
/// all-gather on the group's control device and one read to the host.
///
/// Example:
///   auto per_rank = all_gather_counts(local_expert_rows, groups.etp);  // [etp][L]
std::vector<std::vector<int64_t>> all_gather_counts(const std::vector<int64_t>& values,
                                                    const Group& group);

/// The element-wise sum over the group of host values (losses, norms, metrics, timings): one
/// all-gather on the group's control device, summed on the host in group-rank order, so every
/// rank gets the same, deterministic result. values: the same length on every rank.
///
/// Example:
///   const double loss = sum_over_ranks(local_loss_share, groups.world);
std::vector<double> sum_over_ranks(const std::vector<double>& values, const Group& group);
double sum_over_ranks(double value, const Group& group);
/// The largest value over the group's ranks (same on every rank).
double max_over_ranks(double value, const Group& group);

/// Options of the coalesced helpers.
struct CoalesceOptions {
  /// Upper bound of one flat bucket in bytes (a tensor larger than it gets a bucket of its own).
  int64_t bucket_bytes = int64_t{25} << 20;
  /// Divide the all-reduced sums by the group size.
  bool average = false;
};

/// In-place sum (or mean) of every tensor over the group, packed into flat buckets per dtype and
/// device. Undefined tensors are skipped. tensors: any shapes (same list on every rank).
///
/// Example:
///   std::vector<torch::Tensor> grads = {w.grad(), b.grad()};
///   all_reduce_coalesced_(grads, groups.dp, {/*bucket_bytes=*/1 << 20, /*average=*/true});
void all_reduce_coalesced_(std::vector<torch::Tensor>& tensors, const Group& group,
                           const CoalesceOptions& options = CoalesceOptions());

/// In place: every rank's tensors become those of group rank `root`, packed into flat buckets.
/// tensors: any shapes (same list on every rank).
///
/// Example:
///   auto params = model->parameters();
///   broadcast_(params, /*root=*/0, groups.world);
void broadcast_(std::vector<torch::Tensor>& tensors, int64_t root, const Group& group,
                const CoalesceOptions& options = CoalesceOptions());

/// Returns when every member has called it (an all-reduce of one value on the control device).
void barrier(const Group& group);

// ---- flat in-place helpers (ZeRO; src/parallel/collectives_flat.cpp) ---------------------------
// Plain (no autograd) collectives over 1-D tensors split into per-rank blocks: rank j's block has
// counts[j] elements and starts at sum(counts[:j]). Counts may be uneven and zero.

/// Sums `flat` over the group and writes this rank's block of the sum into `out`.
/// flat: [sum(counts)] (same size on every rank); out: [counts[rank]], same dtype and device.
///
/// Example:
///   auto counts = even_split(bucket.numel(), groups.dp.size());
///   reduce_scatter_flat_(bucket, my_grad_shard, counts, groups.dp);
void reduce_scatter_flat_(const torch::Tensor& flat, torch::Tensor& out,
                          const std::vector<int64_t>& counts, const Group& group);

/// Every rank's block `mine` lands at its offset in `flat` on every rank (`mine` may be a view
/// of this rank's block of `flat`). flat: [sum(counts)]; mine: [counts[rank]], same dtype.
///
/// Example:
///   all_gather_flat_(bucket, bucket.narrow(0, my_offset, counts[me]), counts, groups.dp);
void all_gather_flat_(torch::Tensor& flat, const torch::Tensor& mine,
                      const std::vector<int64_t>& counts, const Group& group);

// ---- end of the flat in-place helpers -------------------------------------------------------

}  // namespace hybridmoe::dist
