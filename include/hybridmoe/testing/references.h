// references.h — the plain reference twins of the fast paths, kept as test oracles: the grouped
// MLP one expert at a time, and the whole dispatch + experts + combine with standard autograd
// ops only. Tests (and MoEImpl::forward_reference) compare the fused paths against them.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/experts.h"
#include "hybridmoe/gate.h"

namespace hybridmoe {

/// Grouped MLP with plain autograd ops, one expert at a time over the sorted segments.
/// The oracle of the fused grouped kernel. x: [A, d_model] → [A, d_model].
torch::Tensor grouped_mlp_reference(const GroupedExpertsImpl& experts, const torch::Tensor& x,
                                    const std::vector<int64_t>& counts);

/// The whole dispatch + experts + combine with nothing but standard autograd ops: for each
/// expert, select its assignments with a mask, index their tokens, run the expert, and
/// index_add the weighted output. Independent of make_plan/permute/unpermute.
/// x: [T, d_model] → [T, d_model].
torch::Tensor sequential_moe_reference(ExpertsBase& experts, const torch::Tensor& x,
                                       const RouterOutput& routing);

}  // namespace hybridmoe
