// route_util.h — private helpers of the gates in src/router/: the capacity step and the
// balance-loss bookkeeping that most gates share.
#pragma once

#include "hybridmoe/gate.h"

namespace hybridmoe::detail {

/// Applies the active capacity (if any) to [T, k] choices and fills the assignment list.
/// expert_index: [T, k] int64 (num_experts = not routed); weight: [T, k];
/// k_for_capacity: the k of the capacity formula.
inline void capacity_and_flatten(const GateImpl& gate, const torch::Tensor& expert_index,
                                 const torch::Tensor& weight, int64_t k_for_capacity,
                                 RouterOutput& out) {
  const int64_t T = expert_index.size(0), E = gate.num_experts();
  const double factor = gate.active_capacity_factor();
  const auto routed = expert_index.lt(E);
  if (factor > 0) {
    out.capacity = compute_capacity(T, E, k_for_capacity, factor, gate.options().min_capacity());
    auto [keep, position] =
        capacity_slots(expert_index, weight, E, out.capacity, gate.options().drop_policy());
    flatten_assignments(expert_index, weight, keep, out, position);
    // Unrouted choices are not capacity drops.
    out.dropped = routed.sum().item<int64_t>() - out.token_index.numel();
  } else if (routed.all().item<bool>()) {
    flatten_assignments(expert_index, weight, torch::Tensor(), out);
  } else {
    flatten_assignments(expert_index, weight, routed, out);
    out.dropped = 0;
  }
}

/// Sets out.aux_loss = coef * balance and out.loss_terms[name] = balance. balance: [].
inline void set_balance_loss(const torch::Tensor& balance, double coef, const char* name,
                             RouterOutput& out) {
  out.loss_terms[name] = balance.item<double>();
  out.aux_loss = balance * coef;
}

}  // namespace hybridmoe::detail
