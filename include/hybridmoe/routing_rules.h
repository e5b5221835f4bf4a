// routing_rules.h — the closed sets of routing rules a gate can follow (capacity drop policy,
// slot order, weight normalization, capacity formula, balance-loss counts) and the peer
// conventions that set them together ("deepspeed", "tutel", "megatron", "gshard"). GateOptions
// (gate.h) holds each rule as an optional; resolve_routing_rules() turns the options into the
// rules in force, and refuses an explicit rule that contradicts the chosen convention.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace hybridmoe {

struct GateOptions;

/// Which assignments an over-full expert drops first.
enum class DropPolicy {
  /// The capacity is filled in slot order (SlotOrder); the later ones are dropped. GShard,
  /// DeepSpeed top2gating and topkgating(drop_policy="position"), Tutel, Megatron-Core
  /// (moe_token_drop_policy="position").
  kPosition,
  /// The `capacity` largest weights are kept (ties: slot order), whatever weight the gate holds
  /// at the capacity step: with WeightNormalization::kBeforeCapacity (or softmax over the k,
  /// Megatron-Core's default) the normalized weights (Megatron-Core's apply_router_token_dropping,
  /// drop_policy="probs"); otherwise the raw softmax probabilities (DeepSpeed's topkgating,
  /// drop_policy="probs", since deepspeedai/DeepSpeed#7986).
  kProbs,
};
/// Names for the CLI and the config: "position", "probs"; parse raises an error listing them.
/// Example: parse_drop_policy("probs") == DropPolicy::kProbs; to_string(DropPolicy::kProbs).
DropPolicy parse_drop_policy(const std::string& name);
std::string to_string(DropPolicy policy);

/// How the slots of an expert's capacity buffer are numbered among the assignments it receives.
/// With DropPolicy::kPosition this is also the order in which the capacity is filled; with
/// kProbs the kept assignments are numbered in this order.
enum class SlotOrder {
  /// All first choices (in token order), then all second choices, ... — GShard's Algorithm 1,
  /// DeepSpeed's top2gating (locations2 += count of first choices), Tutel's extract_critical.
  kFirstChoicesFirst,
  /// Token by token, all k choices of a token before the next token's — DeepSpeed's topkgating
  /// (cumsum over tokens of the [T, E] mask) and Megatron-Core (the routing map read in token
  /// order).
  kTokenMajor,
  /// By descending weight, ties in first-choices-first order — hybridmoe's "probs" slots.
  kByWeight,
};
/// Names: "first_choices_first", "token_major", "by_weight".
/// Example: parse_slot_order("token_major") == SlotOrder::kTokenMajor.
SlotOrder parse_slot_order(const std::string& name);
std::string to_string(SlotOrder order);

/// When the k weights of a token are renormalized to sum to one.
enum class WeightNormalization {
  /// Never: the weights are the softmax probabilities of the chosen experts (DeepSpeed's
  /// top1gating, Megatron-Core with moe_router_pre_softmax).
  kNone,
  /// Over all k choices, before the capacity drops any (Mixtral, Tutel's normalize_gate for
  /// k > 1; Megatron-Core's softmax over the k logits is normalized at this point too).
  kBeforeCapacity,
  /// Over the choices that survived the capacity (DeepSpeed's top2gating and topkgating:
  /// gates_masked / sum, clamped at the dtype's epsilon).
  kAfterCapacity,
};
/// Names: "none", "before_capacity", "after_capacity".
/// Example: parse_weight_normalization("after_capacity") == WeightNormalization::kAfterCapacity.
WeightNormalization parse_weight_normalization(const std::string& name);
std::string to_string(WeightNormalization mode);

/// How the per-expert capacity follows from tokens T, experts E, k and the capacity factor cf.
enum class CapacityFormula {
  /// max(min_capacity, ceil(k * T / E * cf)) — DeepSpeed's _capacity (called with cf * k),
  /// Megatron-Core's get_capacity (called with T * k tokens), GShard.
  kCeilKTOverE,
  /// max(min_capacity, k * floor(cf * ceil(T / E))) — Tutel's extract_critical.
  kTutel,
};
/// Names: "ceil_k_t_over_e", "tutel". Example: parse_capacity_formula("tutel").
CapacityFormula parse_capacity_formula(const std::string& name);
std::string to_string(CapacityFormula formula);

/// Which choices the balance loss E * sum_e f_e * P_e counts in f_e.
enum class BalanceLossChoices {
  /// All k choices of every token (f_e over T * k) — DeepSpeed's topkgating,
  /// Megatron-Core's switch_load_balancing_loss_func.
  kAllChoices,
  /// First choices only, for any k (f_e over T) — GShard, DeepSpeed's top2gating, Tutel's
  /// gshard_loss (is_gshard_loss).
  kFirstChoice,
};
/// Names: "all_choices", "first_choice". Example: parse_balance_loss_choices("first_choice").
BalanceLossChoices parse_balance_loss_choices(const std::string& name);
std::string to_string(BalanceLossChoices choices);

/// A peer's routing convention: sets the rules above together (see resolve_routing_rules).
enum class Convention {
  kNone,  ///< no preset: each rule takes its explicit value or hybridmoe's default
  /// deepspeed/moe/sharded_moe.py: top1gating for k = 1 (raw probability, token order),
  /// top2gating for k = 2 (first choices first, position drops, renormalized after capacity,
  /// first-choice balance loss), topkgating for k >= 3 (token-major slots, drop_policy "probs"
  /// on the raw probabilities, renormalized after capacity, balance loss over all k).
  /// DeepSpeed's random extras (RTS, Gumbel second expert) stay separate options.
  kDeepSpeed,
  /// tutel/impls/fast_dispatch.py extract_critical with tutel/gates/top.py: first choices first,
  /// position drops, k weights renormalized before capacity (k > 1), capacity
  /// k * floor(cf * ceil(T / E)), balance loss on the first choices (gshard_loss).
  kTutel,
  /// megatron/core/transformer/moe/moe_utils.py topk_routing_with_score_function (softmax over
  /// the k largest logits, moe_router_pre_softmax = false) and apply_router_token_dropping
  /// (drop_policy "probs" on those weights, token-major), balance loss over all k.
  kMegatron,
  /// GShard's top-2 (Lepikhin et al. 2020, Algorithm 1): first choices first, position drops,
  /// renormalized after capacity, first-choice balance loss; k must be 2.
  kGShard,
};
/// Names: "none", "deepspeed", "tutel", "megatron", "gshard".
/// Example: GateOptions().convention(parse_convention("tutel")).
Convention parse_convention(const std::string& name);
std::string to_string(Convention convention);
/// The preset names: "deepspeed", "tutel", "megatron", "gshard".
std::vector<std::string> known_convention_names();

/// The routing rules in force for one gate: every rule with a concrete value.
struct RoutingRules {
  DropPolicy drop_policy = DropPolicy::kPosition;
  SlotOrder slot_order = SlotOrder::kFirstChoicesFirst;
  WeightNormalization weight_normalization = WeightNormalization::kNone;
  CapacityFormula capacity_formula = CapacityFormula::kCeilKTOverE;
  BalanceLossChoices balance_loss_choices = BalanceLossChoices::kAllChoices;
  bool batch_prioritized = false;
  bool softmax_over_topk = false;
};

/// The rules of `options`: the convention's values for options.top_k() (if a convention is
/// set), then each explicit option; an explicit option that differs from the convention's value
/// is an error naming both. Unset rules take hybridmoe's defaults: position drops, slot order
/// first-choices-first (by-weight when drop_policy is probs), no normalization, ceil capacity,
/// balance loss over all choices, no batch priority, softmax over all experts.
///
/// Example:
///   auto rules = resolve_routing_rules(GateOptions().top_k(3).convention(Convention::kDeepSpeed));
///   // rules.slot_order == SlotOrder::kTokenMajor, rules.drop_policy == DropPolicy::kProbs
RoutingRules resolve_routing_rules(const GateOptions& options);

}  // namespace hybridmoe
