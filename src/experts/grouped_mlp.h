// grouped_mlp.h — the fused grouped expert MLP as one autograd function (forward and a
// hand-written backward over grouped GEMMs). Internal to the library.
#pragma once

#include <vector>

#include <torch/torch.h>

#include "hybridmoe/experts.h"

namespace hybridmoe::detail {

/// y = act(x w1 + b1) w2 + b2 per expert segment; SwiGLU: (silu(x w1 + b1) * (x w3 + b3)) w2 + b2.
/// x: [A, d]; w1, w3: [E, d, h]; b1, b3: [E, h] or undefined; w2: [E, h, d]; b2: [E, d] or
/// undefined (then not added). Returns [A, d]. Differentiable once (no double backward).
torch::Tensor grouped_mlp(const torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& b1,
                          const torch::Tensor& w2, const torch::Tensor& b2, const torch::Tensor& w3,
                          const torch::Tensor& b3, const std::vector<int64_t>& counts,
                          Activation activation);

/// Plain-op MLP of one expert. x: [n, d] → [n, d]. w*/b* are that expert's slices.
torch::Tensor expert_mlp_plain(const torch::Tensor& x, const torch::Tensor& w1,
                               const torch::Tensor& b1, const torch::Tensor& w2,
                               const torch::Tensor& b2, const torch::Tensor& w3,
                               const torch::Tensor& b3, Activation activation);

/// The expert activation of the grouped MLP. a: [rows, h]; g: [rows, h] (SwiGLU's gate, else
/// undefined) → [rows, h].
torch::Tensor activate(const torch::Tensor& a, const torch::Tensor& g, Activation act);

}  // namespace hybridmoe::detail
