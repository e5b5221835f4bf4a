// routing_rules.cpp — names of the routing rules (to_string / parse for the CLI and the trainer
// config), the peer conventions' presets and resolve_routing_rules(), which merges a preset with
// the explicit options and refuses contradictions.
#include "hybridmoe/routing_rules.h"

#include <utility>
#include <vector>

#include "core/enum_names.h"
#include "hybridmoe/gate.h"

namespace hybridmoe {

namespace {

using detail::EnumNames;

const EnumNames<DropPolicy> kDropPolicyNames{
    "drop_policy", {{DropPolicy::kPosition, "position"}, {DropPolicy::kProbs, "probs"}}};
const EnumNames<SlotOrder> kSlotOrderNames{"slot_order",
                                           {{SlotOrder::kFirstChoicesFirst, "first_choices_first"},
                                            {SlotOrder::kTokenMajor, "token_major"},
                                            {SlotOrder::kByWeight, "by_weight"}}};
const EnumNames<WeightNormalization> kNormalizationNames{
    "weight_normalization",
    {{WeightNormalization::kNone, "none"},
     {WeightNormalization::kBeforeCapacity, "before_capacity"},
     {WeightNormalization::kAfterCapacity, "after_capacity"}}};
const EnumNames<CapacityFormula> kCapacityNames{
    "capacity_formula",
    {{CapacityFormula::kCeilKTOverE, "ceil_k_t_over_e"}, {CapacityFormula::kTutel, "tutel"}}};
const EnumNames<BalanceLossChoices> kBalanceNames{
    "balance_loss_choices",
    {{BalanceLossChoices::kAllChoices, "all_choices"},
     {BalanceLossChoices::kFirstChoice, "first_choice"}}};
const EnumNames<Convention> kConventionNames{"convention",
                                             {{Convention::kNone, "none"},
                                              {Convention::kDeepSpeed, "deepspeed"},
                                              {Convention::kTutel, "tutel"},
                                              {Convention::kMegatron, "megatron"},
                                              {Convention::kGShard, "gshard"}}};

std::string bool_name(bool v) {
  return v ? "true" : "false";
}

// What a convention sets for top-k routing with k choices. Unset fields: the convention has no
// say (hybridmoe's default applies, or the explicit option).
struct Preset {
  c10::optional<DropPolicy> drop_policy;
  c10::optional<SlotOrder> slot_order;
  c10::optional<WeightNormalization> weight_normalization;
  c10::optional<CapacityFormula> capacity_formula;
  c10::optional<BalanceLossChoices> balance_loss_choices;
  c10::optional<bool> batch_prioritized;
  c10::optional<bool> softmax_over_topk;
};

Preset preset_of(Convention c, int64_t k) {
  using WN = WeightNormalization;
  Preset p;
  switch (c) {
    case Convention::kNone:
      return p;
    case Convention::kDeepSpeed:
      // sharded_moe.py: TopKGate.forward calls top1gating (k = 1), top2gating (k = 2) or
      // topkgating (k >= 3, drop_policy "probs" by default).
      p.capacity_formula = CapacityFormula::kCeilKTOverE;
      p.softmax_over_topk = false;
      p.batch_prioritized = false;
      if (k == 1) {  // gates * mask1: the raw probability; slots cumsum over tokens
        p.drop_policy = DropPolicy::kPosition;
        p.slot_order = SlotOrder::kFirstChoicesFirst;
        p.weight_normalization = WN::kNone;
        p.balance_loss_choices = BalanceLossChoices::kFirstChoice;
      } else if (k == 2) {  // locations2 += sum(mask1); gates renormalized over the kept
        p.drop_policy = DropPolicy::kPosition;
        p.slot_order = SlotOrder::kFirstChoicesFirst;
        p.weight_normalization = WN::kAfterCapacity;
        p.balance_loss_choices = BalanceLossChoices::kFirstChoice;
      } else {  // topk over tokens of the raw top-k probs; locations = cumsum(mask, 0) - 1
        p.drop_policy = DropPolicy::kProbs;
        p.slot_order = SlotOrder::kTokenMajor;
        p.weight_normalization = WN::kAfterCapacity;
        p.balance_loss_choices = BalanceLossChoices::kAllChoices;
      }
      return p;
    case Convention::kTutel:
      // fast_dispatch.py extract_critical: locations of choice j offset by the counts of the
      // choices before it; normalize_gate only for k > 1; losses.gshard_loss on top_ids[:, 0].
      p.drop_policy = DropPolicy::kPosition;
      p.slot_order = SlotOrder::kFirstChoicesFirst;
      p.weight_normalization = k > 1 ? WN::kBeforeCapacity : WN::kNone;
      p.capacity_formula = CapacityFormula::kTutel;
      p.balance_loss_choices = BalanceLossChoices::kFirstChoice;
      p.softmax_over_topk = false;
      return p;
    case Convention::kMegatron:
      // moe_utils.py: topk of the logits then softmax over the k (use_pre_softmax = false);
      // apply_router_token_dropping with drop_policy "probs" on those probs; the routing map is
      // permuted in token order; switch_load_balancing_loss_func over the full routing map.
      p.drop_policy = DropPolicy::kProbs;
      p.slot_order = SlotOrder::kTokenMajor;
      p.weight_normalization = WN::kBeforeCapacity;
      p.capacity_formula = CapacityFormula::kCeilKTOverE;
      p.balance_loss_choices = BalanceLossChoices::kAllChoices;
      p.batch_prioritized = false;
      p.softmax_over_topk = true;
      return p;
    case Convention::kGShard:
      TORCH_CHECK(k == 2, "convention \"gshard\" is GShard's top-2 gating: top_k must be 2, got ",
                  k);
      p.drop_policy = DropPolicy::kPosition;
      p.slot_order = SlotOrder::kFirstChoicesFirst;
      p.weight_normalization = WN::kAfterCapacity;
      p.capacity_formula = CapacityFormula::kCeilKTOverE;
      p.balance_loss_choices = BalanceLossChoices::kFirstChoice;
      p.batch_prioritized = false;
      p.softmax_over_topk = false;
      return p;
  }
  return p;
}

// explicit value, else the preset's, else `fallback`; both set and different: an error.
template <typename T, typename ToName>
T merge(const char* option, const c10::optional<T>& given, const c10::optional<T>& preset,
        T fallback, const GateOptions& o, ToName to_name) {
  if (given && preset) {
    TORCH_CHECK(*given == *preset, "gate option ", option, "=", to_name(*given),
                " contradicts convention \"", to_string(o.convention()), "\", which sets ", option,
                "=", to_name(*preset), " for top_k=", o.top_k(),
                " (leave the option unset, or drop the convention)");
  }
  return given ? *given : (preset ? *preset : fallback);
}

}  // namespace

DropPolicy parse_drop_policy(const std::string& name) {
  return kDropPolicyNames.parse(name);
}
std::string to_string(DropPolicy v) {
  return kDropPolicyNames.name_of(v);
}
SlotOrder parse_slot_order(const std::string& name) {
  return kSlotOrderNames.parse(name);
}
std::string to_string(SlotOrder v) {
  return kSlotOrderNames.name_of(v);
}
WeightNormalization parse_weight_normalization(const std::string& name) {
  return kNormalizationNames.parse(name);
}
std::string to_string(WeightNormalization v) {
  return kNormalizationNames.name_of(v);
}
CapacityFormula parse_capacity_formula(const std::string& name) {
  return kCapacityNames.parse(name);
}
std::string to_string(CapacityFormula v) {
  return kCapacityNames.name_of(v);
}
BalanceLossChoices parse_balance_loss_choices(const std::string& name) {
  return kBalanceNames.parse(name);
}
std::string to_string(BalanceLossChoices v) {
  return kBalanceNames.name_of(v);
}
Convention parse_convention(const std::string& name) {
  return kConventionNames.parse(name);
}
std::string to_string(Convention v) {
  return kConventionNames.name_of(v);
}

std::vector<std::string> known_convention_names() {
  std::vector<std::string> out;
  for (const auto& kv : kConventionNames.values)
    if (kv.first != Convention::kNone) out.push_back(kv.second);
  return out;
}

RoutingRules resolve_routing_rules(const GateOptions& o) {
  const Preset p = preset_of(o.convention(), o.top_k());
  auto name = [](auto v) { return to_string(v); };
  RoutingRules r;
  r.drop_policy =
      merge("drop_policy", o.drop_policy(), p.drop_policy, DropPolicy::kPosition, o, name);
  const SlotOrder slot_default =
      r.drop_policy == DropPolicy::kProbs ? SlotOrder::kByWeight : SlotOrder::kFirstChoicesFirst;
  r.slot_order = merge("slot_order", o.slot_order(), p.slot_order, slot_default, o, name);
  r.weight_normalization = merge("weight_normalization", o.weight_normalization(),
                                 p.weight_normalization, WeightNormalization::kNone, o, name);
  r.capacity_formula = merge("capacity_formula", o.capacity_formula(), p.capacity_formula,
                             CapacityFormula::kCeilKTOverE, o, name);
  r.balance_loss_choices = merge("balance_loss_choices", o.balance_loss_choices(),
                                 p.balance_loss_choices, BalanceLossChoices::kAllChoices, o, name);
  r.batch_prioritized =
      merge("batch_prioritized", o.batch_prioritized(), p.batch_prioritized, false, o, bool_name);
  r.softmax_over_topk =
      merge("softmax_over_topk", o.softmax_over_topk(), p.softmax_over_topk, false, o, bool_name);
  return r;
}

}  // namespace hybridmoe
