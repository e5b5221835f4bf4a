// moe.cpp — the single-process MoE layer: route → plan → permute → experts → unpermute/combine.
#include "hybridmoe/moe.h"

namespace hybridmoe {

MoEImpl::MoEImpl(MoEOptions options_) : options(std::move(options_)) {
  TORCH_CHECK(options.d_model() > 0, "MoE: d_model must be positive, got ", options.d_model());
  TORCH_CHECK(options.num_experts() > 0, "MoE: num_experts must be positive, got ",
              options.num_experts());
  TORCH_CHECK(options.d_hidden() >= 0, "MoE: d_hidden must be >= 0 (0 = 4 * d_model), got ",
              options.d_hidden());
  gate = register_module("gate", make_gate(options.d_model(), options.num_experts(), options.gate()));
  if (options.expert()) {
    experts = register_module("experts", ModuleExperts(options.num_experts(), options.expert()).ptr());
  } else {
    grouped = GroupedExperts(GroupedExpertsOptions(options.num_experts(), options.d_model(),
                                                   options.hidden())
                                 .activation(options.activation())
                                 .bias(options.bias()));
    experts = register_module("experts", grouped.ptr());
  }
}

torch::Tensor MoEImpl::flatten_input(const torch::Tensor& x) const {
  TORCH_CHECK(x.defined(), "MoE: the input is undefined");
  TORCH_CHECK(x.dim() == 2 || x.dim() == 3,
              "MoE: input must be [tokens, d_model] or [batch, seq, d_model], got ", x.sizes());
  TORCH_CHECK(x.size(-1) == options.d_model(), "MoE: input width must be d_model=",
              options.d_model(), ", got ", x.size(-1), " (shape ", x.sizes(), ")");
  TORCH_CHECK(torch::isFloatingType(x.scalar_type()),
              "MoE: input must be a floating-point tensor, got ", x.scalar_type());
  return x.reshape({-1, options.d_model()});
}

RoutingStats MoEImpl::make_stats(const RouterOutput& routing) const {
  RoutingStats stats;
  stats.tokens_per_expert = torch::bincount(routing.expert_index, {}, options.num_experts());
  stats.tokens_dropped = routing.dropped;
  stats.capacity = routing.capacity;
  stats.router_entropy = routing.probs.defined() ? mean_entropy(routing.probs) : 0.0;
  stats.loss_terms = routing.loss_terms;
  return stats;
}

MoEOutput MoEImpl::forward(const torch::Tensor& x) {
  auto tokens = flatten_input(x);
  // 1. Route: which experts, with which weights; capacity applied by the gate.
  RouterOutput routing = gate->route(tokens);
  // 2. Plan: per-expert counts and a stable expert-contiguous order.
  DispatchPlan plan = make_plan(routing, tokens.size(0), options.num_experts());
  // 3. Permute token rows into that order.
  auto rows = permute(tokens, plan);
  // 4. Experts on their segments (grouped GEMM).
  auto expert_out = experts->run(rows, plan.counts_host);
  // 5. Unpermute and combine with the router weights.
  auto out = unpermute(expert_out, plan);
  MoEOutput result;
  result.output = out.view(x.sizes());
  result.aux_loss = (routing.aux_loss + routing.z_loss).to(x.scalar_type());
  result.stats = make_stats(routing);
  result.stats.tokens_per_expert = plan.counts;
  return result;
}

MoEOutput MoEImpl::forward_reference(const torch::Tensor& x) {
  auto tokens = flatten_input(x);
  RouterOutput routing = gate->route(tokens);
  MoEOutput result;
  result.output = sequential_moe_reference(*experts, tokens, routing).view(x.sizes());
  result.aux_loss = (routing.aux_loss + routing.z_loss).to(x.scalar_type());
  result.stats = make_stats(routing);
  return result;
}

}  // namespace hybridmoe
