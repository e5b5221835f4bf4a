// exchange.h — the communication phases of the distributed MoE layer, kept out of the local
// pre/post steps (plan, permute, unpermute) so that overlap stays possible:
//   slices:   scatter_to_slices (replicated tokens → this rank's block; backward all-gathers)
//             ↔ gather_from_slices (blocks → replicated tokens; backward keeps this rank's block)
//             — FastMoE's slice group, TED's duplicate token dropping;
//   experts:  exchange_tokens (expert-parallel all-to-all, then rows reordered expert-major)
//             ↔ exchange_back (the inverse reorder, then the reverse all-to-all); the all-to-all
//             flat or two-level (Tutel's 2DH, hierarchical_all_to_all.h) by the plan's algorithm.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/detail/dispatch.h"
#include "hybridmoe/dispatcher.h"
#include "hybridmoe/dist.h"

namespace hybridmoe {

/// Keeps this rank's block of rows of a tensor replicated over `group`; blocks follow group-rank
/// order with rows_per_rank[j] rows for rank j. Backward: the gradients of every block are
/// all-gathered (each rank's input gradient is the full, replicated one).
/// x: [sum(rows_per_rank), ...] → [rows_per_rank[me], ...].
torch::Tensor scatter_to_slices(const torch::Tensor& x, const dist::Group& group,
                                const std::vector<int64_t>& rows_per_rank);

/// The inverse: all-gathers each rank's block into the replicated tensor. Backward keeps this
/// rank's block of the (replicated) gradient. y: [rows_per_rank[me], ...] → [sum, ...].
torch::Tensor gather_from_slices(const torch::Tensor& y, const dist::Group& group,
                                 const std::vector<int64_t>& rows_per_rank);

/// Row order that makes blocks of expert-sorted rows expert-major, and its inverse.
struct ExpertMajorOrder {
  torch::Tensor index;              // [R] int64: block-layout row of each expert-major row
  torch::Tensor inverse;            // [R] int64: expert-major row of each block-layout row
  std::vector<int64_t> per_expert;  ///< rows of each expert
};

/// block_counts[b][e]: rows of local expert e in block b (blocks laid out one after another, each
/// sorted by expert). Expert-major means expert e first, inside it block 0's rows, then block
/// 1's, and so on.
ExpertMajorOrder expert_major_index(const std::vector<std::vector<int64_t>>& block_counts);

/// How the rows of one rank move in the expert-parallel all-to-all.
struct ExchangePlan {
  int64_t num_local_experts = 0;
  std::vector<int64_t> send_splits;   ///< [P] rows sent to each ep rank
  std::vector<int64_t> recv_splits;   ///< [P] rows received from each ep rank
  std::vector<int64_t> recv_counts;   ///< [P * L]: rows from rank j for local expert e at j*L + e
  std::vector<int64_t> local_counts;  ///< [L] rows per local expert after the exchange
  torch::Tensor to_expert_major;      ///< [R] int64: received row of each expert-major row
  torch::Tensor from_expert_major;    ///< [R] int64: the inverse permutation
  /// How exchange_tokens / exchange_back move the rows: kHierarchical needs the group to fill
  /// its nodes evenly (hierarchical_all_to_all.h). The plan makers leave it kFlat; the
  /// dispatcher sets what MoEOptions::a2a_algorithm makes of its group.
  A2AAlgorithm algorithm = A2AAlgorithm::kFlat;
  /// Ranks per node (consecutive world ranks); > 0: each exchange adds its cross-node traffic
  /// to dist::record_cross_node_traffic (needed by kHierarchical). 0: nodes unknown, not counted.
  int64_t ranks_per_node = 0;
};

/// Builds the exchange of a plan over all E = P * L experts (rank j holds experts
/// [j*L, (j+1)*L)): exchanges the per-expert counts over `ep`.
ExchangePlan make_exchange_plan(const DispatchPlan& plan, const dist::Group& ep);

/// The same from counts already exchanged (no communication): send_counts [P * L] rows of this
/// rank per destination slot (rank j's local expert e at j * L + e), recv_counts [P * L] rows this
/// rank receives from rank j for its local expert e (exchange_counts of send_counts).
ExchangePlan make_exchange_plan(const std::vector<int64_t>& send_counts,
                                const std::vector<int64_t>& recv_counts, int64_t P);

/// All-to-all of expert-sorted rows to the experts' ranks (xp.algorithm's), then reordered
/// expert-major. rows: [A, d] → [R, d] with R = sum(local_counts).
torch::Tensor exchange_tokens(const torch::Tensor& rows, const ExchangePlan& xp,
                              const dist::Group& ep);

/// The mirror of exchange_tokens. y: [R, d] → [A, d].
torch::Tensor exchange_back(const torch::Tensor& y, const ExchangePlan& xp, const dist::Group& ep);

}  // namespace hybridmoe
