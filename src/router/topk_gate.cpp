// topk_gate.cpp — the top-k softmax gate ("topk"), with FastMoE's softmax-over-the-k variant
// and DeepSeek-V3's auxiliary-loss-free balancing bias.
#include "hybridmoe/gates.h"
#include "router/route_util.h"

namespace hybridmoe {

TopKGateImpl::TopKGateImpl(int64_t d_model, int64_t num_experts, GateOptions options)
    : LinearGateImpl(d_model, num_experts, std::move(options)) {
  TORCH_CHECK(options_.bias_update_rate() >= 0, "topk gate: bias_update_rate must be >= 0, got ",
              options_.bias_update_rate());
  expert_bias = register_buffer("expert_bias", torch::zeros({num_experts}));
  step_load = register_buffer("step_load", torch::zeros({num_experts}, torch::kInt64));
}

RouterOutput TopKGateImpl::route(const torch::Tensor& x) {
  RouterOutput out;
  // 1. Router logits and probabilities in the router dtype.
  auto logits = logits_of(x, "topk");
  auto probs = torch::softmax(logits, -1);
  // 2. Selection scores: logits (softmax is monotone, and exact ties stay exact) or, with the
  //    loss-free bias, the scores the weights come from plus the bias.
  torch::Tensor select;
  const bool use_bias = options_.bias_update_rate() > 0;
  if (!use_bias) {
    select = logits.detach();
  } else {
    auto base = rules_.softmax_over_topk ? logits : probs;
    select = base.detach() + expert_bias.to(base.scalar_type()).unsqueeze(0);
  }
  // 3. Weights, losses before capacity, capacity and the assignment list (route_util.h).
  auto topk_i = detail::topk_route(*this, rules_, logits, probs, select, out);
  // 4. Load counters for the bias update.
  if (use_bias && is_training()) {
    torch::NoGradGuard no_grad;
    step_load.add_(torch::bincount(topk_i.reshape({-1}), {}, num_experts_).to(step_load.device()));
  }
  return out;
}

void TopKGateImpl::after_step() {
  if (options_.bias_update_rate() <= 0) return;
  torch::NoGradGuard no_grad;
  auto load = step_load.to(torch::kFloat64);
  if (load.sum().item<double>() > 0) {
    auto error = load.mean() - load;  // > 0: under-loaded expert, raise its bias
    expert_bias.add_((error.sign() * options_.bias_update_rate()).to(expert_bias.dtype()));
  }
  step_load.zero_();
}

}  // namespace hybridmoe
