// gates.h — the concrete gates. Each is also buildable by name through make_gate().
#pragma once

#include <torch/torch.h>

#include "hybridmoe/gate.h"

namespace hybridmoe {

/// "topk": linear router (no bias), softmax over experts, the k largest probabilities
/// (ties go to the lower expert index), optionally renormalized over the k; optional capacity.
/// Balance loss: aux_loss_coef * E * sum_e f_e P_e with f_e over all k choices.
///
/// Example:
///   auto gate = std::make_shared<TopKGateImpl>(512, 8, GateOptions().top_k(2));
///   RouterOutput r = gate->route(x);   // x: [T, 512]
class TopKGateImpl : public GateImpl {
 public:
  TopKGateImpl(int64_t d_model, int64_t num_experts, GateOptions options);
  RouterOutput route(const torch::Tensor& x) override;
  void reset_parameters();

  torch::Tensor weight;  // [E, d_model]
};

/// Router logits in the router dtype, checked finite. x: [T, d]; weight: [E, d] → [T, E].
torch::Tensor router_logits(const torch::Tensor& x, const torch::Tensor& weight);

/// The k largest entries of each row, ties broken toward the lower column (stable).
/// scores: [T, E] → (values [T, k], indices [T, k] int64).
std::tuple<torch::Tensor, torch::Tensor> stable_topk(const torch::Tensor& scores, int64_t k);

}  // namespace hybridmoe
