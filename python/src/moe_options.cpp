// moe_options.cpp — MoEOptions from hybridmoe.MoE's keyword arguments, by the C++ names (the
// layer's own options and every GateOptions field; `gate` is the gate's type).
#include <string>

#include "bindings.h"
#include "hybridmoe/experts.h"
#include "hybridmoe/gate.h"
#include "hybridmoe/placement.h"
#include "hybridmoe/replicate.h"
#include "hybridmoe/routing_rules.h"

namespace hybridmoe::python {

MoEOptions options_from(const py::dict& kw) {
  TORCH_CHECK(kw.contains("d_model") && kw.contains("num_experts"),
              "MoE: d_model and num_experts are required");
  MoEOptions o(py::cast<int64_t>(kw["d_model"]), py::cast<int64_t>(kw["num_experts"]));
  GateOptions& g = o.gate();
  // Applied after the loop: `replicate` sets the whole ReplicateOptions.
  c10::optional<ReplicatePlacement> placement;
  for (const auto& item : kw) {
    const auto k = py::cast<std::string>(item.first);
    const py::handle v = item.second;
    if (v.is_none() || k == "d_model" || k == "num_experts") continue;
    auto i64 = [&] { return py::cast<int64_t>(v); };
    auto f64 = [&] { return py::cast<double>(v); };
    auto flag = [&] { return py::cast<bool>(v); };
    auto str = [&] { return py::cast<std::string>(v); };
    // The layer's own options.
    if (k == "d_hidden")
      o.d_hidden(i64());
    else if (k == "activation")
      o.activation(parse_activation(str()));
    else if (k == "bias")
      o.bias(flag());
    else if (k == "shared_expert_hidden")
      o.shared_expert_hidden(i64());
    else if (k == "shared_expert_gate")
      o.shared_expert_gate(flag());
    else if (k == "expert_layout")
      o.expert_layout(parse_expert_layout(str()));
    else if (k == "adaptive_r")
      o.adaptive_r(i64());
    else if (k == "a2a_overlap_degree")
      o.a2a_overlap_degree(i64());
    else if (k == "a2a_algorithm")  // "flat" or "hierarchical"
      o.a2a_algorithm(parse_a2a_algorithm(str()));
    else if (k == "replicate")  // "off", "auto", or N (an int or its text)
      o.replicate(parse_replicate(py::isinstance<py::int_>(v) ? std::to_string(i64()) : str()));
    else if (k == "replicate_placement")  // "source" or "spread"
      placement = parse_replicate_placement(str());
    // The gate's (GateOptions, same names; `gate` is its type).
    else if (k == "gate")
      g.type(str());
    else if (k == "top_k")
      g.top_k(i64());
    else if (k == "capacity_factor")
      g.capacity_factor(f64());
    else if (k == "eval_capacity_factor")
      g.eval_capacity_factor(f64());
    else if (k == "min_capacity")
      g.min_capacity(i64());
    else if (k == "convention")
      g.convention(parse_convention(str()));
    else if (k == "drop_policy")
      g.drop_policy(parse_drop_policy(str()));
    else if (k == "slot_order")
      g.slot_order(parse_slot_order(str()));
    else if (k == "weight_normalization")
      g.weight_normalization(parse_weight_normalization(str()));
    else if (k == "capacity_formula")
      g.capacity_formula(parse_capacity_formula(str()));
    else if (k == "balance_loss_choices")
      g.balance_loss_choices(parse_balance_loss_choices(str()));
    else if (k == "batch_prioritized")
      g.batch_prioritized(flag());
    else if (k == "normalize_top_k_weights")
      g.normalize_top_k_weights(flag());
    else if (k == "aux_loss_coef")
      g.aux_loss_coef(f64());
    else if (k == "z_loss_coef")
      g.z_loss_coef(f64());
    else if (k == "seed")
      g.seed(i64());
    else if (k == "softmax_over_topk")
      g.softmax_over_topk(flag());
    else if (k == "bias_update_rate")
      g.bias_update_rate(f64());
    else if (k == "score_function")
      g.score_function(parse_score_function(str()));
    else if (k == "selection_bias")
      g.selection_bias(flag());
    else if (k == "n_group")
      g.n_group(i64());
    else if (k == "topk_group")
      g.topk_group(i64());
    else if (k == "routed_scaling_factor")
      g.routed_scaling_factor(f64());
    else if (k == "gumbel_second_expert")
      g.gumbel_second_expert(flag());
    else if (k == "random_routing")
      g.random_routing(flag());
    else if (k == "jitter_eps")
      g.jitter_eps(f64());
    else if (k == "random_token_selection")
      g.random_token_selection(flag());
    else if (k == "cosine_projection_dim")
      g.cosine_projection_dim(i64());
    else if (k == "cosine_init_temperature")
      g.cosine_init_temperature(f64());
    else if (k == "noise_epsilon")
      g.noise_epsilon(f64());
    else if (k == "sinkhorn_tolerance")
      g.sinkhorn_tolerance(f64());
    else if (k == "sinkhorn_max_iterations")
      g.sinkhorn_max_iterations(i64());
    else
      TORCH_CHECK(false, "MoE: unknown option \"", k, "\"");
  }
  if (placement) o.replicate().placement(*placement);
  return o;
}

}  // namespace hybridmoe::python
