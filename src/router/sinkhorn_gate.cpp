// sinkhorn_gate.cpp — Sinkhorn-balanced selection ("sinkhorn"), as Megatron-Core's and
// GPT-NeoX's Sinkhorn routing: experts are chosen on the Sinkhorn-normalized scores in training,
// and the weights are the softmax probabilities of the chosen experts.
#include "hybridmoe/gates.h"
#include "router/route_util.h"

namespace hybridmoe {

SinkhornResult sinkhorn(const torch::Tensor& logits, double tolerance, int64_t max_iterations) {
  TORCH_CHECK(logits.dim() == 2, "sinkhorn: logits must be [T, E], got ", logits.sizes());
  TORCH_CHECK(max_iterations >= 1, "sinkhorn: max_iterations must be >= 1, got ", max_iterations);
  torch::NoGradGuard no_grad;
  SinkhornResult result;
  const int64_t T = logits.size(0), E = logits.size(1);
  if (T == 0) {
    result.scores = logits.detach().clone();
    return result;
  }
  // 1. cost = exp(L), in float64 so that it stays finite for logits up to ~700 (Megatron-Core
  //    uses the logits' dtype; no shift, so that the tolerance means the same).
  auto cost = torch::exp(logits.to(torch::kFloat64));
  auto d0 = torch::ones({T}, cost.options());
  auto d1 = torch::ones({E}, cost.options());
  const double guard = 1e-8;
  // 2. Alternate row and column scaling until d1 moves by at most `tolerance` on average.
  for (int64_t it = 1; it <= max_iterations; ++it) {
    d0 = (1.0 / static_cast<double>(T)) / (torch::mv(cost, d1) + guard);
    auto d1_new = (1.0 / static_cast<double>(E)) / (torch::mv(cost.t(), d0) + guard);
    result.error = (d1_new - d1).abs().mean().item<double>();
    result.iterations = it;
    d1 = d1_new;
    if (result.error <= tolerance) break;
  }
  // 3. The balanced scores.
  result.scores = d1.unsqueeze(0) * cost * d0.unsqueeze(1);
  return result;
}

SinkhornGateImpl::SinkhornGateImpl(int64_t d_model, int64_t num_experts, GateOptions options)
    : LinearGateImpl(d_model, num_experts, std::move(options)) {
  TORCH_CHECK(options_.sinkhorn_tolerance() > 0,
              "sinkhorn gate: sinkhorn_tolerance must be > 0, got ", options_.sinkhorn_tolerance());
  TORCH_CHECK(options_.sinkhorn_max_iterations() >= 1,
              "sinkhorn gate: sinkhorn_max_iterations must be >= 1, got ",
              options_.sinkhorn_max_iterations());
  detail::refuse_rules(
      options_, "sinkhorn",
      detail::kRuleBalanceLossChoices | detail::kRuleSoftmaxOverTopk | detail::kRuleConvention,
      "Sinkhorn selects by its balanced scores and has no balance loss");
  detail::require_rule(rules_.weight_normalization != WeightNormalization::kAfterCapacity,
                       "sinkhorn", "weight_normalization", "after_capacity",
                       "use none or before_capacity");
}

RouterOutput SinkhornGateImpl::route(const torch::Tensor& x) {
  const int64_t k = options_.top_k();
  RouterOutput out;
  // 1. Logits and probabilities.
  auto logits = logits_of(x, "sinkhorn");
  auto probs = torch::softmax(logits, -1);
  // 2. Selection: top-k of the Sinkhorn scores in training, of the logits in evaluation.
  torch::Tensor topk_i;
  if (is_training()) {
    auto s = sinkhorn(logits.detach(), options_.sinkhorn_tolerance(),
                      options_.sinkhorn_max_iterations());
    last_iterations = s.iterations;
    last_error = s.error;
    topk_i = std::get<1>(stable_topk(s.scores, k));
  } else {
    topk_i = std::get<1>(stable_topk(logits.detach(), k));
  }
  // 3. Weights: the softmax probabilities of the chosen experts (optionally renormalized).
  auto topk_w = probs.gather(1, topk_i);
  if (rules_.weight_normalization == WeightNormalization::kBeforeCapacity)
    topk_w = topk_w / topk_w.sum(-1, /*keepdim=*/true);
  // 4. No balance loss (the selection balances); optional z-loss.
  out.aux_loss = torch::zeros({}, logits.options());
  apply_z_loss(logits, options_.z_loss_coef(), out);
  // 5. Capacity, then the flat assignment list.
  detail::capacity_and_flatten(*this, topk_i, topk_w, k, out, rules_, probs);
  out.probs = probs.detach();
  return out;
}

}  // namespace hybridmoe
