// route_util.h — private helpers of the gates in src/router/: the capacity step under the
// routing rules (drop policy, slot order, capacity formula, batch priority, normalization after
// capacity), the top-k routing shared by "topk" and "cosine", the balance-loss bookkeeping, and
// the refusal of rules a gate cannot follow.
#pragma once

#include <limits>
#include <string>

#include "hybridmoe/gate.h"
#include "hybridmoe/gates.h"

namespace hybridmoe::detail {

/// The capacity_slots rules of `rules`; with batch priority the tokens are ordered by their top
/// probability (Tutel's importance score). probs: [T, E].
inline SlotRules slot_rules_of(const RoutingRules& rules, const torch::Tensor& probs) {
  SlotRules s{rules.drop_policy, rules.slot_order, torch::Tensor()};
  if (rules.batch_prioritized) s.token_priority = std::get<0>(probs.detach().max(1));
  return s;
}

/// weight * keep renormalized over each token's kept choices, the sum clamped at the dtype's
/// epsilon (DeepSpeed's gates_masked / clamp(sum, eps)). weight: [T, k]; keep: [T, k] bool.
inline torch::Tensor renormalize_kept(const torch::Tensor& weight, const torch::Tensor& keep) {
  const double eps = weight.scalar_type() == torch::kFloat64
                         ? std::numeric_limits<double>::epsilon()
                         : std::numeric_limits<float>::epsilon();
  auto kept = weight * keep.to(weight.scalar_type());
  return kept / kept.sum(1, /*keepdim=*/true).clamp_min(eps);
}

/// Applies the active capacity (if any) to [T, k] choices under `rules` and fills the
/// assignment list and the choice table. expert_index: [T, k] int64 (num_experts = not routed);
/// weight: [T, k]; k_for_capacity: the k of the capacity formula; probs: [T, E] (for batch
/// priority). With kAfterCapacity the kept weights of each token are renormalized; then every
/// weight is multiplied by the gate's routed_scaling_factor (after any normalization, so the
/// assignments and the choice table carry the scaled weights).
inline void capacity_and_flatten(const GateImpl& gate, const torch::Tensor& expert_index,
                                 const torch::Tensor& weight, int64_t k_for_capacity,
                                 RouterOutput& out, const RoutingRules& rules,
                                 const torch::Tensor& probs) {
  const int64_t E = gate.num_experts();
  const double factor = gate.active_capacity_factor();
  const auto routed = expert_index.lt(E);
  const bool after = rules.weight_normalization == WeightNormalization::kAfterCapacity;
  const double scale = gate.options().routed_scaling_factor();
  // The final weights of the choices `keep` holds: renormalized (kAfterCapacity), then scaled.
  auto final_weight = [&](const torch::Tensor& keep) {
    auto w = after ? renormalize_kept(weight, keep) : weight;
    return scale == 1.0 ? w : w * scale;
  };
  if (factor != 0) {
    out.capacity = routed_capacity(expert_index, E, k_for_capacity, factor,
                                   gate.options().min_capacity(), rules.capacity_formula);
    auto [keep, position] =
        capacity_slots(expert_index, weight, E, out.capacity, slot_rules_of(rules, probs));
    flatten_assignments(expert_index, final_weight(keep), keep, out, position, E);
    // Unrouted choices are not capacity drops.
    out.dropped = routed.sum().item<int64_t>() - out.token_index.numel();
  } else if (routed.all().item<bool>()) {
    flatten_assignments(expert_index, final_weight(routed), torch::Tensor(), out, torch::Tensor(),
                        E);
  } else {
    flatten_assignments(expert_index, final_weight(routed), routed, out, torch::Tensor(), E);
    out.dropped = 0;
  }
}

/// Sets out.aux_loss = coef * balance and out.loss_terms[name] = balance. balance: [].
inline void set_balance_loss(const torch::Tensor& balance, double coef, const char* name,
                             RouterOutput& out) {
  out.loss_terms[name] = balance.item<double>();
  out.aux_loss = balance * coef;
}

/// Refuses a routing rule the gate cannot follow: an error naming the gate, the option and its
/// value, unless `ok`.
inline void require_rule(bool ok, const char* gate, const char* option, const std::string& value,
                         const char* why) {
  TORCH_CHECK(ok, gate, " gate: routing rule ", option, "=", value, " is not supported (", why,
              ")");
}

/// Routing rules, as bits for refuse_rules().
enum RuleBits : unsigned {
  kRuleSlotOrder = 1u,
  kRuleWeightNormalization = 2u,
  kRuleCapacityFormula = 4u,
  kRuleBalanceLossChoices = 8u,
  kRuleBatchPrioritized = 16u,
  kRuleSoftmaxOverTopk = 32u,
  kRuleConvention = 64u,
};

/// Refuses every rule in `bits` that the options set explicitly (or a convention), naming the
/// gate, the option and its value: the gate does not follow it.
inline void refuse_rules(const GateOptions& o, const char* gate, unsigned bits, const char* why) {
  auto check = [&](unsigned bit, bool set, const char* option, const std::string& value) {
    if (bits & bit) require_rule(!set, gate, option, value, why);
  };
  check(kRuleSlotOrder, o.slot_order().has_value(), "slot_order",
        o.slot_order() ? to_string(*o.slot_order()) : "");
  check(kRuleWeightNormalization, o.weight_normalization().has_value(), "weight_normalization",
        o.weight_normalization() ? to_string(*o.weight_normalization()) : "");
  check(kRuleCapacityFormula, o.capacity_formula().has_value(), "capacity_formula",
        o.capacity_formula() ? to_string(*o.capacity_formula()) : "");
  check(kRuleBalanceLossChoices, o.balance_loss_choices().has_value(), "balance_loss_choices",
        o.balance_loss_choices() ? to_string(*o.balance_loss_choices()) : "");
  check(kRuleBatchPrioritized, o.batch_prioritized().value_or(false), "batch_prioritized", "true");
  check(kRuleSoftmaxOverTopk, o.softmax_over_topk().value_or(false), "softmax_over_topk", "true");
  check(kRuleConvention, o.convention() != Convention::kNone, "convention",
        to_string(o.convention()));
}

/// The tail of every top-k routing: the balance loss over `probs` (all choices or the first),
/// the z-loss of the logits, capacity and the assignment list. topk_i, topk_w: [T, k].
inline void finish_topk(const GateImpl& gate, const RoutingRules& rules,
                        const torch::Tensor& logits, const torch::Tensor& probs,
                        const torch::Tensor& topk_i, const torch::Tensor& topk_w,
                        RouterOutput& out) {
  const int64_t k = gate.options().top_k();
  const bool first_only = rules.balance_loss_choices == BalanceLossChoices::kFirstChoice;
  set_balance_loss(load_balancing_loss(probs, first_only ? topk_i.narrow(1, 0, 1) : topk_i),
                   gate.options().aux_loss_coef(), "balance", out);
  apply_z_loss(logits, gate.options().z_loss_coef(), out);
  capacity_and_flatten(gate, topk_i, topk_w, k, out, rules, probs);
  out.probs = probs.detach();
}

/// Top-k routing from logits under the gate's rules ("topk" and "cosine"): softmax, the k
/// largest of `select` (ties to the lower expert), the weights (softmax over all experts, or
/// over the k logits with softmax_over_topk), normalization before capacity, the balance loss
/// on the choices before capacity, the z-loss, capacity and the assignment list.
/// logits: [T, E]; select: [T, E] detached selection scores. Returns the [T, k] choices.
inline torch::Tensor topk_route(const GateImpl& gate, const RoutingRules& rules,
                                const torch::Tensor& logits, const torch::Tensor& probs,
                                const torch::Tensor& select, RouterOutput& out) {
  const int64_t k = gate.options().top_k();
  auto topk_i = std::get<1>(stable_topk(select, k));
  torch::Tensor topk_w;
  if (rules.softmax_over_topk) {
    topk_w = torch::softmax(logits.gather(1, topk_i), -1);  // normalized before capacity
  } else {
    topk_w = probs.gather(1, topk_i);
    if (rules.weight_normalization == WeightNormalization::kBeforeCapacity)
      topk_w = topk_w / topk_w.sum(-1, /*keepdim=*/true);
  }
  finish_topk(gate, rules, logits, probs, topk_i, topk_w, out);
  return topk_i;
}

}  // namespace hybridmoe::detail
