// common.cpp — building blocks shared by the gates: capacity, drop masks, assignment lists,
// balance and z losses, entropy. Nothing here allocates [tokens, experts, capacity] tensors.
#include <cmath>

#include "hybridmoe/detail/compat.h"
#include "hybridmoe/gate.h"

namespace hybridmoe {

torch::ScalarType router_dtype(torch::ScalarType x_dtype) {
  return x_dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

int64_t compute_capacity(int64_t tokens, int64_t experts, int64_t top_k, double factor,
                         int64_t min_capacity, CapacityFormula formula) {
  TORCH_CHECK(factor > 0, "capacity_factor must be > 0 when a capacity is used, got ", factor);
  TORCH_CHECK(experts > 0, "compute_capacity: experts must be positive, got ", experts);
  if (formula == CapacityFormula::kTutel) {
    // Tutel: top_k * int(capacity_factor * ceil(T / E)); int() truncates toward zero.
    const int64_t per_expert = (tokens + experts - 1) / experts;
    const auto scaled = static_cast<int64_t>(factor * static_cast<double>(per_expert));
    return std::max(min_capacity, top_k * scaled);
  }
  // Exact integer-friendly form of ceil(top_k * tokens / experts * factor).
  const double raw = static_cast<double>(top_k) * static_cast<double>(tokens) /
                     static_cast<double>(experts) * factor;
  // Guard against 2.0000000001-style rounding noise before the ceiling.
  const double rounded = std::round(raw);
  const int64_t cap = std::abs(raw - rounded) < 1e-9 ? static_cast<int64_t>(rounded)
                                                     : static_cast<int64_t>(std::ceil(raw));
  return std::max(min_capacity, cap);
}

int64_t routed_capacity(const torch::Tensor& expert_index, int64_t num_experts, int64_t top_k,
                        double factor, int64_t min_capacity, CapacityFormula formula) {
  TORCH_CHECK(factor != 0 && !std::isnan(factor),
              "routed_capacity: capacity_factor must be > 0 (fixed) or < 0 (dynamic), got ",
              factor);
  TORCH_CHECK(expert_index.dim() == 2, "routed_capacity: expert_index must be [T, k], got ",
              expert_index.sizes());
  const int64_t T = expert_index.size(0);
  if (factor > 0) return compute_capacity(T, num_experts, top_k, factor, min_capacity, formula);
  const int64_t bound = compute_capacity(T, num_experts, top_k, -factor, min_capacity, formula);
  // The largest count of routed choices (index num_experts: unrouted, its own bin, left out).
  auto counts = torch::bincount(expert_index.reshape({-1}).cpu(), {}, num_experts + 1);
  const int64_t largest =
      num_experts > 0 ? counts.narrow(0, 0, num_experts).max().item<int64_t>() : 0;
  return std::min(largest, bound);
}

namespace {

// Rank of each element of `sorted_experts` within its expert's run. sorted_experts: [n] int64
// sorted ascending → [n] int64 (0, 1, 2, ... restarting at each new expert).
torch::Tensor rank_within_runs(const torch::Tensor& sorted_experts, int64_t num_experts) {
  const auto n = sorted_experts.numel();
  auto counts = torch::bincount(sorted_experts, {}, num_experts);
  auto starts = counts.cumsum(0) - counts;  // [E] first row of each expert
  auto pos = torch::arange(n, sorted_experts.options());
  return pos - starts.index_select(0, sorted_experts);
}

// The slot key of every [T, k] choice, flattened row-major (i = t * k + j): a permutation of
// 0..T*k-1 giving the choice's place in the slot order.
torch::Tensor slot_keys(const torch::Tensor& weight, int64_t T, int64_t k, const SlotRules& rules) {
  auto opts = torch::TensorOptions().dtype(torch::kInt64).device(weight.device());
  // 1. The token order: token order, or by descending priority (ties: token order).
  auto tok_pos = torch::arange(T, opts);
  if (rules.token_priority.defined()) {
    TORCH_CHECK(rules.token_priority.dim() == 1 && rules.token_priority.size(0) == T,
                "capacity_slots: token_priority must be [T=", T, "], got ",
                rules.token_priority.sizes());
    auto by_priority = compat::stable_argsort(rules.token_priority.detach(), /*descending=*/true);
    tok_pos = torch::empty_like(tok_pos).index_put_({by_priority}, torch::arange(T, opts));
  }
  auto j = torch::arange(k, opts).unsqueeze(0);  // [1, k]
  auto t = tok_pos.unsqueeze(1);                 // [T, 1]
  if (rules.slot_order == SlotOrder::kTokenMajor) return (t * k + j).reshape({-1});
  auto first_key = (j * T + t).reshape({-1});  // first choices first
  if (rules.slot_order == SlotOrder::kFirstChoicesFirst) return first_key;
  // kByWeight: descending weight, ties in first-choices-first order.
  auto in_first_order =
      torch::empty_like(first_key).index_put_({first_key}, torch::arange(T * k, opts));
  auto w = weight.detach().reshape({-1}).index_select(0, in_first_order);
  auto seq = in_first_order.index_select(0, compat::stable_argsort(w, /*descending=*/true));
  return torch::empty_like(first_key).index_put_({seq}, torch::arange(T * k, opts));
}

// Rank of every element inside its expert's run when the elements are visited in `seq` (a
// permutation of 0..n-1) grouped by expert (stable); experts == num_experts form a run whose
// ranks are -1. → [n] int64 indexed like experts.
torch::Tensor ranks_in_order(const torch::Tensor& experts, const torch::Tensor& seq,
                             int64_t num_experts) {
  auto order = seq.index_select(0, compat::stable_argsort(experts.index_select(0, seq)));
  auto sorted_e = experts.index_select(0, order);
  auto rank = rank_within_runs(sorted_e, num_experts + 1);
  rank.masked_fill_(sorted_e == num_experts, -1);
  return torch::empty_like(rank).index_put_({order}, rank);
}

}  // namespace

std::tuple<torch::Tensor, torch::Tensor> capacity_slots(const torch::Tensor& expert_index,
                                                        const torch::Tensor& weight,
                                                        int64_t num_experts, int64_t capacity,
                                                        const SlotRules& rules) {
  TORCH_CHECK(expert_index.dim() == 2, "capacity_slots: expert_index must be [T, k], got ",
              expert_index.sizes());
  TORCH_CHECK(weight.sizes() == expert_index.sizes(),
              "capacity_slots: weight must match expert_index ", expert_index.sizes(), ", got ",
              weight.sizes());
  TORCH_CHECK(capacity >= 0, "capacity must be >= 0, got ", capacity);
  const auto T = expert_index.size(0), k = expert_index.size(1);
  auto flat_e = expert_index.reshape({-1});  // row-major: i = t * k + j
  // 1. The slot order, as the sequence of choices visited in it.
  auto key = slot_keys(weight, T, k, rules);
  auto by_key = torch::empty_like(key).index_put_({key}, torch::arange(T * k, key.options()));
  // 2. The drop order: the slot order (position) or descending weight, ties in slot order.
  auto drop_seq = by_key;
  if (rules.drop_policy == DropPolicy::kProbs) {
    auto w = weight.detach().reshape({-1}).index_select(0, by_key);
    drop_seq = by_key.index_select(0, compat::stable_argsort(w, /*descending=*/true));
  }
  auto drop_rank = ranks_in_order(flat_e, drop_seq, num_experts);
  auto keep = drop_rank.ge(0).logical_and(drop_rank.lt(capacity));
  // 3. Slots of the kept choices in slot order; a dropped choice keeps its drop rank.
  auto kept_e = torch::where(keep, flat_e, torch::full_like(flat_e, num_experts));
  auto slot = ranks_in_order(kept_e, by_key, num_experts);
  auto position = torch::where(keep, slot, drop_rank);
  return {keep.view({T, k}), position.view({T, k})};
}

std::tuple<torch::Tensor, torch::Tensor> capacity_slots(const torch::Tensor& expert_index,
                                                        const torch::Tensor& weight,
                                                        int64_t num_experts, int64_t capacity,
                                                        DropPolicy policy) {
  const SlotOrder order =
      policy == DropPolicy::kProbs ? SlotOrder::kByWeight : SlotOrder::kFirstChoicesFirst;
  return capacity_slots(expert_index, weight, num_experts, capacity, SlotRules{policy, order, {}});
}

torch::Tensor capacity_keep_mask(const torch::Tensor& expert_index, const torch::Tensor& weight,
                                 int64_t num_experts, int64_t capacity, DropPolicy policy) {
  return std::get<0>(capacity_slots(expert_index, weight, num_experts, capacity, policy));
}

void flatten_assignments(const torch::Tensor& expert_index, const torch::Tensor& weight,
                         const torch::Tensor& keep, RouterOutput& out,
                         const torch::Tensor& position, int64_t num_experts) {
  const auto T = expert_index.size(0), k = expert_index.size(1);
  auto tokens = torch::arange(T, expert_index.options()).unsqueeze(1).expand({T, k});
  {
    // Every choice, kept or dropped.
    torch::NoGradGuard no_grad;
    auto kept = keep.defined() ? keep.reshape({-1}).clone()
                               : torch::ones({T * k}, expert_index.options().dtype(torch::kBool));
    auto e = expert_index.reshape({-1}).clone();
    if (num_experts > 0) e.masked_fill_(e == num_experts, -1);
    out.choices.token = tokens.reshape({-1}).clone();
    out.choices.expert = e;
    out.choices.weight = weight.detach().reshape({-1}) * kept.to(weight.scalar_type());
    out.choices.slot = position.defined()
                           ? torch::where(kept, position.reshape({-1}), torch::full_like(e, -1))
                           : torch::full_like(e, -1);
    out.choices.kept = kept;
  }
  if (!keep.defined()) {
    out.token_index = tokens.reshape({-1});
    out.expert_index = expert_index.reshape({-1});
    out.weight = weight.reshape({-1});
    if (position.defined()) out.position = position.reshape({-1});
    out.dropped = 0;
    return;
  }
  auto flat_keep = keep.reshape({-1});
  out.token_index = tokens.reshape({-1}).masked_select(flat_keep);
  out.expert_index = expert_index.reshape({-1}).masked_select(flat_keep);
  out.weight = weight.reshape({-1}).masked_select(flat_keep);
  if (position.defined()) out.position = position.reshape({-1}).masked_select(flat_keep);
  out.dropped = T * k - out.token_index.numel();
}

RoutingTable choice_table(const RouterOutput& out) {
  if (out.choices.token.defined()) return out.choices;
  torch::NoGradGuard no_grad;
  RoutingTable t;
  t.token = out.token_index;
  t.expert = out.expert_index;
  t.weight = out.weight.detach();
  t.slot = out.position.defined() ? out.position : torch::full_like(out.token_index, -1);
  t.kept = torch::ones_like(out.token_index, out.token_index.options().dtype(torch::kBool));
  return t;
}

torch::Tensor router_z_loss(const torch::Tensor& logits) {
  if (logits.size(0) == 0) return torch::zeros({}, logits.options());
  auto lse = torch::logsumexp(logits, /*dim=*/-1);
  return (lse * lse).mean();
}

torch::Tensor load_balancing_loss(const torch::Tensor& probs, const torch::Tensor& choices) {
  const auto T = probs.size(0), E = probs.size(1);
  if (T == 0) return torch::zeros({}, probs.options());
  auto counts = torch::bincount(choices.reshape({-1}), {}, E).to(probs.scalar_type());
  auto f = counts / static_cast<double>(choices.numel());  // fraction of choices per expert
  auto p = probs.mean(0);                                  // mean probability per expert
  return static_cast<double>(E) * (f * p).sum();
}

void apply_z_loss(const torch::Tensor& logits, double coef, RouterOutput& out) {
  if (coef > 0) {
    auto z = router_z_loss(logits);
    out.loss_terms["z"] = z.item<double>();
    out.z_loss = z * coef;
  } else {
    out.z_loss = torch::zeros({}, logits.options());
  }
}

torch::Tensor cv_squared(const torch::Tensor& x) {
  if (x.numel() < 2) return torch::zeros({}, x.options());
  auto mean = x.mean();
  auto var = (x - mean).pow(2).mean();
  return var / (mean * mean + 1e-10);
}

double mean_entropy(const torch::Tensor& probs) {
  if (probs.numel() == 0) return 0.0;
  torch::NoGradGuard no_grad;
  auto p = probs.to(torch::kFloat64);
  return (-(p * p.clamp_min(1e-30).log()).sum(-1)).mean().item<double>();
}

}  // namespace hybridmoe
