// overlap.h — overlap of the expert-parallel token exchange with expert compute (Tutel's adaptive
// pipelining, FasterMoE's smart scheduling): the dispatched rows are cut into D chunks; while the
// experts run on chunk i, the all-to-all of chunk i + 1 and the return of chunk i − 1 are in
// flight as asynchronous c10d work, waited on in order. The backward runs the mirrored pipeline
// (gradients of chunk i + 1 arrive while chunk i's input gradients are computed). Results equal
// the unchunked exchange_tokens → experts → exchange_back to rounding: every row meets the same
// expert weights and the weight gradients are formed once, over all rows in the unchunked order,
// but each chunk's GEMMs have fewer rows, and a BLAS may round a block's edge rows differently
// (OpenBLAS's AVX2 kernels do), so elements can differ in their last bits (tests: within 1e-14
// relative in float64). Routing, counts and the rows each rank receives are exact.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/comm_tape.h"
#include "hybridmoe/dist.h"
#include "hybridmoe/exchange.h"
#include "hybridmoe/experts.h"

namespace hybridmoe {

/// One all-to-all in flight (no autograd): the constructor starts it, wait() returns the received
/// rows. wait() is bounded by the group's timeout and raises an error naming the operation and
/// the group; the time blocked in wait() is recorded in comm_stats() under `op`. Under an active
/// CommTape the result is recorded at wait(), or replayed without communicating.
/// x: [sum(input_splits), ...] → wait(): [sum(output_splits), ...].
///
/// Example:
///   PendingAllToAll next("overlap_all_to_all", rows, out_splits, in_splits, groups.ep);
///   ... compute ...
///   auto received = next.wait();
class PendingAllToAll {
 public:
  PendingAllToAll(const char* op, const torch::Tensor& x, std::vector<int64_t> output_splits,
                  std::vector<int64_t> input_splits, const dist::Group& group);
  torch::Tensor wait();
  bool done() const { return done_; }

 private:
  const char* op_;
  dist::Group group_;
  torch::Tensor in_, out_;
  c10::intrusive_ptr<c10d::Work> work_;
  dist::CommTape* tape_ = nullptr;  ///< records (or replays) the result at wait()
  bool replaying_ = false;
  std::vector<int64_t> out_sizes_;
  int64_t bytes_sent_ = 0;
  std::chrono::steady_clock::time_point start_;
  bool done_ = false;
};

/// exchange_back(experts.run(exchange_tokens(rows, xp, ep), xp.local_counts), xp, ep), computed
/// in `degree` chunks with the exchanges overlapped (forward and backward). Chunk c takes, of each
/// expert's rows from each source, the c-th part of an even split. With etp > 1 (the experts'
/// hidden dimension split over `etp`), each chunk's received rows are all-gathered over etp,
/// every etp rank runs its slice on them, and the partial outputs are reduce-scattered back (in
/// backward the mirror), as the unchunked layer does with all rows. rows: [A, d] sorted by global
/// expert; counts: [E] rows per global expert (the plan's counts_host). Returns [A, d].
torch::Tensor overlapped_expert_exchange(const torch::Tensor& rows,
                                         const std::vector<int64_t>& counts, const ExchangePlan& xp,
                                         const dist::Group& ep, const dist::Group& etp,
                                         GroupedExpertsImpl& experts, int64_t degree);

/// Expert weights in GroupedExperts' layout (w1 [L, d, h], b1 [L, h], w2 [L, h, d], b2 [L, d],
/// w3 / b3 as w1 / b1 for SwiGLU; undefined where absent). They may be computed tensors (the
/// adaptive layout's gathered slices): their gradients flow back through autograd.
struct ExpertWeights {
  torch::Tensor w1, b1, w2, b2, w3, b3;
};

/// The same with given weights (L = weights.w1.size(0) local experts): the adaptive layout's
/// exchange over the stage. `etp` may be a default (empty) group for "not split". rows: [A, d]
/// sorted by destination slot (rank j's local expert e at j * L + e); counts: [P * L] rows per
/// slot; recv_counts: [P * L] rows this rank receives from rank j for its expert e at j * L + e
/// (exchange_counts of counts). Returns [A, d].
torch::Tensor overlapped_expert_exchange(const torch::Tensor& rows,
                                         const std::vector<int64_t>& counts,
                                         const std::vector<int64_t>& recv_counts,
                                         const dist::Group& ep, const dist::Group& etp,
                                         const ExpertWeights& weights, Activation activation,
                                         int64_t degree);

}  // namespace hybridmoe
