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
// Every operation waits for completion within the group's timeout and turns a timeout or a peer's
// failure into a c10::Error naming the operation and the group. (CUDA tensors wait on the stream;
// NCCL's own watchdog enforces the timeout there.) A group of one communicates nothing.
// Tensors are made contiguous; row tensors are [rows, ...] with any trailing shape.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/dist.h"

namespace hybridmoe::dist {

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
/// sends to this rank's entry e. Runs on the CPU (Gloo). send_counts: P * k values.
///
/// Example:
///   auto recv = exchange_counts(plan.counts_host, groups.ep);  // E = P * local experts
std::vector<int64_t> exchange_counts(const std::vector<int64_t>& send_counts, const Group& group);

/// Tensor form of exchange_counts on the tensor's device. counts: [P * k] int64 → [P * k] int64.
torch::Tensor exchange_counts(const torch::Tensor& counts, const Group& group);

/// Every rank's value of n, in group-rank order (CPU).
std::vector<int64_t> all_gather_counts(int64_t n, const Group& group);

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

/// Returns when every member has called it (an all-reduce of one CPU value).
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
