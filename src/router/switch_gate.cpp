// switch_gate.cpp — the Switch Transformer top-1 gate ("switch"): multiplicative router-input
// jitter in training, capacity with optional random token selection (DeepSpeed's RTS), and the
// Switch load-balancing loss.
#include "hybridmoe/gates.h"
#include "router/route_util.h"

namespace hybridmoe {

SwitchGateImpl::SwitchGateImpl(int64_t d_model, int64_t num_experts, GateOptions options)
    : LinearGateImpl(d_model, num_experts, std::move(options)) {
  TORCH_CHECK(options_.top_k() == 1, "switch gate: top_k must be 1 (top-1 routing), got ",
              options_.top_k());
  TORCH_CHECK(options_.jitter_eps() >= 0 && options_.jitter_eps() < 1,
              "switch gate: jitter_eps must be in [0, 1), got ", options_.jitter_eps());
  detail::require_rule(rules_.weight_normalization == WeightNormalization::kNone, "switch",
                       "weight_normalization", to_string(rules_.weight_normalization),
                       "the switch weight is the probability of the one chosen expert");
  detail::refuse_rules(options_, "switch", detail::kRuleSoftmaxOverTopk,
                       "a softmax over one logit is 1; the switch weight is the probability");
  detail::require_rule(!(options_.random_token_selection() && rules_.batch_prioritized), "switch",
                       "batch_prioritized", "true",
                       "random_token_selection already decides which tokens an expert keeps");
  detail::require_rule(!(options_.random_token_selection() && options_.slot_order() &&
                         rules_.slot_order == SlotOrder::kByWeight),
                       "switch", "slot_order", "by_weight",
                       "with random_token_selection the kept tokens take their slots in token "
                       "order, as DeepSpeed's top1gating");
}

RouterOutput SwitchGateImpl::route(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == d_model_, "switch gate: x must be [tokens, ", d_model_,
              "], got ", x.sizes());
  const int64_t T = x.size(0), E = num_experts_;
  const bool train = is_training();
  RouterOutput out;
  // 1. Jitter on the router input only (the experts see x unchanged).
  auto x_router = x.to(router_dtype(x.scalar_type()));
  last_jitter = torch::Tensor();
  last_rts_scores = torch::Tensor();
  const double eps = options_.jitter_eps();
  if (train && eps > 0) {
    last_jitter = sample_uniform({T, d_model_}, x_router.options()) * (2.0 * eps) + (1.0 - eps);
    x_router = x_router * last_jitter;
  }
  // 2. Logits, probabilities, the top-1 expert and its probability as the weight.
  auto logits = logits_of(x_router, "switch");
  auto probs = torch::softmax(logits, -1);
  auto top_i = std::get<1>(stable_topk(logits.detach(), 1));  // [T, 1]
  auto top_w = probs.gather(1, top_i);                        // [T, 1]
  // 3. Losses on the choices before capacity: alpha * E * sum_e f_e P_e.
  detail::set_balance_loss(load_balancing_loss(probs, top_i), options_.aux_loss_coef(), "balance",
                           out);
  apply_z_loss(logits, options_.z_loss_coef(), out);
  // 4. Capacity. Without RTS an over-full expert keeps its tokens in slot order (token order by
  //    default; DeepSpeed's top1gating leaves the choice among equal mask values to torch.topk).
  //    With RTS (DeepSpeed's use_rts) it keeps the tokens of highest uniform score, and the kept
  //    tokens take their slots in token order (DeepSpeed: locations1 = cumsum(mask1) - 1 after
  //    the selection).
  const double factor = active_capacity_factor();
  if (factor != 0 && train && options_.random_token_selection()) {
    out.capacity =
        routed_capacity(top_i, E, 1, factor, options_.min_capacity(), rules_.capacity_formula);
    last_rts_scores = sample_uniform({T}, probs.options());
    auto [keep, position] =
        capacity_slots(top_i, last_rts_scores.unsqueeze(1), E, out.capacity,
                       SlotRules{DropPolicy::kProbs, SlotOrder::kFirstChoicesFirst, {}});
    flatten_assignments(top_i, top_w, keep, out, position, E);
  } else {
    detail::capacity_and_flatten(*this, top_i, top_w, 1, out, rules_, probs);
  }
  out.probs = probs.detach();
  return out;
}

}  // namespace hybridmoe
