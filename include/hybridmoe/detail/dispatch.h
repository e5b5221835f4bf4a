// dispatch.h — the local phases of token dispatch and combine:
//   plan    (per-expert counts and a stable expert-contiguous order of assignments),
//   permute (gather token rows into that order),
//   unpermute/combine (weighted scatter-add back to token order).
// Both row movements are autograd functions, each the other's conjugate. Communication (the
// all-to-all of expert parallelism) happens between permute and unpermute, never inside them.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/gate.h"

namespace hybridmoe {

/// Where every assignment goes in the expert-contiguous layout.
/// Rows of expert e occupy [offsets[e], offsets[e] + counts[e]); inside an expert, rows keep the
/// order of the router's assignment list (token order for top-k gates): a stable sort.
struct DispatchPlan {
  torch::Tensor order;                // [A] int64: assignment index of each row
  torch::Tensor sorted_token;         // [A] int64: token index of each row
  torch::Tensor sorted_weight;        // [A] router weight of each row (differentiable)
  torch::Tensor counts;               // [E] int64
  std::vector<int64_t> counts_host;   ///< counts, on the host
  std::vector<int64_t> offsets_host;  ///< exclusive prefix sum of counts, E + 1 entries
  int64_t num_tokens = 0;
  int64_t num_rows() const { return offsets_host.empty() ? 0 : offsets_host.back(); }
};

/// Builds the plan of a routing result over `num_experts` experts for `num_tokens` tokens.
DispatchPlan make_plan(const RouterOutput& routing, int64_t num_tokens, int64_t num_experts);

/// rows = x[index]; backward scatter-adds into x's rows. x: [N, d]; index: [A] → [A, d].
torch::Tensor gather_rows(const torch::Tensor& x, const torch::Tensor& index);

/// out[index[i]] += y[i] over num_rows output rows; backward gathers. y: [A, d] → [num_rows, d].
torch::Tensor scatter_add_rows(const torch::Tensor& y, const torch::Tensor& index,
                               int64_t num_rows);

/// Permute: token rows into expert-contiguous order. x: [T, d] → [A, d].
torch::Tensor permute(const torch::Tensor& x, const DispatchPlan& plan);

/// Unpermute/combine: out[t] = sum over t's rows of weight * y. y: [A, d] → [T, d].
/// With weighted = false the weights are not applied (the exact inverse of permute when every
/// token has one assignment).
torch::Tensor unpermute(const torch::Tensor& y, const DispatchPlan& plan, bool weighted = true);

}  // namespace hybridmoe
