// gshard_gate.cpp — the GShard top-2 gate ("gshard"), as GShard's Algorithm 1 and DeepSpeed's
// top2gating: first/second choice, optional Gumbel sampling and random routing of the second,
// capacity with first choices first, renormalized kept weights, and the GShard balance loss.
#include <limits>

#include "hybridmoe/gates.h"
#include "router/route_util.h"

namespace hybridmoe {

GShardGateImpl::GShardGateImpl(int64_t d_model, int64_t num_experts, GateOptions options)
    : LinearGateImpl(d_model, num_experts, std::move(options)) {
  TORCH_CHECK(options_.top_k() == 2, "gshard gate: top_k must be 2 (top-2 gating), got ",
              options_.top_k());
  const Convention c = options_.convention();
  detail::require_rule(
      c == Convention::kNone || c == Convention::kDeepSpeed || c == Convention::kGShard, "gshard",
      "convention", to_string(c),
      "the gshard gate is GShard's / DeepSpeed's top2gating; use gate type topk for this one");
  detail::require_rule(!options_.weight_normalization() ||
                           rules_.weight_normalization == WeightNormalization::kAfterCapacity,
                       "gshard", "weight_normalization", to_string(rules_.weight_normalization),
                       "the gshard gate renormalizes the kept weights after capacity");
  detail::require_rule(!options_.balance_loss_choices() ||
                           rules_.balance_loss_choices == BalanceLossChoices::kFirstChoice,
                       "gshard", "balance_loss_choices", to_string(rules_.balance_loss_choices),
                       "the gshard balance loss counts first choices");
  detail::refuse_rules(options_, "gshard", detail::kRuleSoftmaxOverTopk,
                       "the gshard gate's weights are softmax probabilities over all experts");
}

RouterOutput GShardGateImpl::route(const torch::Tensor& x) {
  const int64_t T = x.size(0), E = num_experts_;
  RouterOutput out;
  // 1. Router logits and probabilities.
  auto logits = logits_of(x, "gshard");
  auto probs = torch::softmax(logits, -1);
  const bool train = is_training();
  // 2. First choice: the most probable expert (ties to the lower index).
  auto first = std::get<1>(stable_topk(logits.detach(), 1));  // [T, 1]
  // 3. Second choice: the best of the others, optionally of logits + Gumbel noise.
  auto second_scores = logits.detach().clone();
  last_gumbel = torch::Tensor();
  if (train && options_.gumbel_second_expert()) {
    auto u = sample_uniform({T, E}, second_scores.options());
    const double tiny = 1e-20;
    auto neg_log_u = -torch::log(u.clamp_min(tiny));  // Exp(1) samples, > 0
    last_gumbel = -torch::log(neg_log_u.clamp_min(tiny));
    second_scores = second_scores + last_gumbel;
  }
  second_scores.scatter_(1, first, -std::numeric_limits<double>::infinity());
  auto second = std::get<1>(stable_topk(second_scores, 1));        // [T, 1]
  auto p1 = probs.gather(1, first), p2 = probs.gather(1, second);  // [T, 1] each
  // 4. Balance loss on the first choices before any capacity or random routing.
  detail::set_balance_loss(load_balancing_loss(probs, first), options_.aux_loss_coef(), "balance",
                           out);
  apply_z_loss(logits, options_.z_loss_coef(), out);
  // 5. Random routing: keep the second expert iff 2 * p2 / (p1 + p2) > u.
  last_uniform = torch::Tensor();
  if (train && options_.random_routing()) {
    torch::NoGradGuard no_grad;
    last_uniform = sample_uniform({T}, p2.options());
    auto keep2 = (2.0 * p2 / (p1 + p2)).squeeze(1) > last_uniform;
    second = torch::where(keep2.unsqueeze(1), second, torch::full_like(second, E));
  }
  auto choice = torch::cat({first, second}, 1);  // [T, 2]; E marks an unrouted second
  auto gates = torch::cat({p1, p2}, 1);          // [T, 2]
  // 6. Capacity: slots to all first choices in token order, then to the second choices (or as
  //    the routing rules say: slot order, drop policy, batch priority, capacity formula).
  torch::Tensor keep, position;
  const double factor = active_capacity_factor();
  if (factor != 0) {
    out.capacity =
        routed_capacity(choice, E, 2, factor, options_.min_capacity(), rules_.capacity_formula);
    std::tie(keep, position) =
        capacity_slots(choice, gates, E, out.capacity, detail::slot_rules_of(rules_, probs));
  } else {
    keep = choice.lt(E);
  }
  // 7. Renormalize the kept weights of each token to sum to one.
  const double eps = std::numeric_limits<float>::epsilon();
  auto kept_gates = gates * keep.to(gates.scalar_type());
  auto weights = kept_gates / kept_gates.sum(1, /*keepdim=*/true).clamp_min(eps);
  const int64_t routed = choice.lt(E).sum().item<int64_t>();
  flatten_assignments(choice, weights, keep, out, position, E);
  out.dropped = routed - out.token_index.numel();
  out.probs = probs.detach();
  return out;
}

}  // namespace hybridmoe
