// overlap.h — overlap of the expert-parallel token exchange with expert compute (Tutel's adaptive
// pipelining, FasterMoE's smart scheduling): the dispatched rows are cut into D chunks; while the
// experts run on chunk i, the all-to-all of chunk i + 1 and the return of chunk i − 1 are in
// flight (dist::all_to_all_async, collectives.h), waited on in order. The backward runs the
// mirrored pipeline (gradients of chunk i + 1 arrive while chunk i's input gradients are computed).
// Results equal the unchunked exchange_tokens → experts → exchange_back to rounding: every row
// meets the same expert weights and the weight gradients are formed once, over all rows in the
// unchunked order, but each chunk's GEMMs have fewer rows, and a BLAS may round a block's edge rows
// differently (OpenBLAS's AVX2 kernels do), so elements can differ in their last bits (tests:
// within 1e-14 relative in float64). Routing, counts and the rows each rank receives are exact.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/detail/exchange.h"
#include "hybridmoe/dist.h"
#include "hybridmoe/experts.h"

namespace hybridmoe {

/// The token exchange, the grouped MLP with `weights` (L = weights.w1.size(0) local experts) and
/// the return, computed in `degree` chunks with the exchanges overlapped (forward and backward):
/// the result of all-to-all → expert-major rows → grouped_mlp → the mirror all-to-all. Chunk c
/// takes, of each (source, expert) run of rows, the c-th part of an even split. With etp > 1 (the
/// experts' hidden width split over `etp`; a default, empty group: not split), each chunk's
/// received rows are all-gathered over etp, every etp rank runs its slice on them, and the
/// partial outputs are reduce-scattered back (in backward the mirror). rows: [A, d] sorted by
/// destination slot (rank j's local expert e at j * L + e); counts: [P * L] rows per slot;
/// recv_counts: [P * L] rows this rank receives from rank j for its expert e at j * L + e
/// (exchange_counts of counts). Returns [A, d]. The chunked overlap dispatcher's experts step
/// (dispatcher.h).
torch::Tensor overlapped_expert_exchange(const torch::Tensor& rows,
                                         const std::vector<int64_t>& counts,
                                         const std::vector<int64_t>& recv_counts,
                                         const dist::Group& ep, const dist::Group& etp,
                                         const ExpertWeights& weights, Activation activation,
                                         int64_t degree);

}  // namespace hybridmoe
