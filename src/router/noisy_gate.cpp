// noisy_gate.cpp — Shazeer et al. 2017 noisy top-k gating ("noisy"): trainable softplus noise,
// top-k of the noisy logits, softmax over the k, and the importance and load losses of the
// paper's appendix (squared coefficients of variation; load through the normal CDF).
#include <cmath>

#include "hybridmoe/gates.h"
#include "router/route_util.h"

namespace hybridmoe {

NoisyTopKGateImpl::NoisyTopKGateImpl(int64_t d_model, int64_t num_experts, GateOptions options)
    : LinearGateImpl(d_model, num_experts, std::move(options)) {
  TORCH_CHECK(options_.noise_epsilon() >= 0, "noisy gate: noise_epsilon must be >= 0, got ",
              options_.noise_epsilon());
  noise_weight = register_parameter("noise_weight", torch::zeros({num_experts, d_model}));
  detail::refuse_rules(options_, "noisy",
                       detail::kRuleWeightNormalization | detail::kRuleBalanceLossChoices |
                           detail::kRuleSoftmaxOverTopk | detail::kRuleConvention,
                       "the noisy gate's weights are the softmax over its k noisy logits and its "
                       "losses are importance and load");
}

void NoisyTopKGateImpl::reset_parameters() {
  LinearGateImpl::reset_parameters();
  torch::NoGradGuard no_grad;
  if (noise_weight.defined()) noise_weight.zero_();
}

namespace {

// Standard normal CDF. z: any shape.
torch::Tensor normal_cdf(const torch::Tensor& z) {
  return 0.5 * (1.0 + torch::erf(z / std::sqrt(2.0)));
}

}  // namespace

RouterOutput NoisyTopKGateImpl::route(const torch::Tensor& x) {
  const int64_t T = x.size(0), E = num_experts_, k = options_.top_k();
  const bool train = is_training();
  RouterOutput out;
  // 1. Clean logits; in training H = clean + n * (softplus(x W_noise) + noise_epsilon).
  auto clean = logits_of(x, "noisy");
  torch::Tensor noisy = clean, stddev;
  last_noise = torch::Tensor();
  if (train) {
    stddev = torch::softplus(router_logits(x, noise_weight)) + options_.noise_epsilon();
    last_noise = sample_normal({T, E}, clean.options());
    noisy = clean + last_noise * stddev;
  }
  // 2. The k + 1 largest noisy logits (ties to the lower index); softmax over the first k.
  const int64_t m = std::min(k + 1, E);
  auto [top_vals, top_idx] = stable_topk(noisy, m);
  auto topk_i = top_idx.narrow(1, 0, k);
  auto topk_w = torch::softmax(top_vals.narrow(1, 0, k), -1);
  auto gates = torch::zeros({T, E}, topk_w.options()).scatter(1, topk_i, topk_w);  // [T, E]
  // 3. Importance = sum over tokens of the gates.
  auto importance = gates.sum(0);
  // 4. Load: sum over tokens of P(e in top-k | other noise fixed) = Φ((clean - kth_excl) / std),
  //    where kth_excl is the (k+1)-th largest H for chosen experts and the k-th otherwise.
  torch::Tensor load;
  if (train && k < E) {
    auto chosen =
        torch::zeros({T, E}, clean.options().dtype(torch::kBool)).scatter(1, topk_i, true);
    auto threshold_in = top_vals.narrow(1, k, 1);       // [T, 1]
    auto threshold_out = top_vals.narrow(1, k - 1, 1);  // [T, 1]
    auto p_in = normal_cdf((clean - threshold_in) / stddev);
    auto p_out = normal_cdf((clean - threshold_out) / stddev);
    load = torch::where(chosen, p_in, p_out).sum(0);
  } else {
    load = (gates > 0).to(clean.scalar_type()).sum(0);
  }
  // 5. Losses: cv²(importance) + cv²(load), coefficient on the sum.
  auto l_importance = cv_squared(importance), l_load = cv_squared(load);
  out.loss_terms["importance"] = l_importance.item<double>();
  out.loss_terms["load"] = l_load.item<double>();
  detail::set_balance_loss(l_importance + l_load, options_.aux_loss_coef(), "balance", out);
  apply_z_loss(clean, options_.z_loss_coef(), out);
  // 6. Capacity, then the flat assignment list.
  out.probs = torch::softmax(clean, -1).detach();
  detail::capacity_and_flatten(*this, topk_i, topk_w, k, out, rules_, out.probs);
  return out;
}

}  // namespace hybridmoe
