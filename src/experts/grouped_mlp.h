// grouped_mlp.h — the grouped expert MLP, written once: its forward (project in, activate,
// project out) and its backward (the input side per block of rows, the weight gradients over all
// rows) as pieces, and the autograd function built from them. The chunked, overlapped exchange
// (dispatch/overlap.cpp) builds its own autograd function from the same pieces. Internal.
#pragma once

#include <vector>

#include <torch/torch.h>

#include "hybridmoe/experts.h"

namespace hybridmoe::detail {

/// What the forward keeps for the backward, per row.
struct MlpActivations {
  torch::Tensor a;       // [n, h]: x w1 + b1
  torch::Tensor g;       // [n, h]: x w3 + b3 (SwiGLU), else undefined
  torch::Tensor hidden;  // [n, h]: act(a, g)
};

/// What an autograd function of the grouped MLP saves for its backward, in one order:
/// save_for_backward(saved_list(x, keep, w)) and saved_from(ctx->get_saved_variables()).
struct MlpSaved {
  torch::Tensor x;
  MlpActivations keep;
  ExpertWeights w;
};
std::vector<torch::Tensor> saved_list(const torch::Tensor& x, const MlpActivations& keep,
                                      const ExpertWeights& w);
MlpSaved saved_from(const std::vector<torch::Tensor>& saved);

/// Optional autograd inputs (absent biases are no inputs): to and from undefined tensors.
using OptTensor = c10::optional<torch::Tensor>;
inline OptTensor optional_of(const torch::Tensor& t) {
  return t.defined() ? OptTensor(t) : OptTensor();
}
inline torch::Tensor value_of(const OptTensor& t) {
  return t.has_value() ? *t : torch::Tensor();
}

/// Forward over expert segments: a = x w1 + b1 (g = x w3 + b3), hidden = act(a, g),
/// y = hidden w2 + b2 (biases where defined). x: [n, d]; counts: [L] rows per expert.
/// Returns y [n, d]; fills *keep when given.
torch::Tensor mlp_forward(const torch::Tensor& x, const ExpertWeights& w,
                          const std::vector<int64_t>& counts, Activation act, MlpActivations* keep);

/// Input-side backward of rows: dhidden = dy w2^T, through the activation (da, and dg for
/// SwiGLU), dx = da w1^T (+ dg w3^T). dy: [n, d]; a, g: those rows' activations.
/// Returns dx [n, d]; *da, *dg receive [n, h] (dg undefined unless SwiGLU).
torch::Tensor mlp_backward_input(const torch::Tensor& dy, const torch::Tensor& a,
                                 const torch::Tensor& g, const ExpertWeights& w,
                                 const std::vector<int64_t>& counts, Activation act,
                                 torch::Tensor* da, torch::Tensor* dg);

/// Weight gradients over all rows of every segment: dw2 = hidden^T dy, dw1 = x^T da,
/// dw3 = x^T dg; each bias gradient (segment sums) where that bias exists in `w`.
ExpertWeights mlp_backward_weights(const torch::Tensor& x, const torch::Tensor& hidden,
                                   const torch::Tensor& dy, const torch::Tensor& da,
                                   const torch::Tensor& dg, const std::vector<int64_t>& counts,
                                   const ExpertWeights& w);

/// y = act(x w1 + b1) w2 + b2 per expert segment; SwiGLU: (silu(x w1 + b1) * (x w3 + b3)) w2 + b2,
/// as one autograd function (mlp_forward, then mlp_backward_input and mlp_backward_weights).
/// x: [A, d]; counts: [L] rows per expert. Returns [A, d]. Differentiable once.
torch::Tensor grouped_mlp(const torch::Tensor& x, const ExpertWeights& w,
                          const std::vector<int64_t>& counts, Activation activation);

/// Plain-op MLP of one expert. x: [n, d] → [n, d]. w*/b* are that expert's slices.
torch::Tensor expert_mlp_plain(const torch::Tensor& x, const torch::Tensor& w1,
                               const torch::Tensor& b1, const torch::Tensor& w2,
                               const torch::Tensor& b2, const torch::Tensor& w3,
                               const torch::Tensor& b3, Activation activation);

/// The expert activation. a: [rows, h]; g: [rows, h] (SwiGLU's gate, else undefined) → [rows, h].
torch::Tensor activate(const torch::Tensor& a, const torch::Tensor& g, Activation act);

}  // namespace hybridmoe::detail
