// expert_choice_gate.cpp — expert-choice routing ("expert_choice", Zhou et al. 2022): every
// expert takes its C tokens of highest router probability, so experts are balanced by
// construction and a token may be processed by zero, one or several experts.
#include "hybridmoe/detail/compat.h"
#include "hybridmoe/gates.h"
#include "router/route_util.h"

namespace hybridmoe {

ExpertChoiceGateImpl::ExpertChoiceGateImpl(int64_t d_model, int64_t num_experts,
                                           GateOptions options)
    : LinearGateImpl(d_model, num_experts, std::move(options)) {
  TORCH_CHECK(options_.capacity_factor() > 0,
              "expert_choice gate: capacity_factor must be > 0 (C = tokens * capacity_factor / "
              "experts), got ",
              options_.capacity_factor());
  TORCH_CHECK(options_.eval_capacity_factor().value_or(1.0) > 0,
              "expert_choice gate: eval_capacity_factor must be > 0, got ",
              options_.eval_capacity_factor().value_or(1.0));
  detail::refuse_rules(options_, "expert_choice",
                       detail::kRuleSlotOrder | detail::kRuleWeightNormalization |
                           detail::kRuleCapacityFormula | detail::kRuleBalanceLossChoices |
                           detail::kRuleBatchPrioritized | detail::kRuleSoftmaxOverTopk |
                           detail::kRuleConvention,
                       "experts choose their tokens: C = ceil(T * capacity_factor / E) each");
}

RouterOutput ExpertChoiceGateImpl::route(const torch::Tensor& x) {
  const int64_t T = x.size(0), E = num_experts_;
  RouterOutput out;
  // 1. Logits and token-to-expert probabilities.
  auto logits = logits_of(x, "expert_choice");
  auto probs = torch::softmax(logits, -1);  // [T, E]
  // 2. C = min(T, max(min_capacity, ceil(T * factor / E))).
  const int64_t C = std::min<int64_t>(
      T, compute_capacity(T, E, 1, active_capacity_factor(), options_.min_capacity()));
  out.capacity = C;
  // 3. Each expert's C best tokens (ties to the lower token index).
  auto by_expert = probs.detach().t();                // [E, T]
  auto tok = std::get<1>(stable_topk(by_expert, C));  // [E, C]
  auto expert = torch::arange(E, tok.options()).unsqueeze(1).expand({E, C});
  auto rank = torch::arange(C, tok.options()).unsqueeze(0).expand({E, C});
  // 4. List the assignments token-major (by token, then expert).
  auto flat_tok = tok.reshape({-1}), flat_e = expert.reshape({-1});
  auto order = compat::stable_argsort(flat_tok * E + flat_e);
  out.token_index = flat_tok.index_select(0, order);
  out.expert_index = flat_e.index_select(0, order);
  out.position = rank.reshape({-1}).index_select(0, order);
  out.weight = probs.index({out.token_index, out.expert_index});
  // 5. Statistics: tokens that no expert chose; z-loss; no balance loss.
  const int64_t covered =
      T == 0 ? 0 : (torch::bincount(out.token_index, {}, T) > 0).sum().item<int64_t>();
  out.dropped = T - covered;
  out.aux_loss = torch::zeros({}, logits.options());
  apply_z_loss(logits, options_.z_loss_coef(), out);
  out.probs = probs.detach();
  return out;
}

}  // namespace hybridmoe
