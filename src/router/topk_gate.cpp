// topk_gate.cpp — the plain top-k softmax gate ("topk").
#include <cmath>

#include "hybridmoe/compat.h"
#include "hybridmoe/gates.h"

namespace hybridmoe {

torch::Tensor router_logits(const torch::Tensor& x, const torch::Tensor& weight) {
  const auto dt = router_dtype(x.scalar_type());
  auto logits = torch::mm(x.to(dt), weight.to(dt).t());
  TORCH_CHECK(torch::isfinite(logits).all().item<bool>(),
              "gate: router logits must be finite; got NaN or Inf (check the input and the "
              "router weights)");
  return logits;
}

std::tuple<torch::Tensor, torch::Tensor> stable_topk(const torch::Tensor& scores, int64_t k) {
  auto sorted = scores.sort(/*stable=*/true, /*dim=*/-1, /*descending=*/true);
  return {std::get<0>(sorted).narrow(-1, 0, k), std::get<1>(sorted).narrow(-1, 0, k)};
}

TopKGateImpl::TopKGateImpl(int64_t d_model, int64_t num_experts, GateOptions options)
    : GateImpl(d_model, num_experts, std::move(options)) {
  weight = register_parameter("weight", torch::empty({num_experts, d_model}));
  reset_parameters();
}

void TopKGateImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  const double bound = 1.0 / std::sqrt(static_cast<double>(d_model_));
  weight.uniform_(-bound, bound);
}

RouterOutput TopKGateImpl::route(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == d_model_, "topk gate: x must be [tokens, ", d_model_,
              "], got ", x.sizes());
  const int64_t T = x.size(0), E = num_experts_, k = options_.top_k();
  RouterOutput out;
  // 1. Router logits and probabilities in the router dtype.
  auto logits = router_logits(x, weight);
  auto probs = torch::softmax(logits, -1);
  // 2. The k best experts per token; optional renormalization over the k.
  auto [topk_w, topk_i] = stable_topk(probs, k);
  if (options_.normalize_top_k_weights()) topk_w = topk_w / topk_w.sum(-1, /*keepdim=*/true);
  // 3. Losses on the choices before any capacity.
  out.aux_loss = load_balancing_loss(probs, topk_i);
  out.loss_terms["balance"] = out.aux_loss.item<double>();
  out.aux_loss = out.aux_loss * options_.aux_loss_coef();
  if (options_.z_loss_coef() > 0) {
    auto z = router_z_loss(logits);
    out.loss_terms["z"] = z.item<double>();
    out.z_loss = z * options_.z_loss_coef();
  } else {
    out.z_loss = torch::zeros({}, logits.options());
  }
  // 4. Capacity, then the flat assignment list.
  torch::Tensor keep;
  const double factor = active_capacity_factor();
  if (factor > 0) {
    out.capacity = compute_capacity(T, E, k, factor, options_.min_capacity());
    keep = capacity_keep_mask(topk_i, topk_w, E, out.capacity, options_.drop_policy());
  }
  flatten_assignments(topk_i, topk_w, keep, out);
  out.probs = probs.detach();
  return out;
}

}  // namespace hybridmoe
