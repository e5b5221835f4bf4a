// common.cpp — building blocks shared by the gates: capacity, drop masks, assignment lists,
// balance and z losses, entropy. Nothing here allocates [tokens, experts, capacity] tensors.
#include <cmath>

#include "hybridmoe/compat.h"
#include "hybridmoe/gate.h"

namespace hybridmoe {

torch::ScalarType router_dtype(torch::ScalarType x_dtype) {
  return x_dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

int64_t compute_capacity(int64_t tokens, int64_t experts, int64_t top_k, double factor,
                         int64_t min_capacity) {
  TORCH_CHECK(factor > 0, "capacity_factor must be > 0 when a capacity is used, got ", factor);
  TORCH_CHECK(experts > 0, "compute_capacity: experts must be positive, got ", experts);
  // Exact integer-friendly form of ceil(top_k * tokens / experts * factor).
  const double raw = static_cast<double>(top_k) * static_cast<double>(tokens) /
                     static_cast<double>(experts) * factor;
  // Guard against 2.0000000001-style rounding noise before the ceiling.
  const double rounded = std::round(raw);
  const int64_t cap = std::abs(raw - rounded) < 1e-9 ? static_cast<int64_t>(rounded)
                                                     : static_cast<int64_t>(std::ceil(raw));
  return std::max(min_capacity, cap);
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

}  // namespace

std::tuple<torch::Tensor, torch::Tensor> capacity_slots(const torch::Tensor& expert_index,
                                                        const torch::Tensor& weight,
                                                        int64_t num_experts, int64_t capacity,
                                                        DropPolicy policy) {
  TORCH_CHECK(expert_index.dim() == 2, "capacity_slots: expert_index must be [T, k], got ",
              expert_index.sizes());
  TORCH_CHECK(weight.sizes() == expert_index.sizes(),
              "capacity_slots: weight must match expert_index ", expert_index.sizes(), ", got ",
              weight.sizes());
  TORCH_CHECK(capacity >= 0, "capacity must be >= 0, got ", capacity);
  const auto T = expert_index.size(0), k = expert_index.size(1);
  // 1. Priority order: k-slot major, then token (all first choices before any second choice).
  auto flat_e = expert_index.t().reshape({-1});
  auto flat_w = weight.detach().t().reshape({-1});
  // 2. Sort into expert runs; inside a run, by priority (position) or by weight (probs).
  //    Index num_experts (unrouted choices) forms a last run that is discarded.
  torch::Tensor order;
  if (policy == DropPolicy::kPosition) {
    order = compat::stable_argsort(flat_e);
  } else {
    auto by_weight = compat::stable_argsort(flat_w, /*descending=*/true);
    auto e_by_weight = flat_e.index_select(0, by_weight);
    order = by_weight.index_select(0, compat::stable_argsort(e_by_weight));
  }
  // 3. Rank inside each run = slot; keep the first `capacity`; scatter back to priority order.
  auto sorted_e = flat_e.index_select(0, order);
  auto rank = rank_within_runs(sorted_e, num_experts + 1);
  rank.masked_fill_(sorted_e == num_experts, -1);
  auto pos_flat = torch::empty({k * T}, expert_index.options());
  pos_flat.index_put_({order}, rank);
  auto position = pos_flat.view({k, T}).t().contiguous();
  auto keep = position.ge(0).logical_and(position.lt(capacity));
  return {keep, position};
}

torch::Tensor capacity_keep_mask(const torch::Tensor& expert_index, const torch::Tensor& weight,
                                 int64_t num_experts, int64_t capacity, DropPolicy policy) {
  return std::get<0>(capacity_slots(expert_index, weight, num_experts, capacity, policy));
}

void flatten_assignments(const torch::Tensor& expert_index, const torch::Tensor& weight,
                         const torch::Tensor& keep, RouterOutput& out,
                         const torch::Tensor& position) {
  const auto T = expert_index.size(0), k = expert_index.size(1);
  auto tokens = torch::arange(T, expert_index.options()).unsqueeze(1).expand({T, k});
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
