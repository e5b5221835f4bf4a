// moe.cpp — the MoE layer's forward, one flow for every layout: route → dispatch → experts →
// combine (the token dispatcher holds what differs between layouts, dispatcher.h); the grouped
// (GShard groups) single-process variant that distributed layouts are proved against, and the
// sequential reference.
#include "hybridmoe/moe.h"

#include "hybridmoe/collectives.h"
#include "hybridmoe/parallel.h"
#include "hybridmoe/testing/references.h"

namespace hybridmoe {

MoEImpl::MoEImpl(MoEOptions options_) : options(std::move(options_)) {
  place(/*stage_size=*/1, /*ep=*/1, /*etp=*/1);
  TORCH_CHECK(
      options.a2a_overlap_degree() == 1, "MoE: a2a_overlap_degree=", options.a2a_overlap_degree(),
      " overlaps the expert-parallel all-to-all, which a single-process layer does not have "
      "(use 1)");
  if (is_adaptive()) check_adaptive_r(options.adaptive_r());
  build(options.num_experts(), 0, options.hidden(), /*add_output_bias=*/true);
}

void MoEImpl::place(int64_t stage_size, int64_t ep, int64_t etp) {
  TORCH_CHECK(options.num_experts() > 0, "MoE: num_experts must be positive, got ",
              options.num_experts());
  placement_ =
      expert_placement(options.expert_layout(), stage_size, options.num_experts(), ep, etp);
}

void MoEImpl::build(int64_t local_experts, int64_t first_expert, int64_t hidden,
                    bool add_output_bias) {
  TORCH_CHECK(options.d_model() > 0, "MoE: d_model must be positive, got ", options.d_model());
  TORCH_CHECK(options.d_hidden() >= 0, "MoE: d_hidden must be >= 0 (0 = 4 * d_model), got ",
              options.d_hidden());
  gate =
      register_module("gate", make_gate(options.d_model(), options.num_experts(), options.gate()));
  if (options.expert()) {
    auto factory = options.expert();
    experts = register_module("experts", ModuleExperts(local_experts, [&](int64_t e) {
                                           return factory(first_expert + e);
                                         }).ptr());
  } else {
    grouped = GroupedExperts(GroupedExpertsOptions(local_experts, options.d_model(), hidden)
                                 .activation(options.activation())
                                 .bias(options.bias())
                                 .add_output_bias(add_output_bias));
    experts = register_module("experts", grouped.ptr());
  }
  build_shared_expert();
  // Adaptive-layout expert slices live on one rank each: no replicas to synchronize.
  if (is_adaptive()) experts->set_gradient_group(c10::nullopt);
  dispatcher_ =
      make_token_dispatcher(options, placement_, groups_, grouped ? grouped.ptr() : nullptr);
}

torch::Tensor MoEImpl::flatten_input(const torch::Tensor& x) const {
  TORCH_CHECK(x.defined(), "MoE: the input is undefined");
  TORCH_CHECK(x.dim() == 2 || x.dim() == 3,
              "MoE: input must be [tokens, d_model] or [batch, seq, d_model], got ", x.sizes());
  TORCH_CHECK(x.size(-1) == options.d_model(),
              "MoE: input width must be d_model=", options.d_model(), ", got ", x.size(-1),
              " (shape ", x.sizes(), ")");
  TORCH_CHECK(torch::isFloatingType(x.scalar_type()),
              "MoE: input must be a floating-point tensor, got ", x.scalar_type());
  return x.reshape({-1, options.d_model()});
}

RoutingStats MoEImpl::make_stats(const RouterOutput& routing, const torch::Tensor& counts) const {
  RoutingStats stats;
  stats.tokens_per_expert =
      counts.defined() ? counts : torch::bincount(routing.expert_index, {}, options.num_experts());
  stats.tokens_dropped = routing.dropped;
  stats.capacity = routing.capacity;
  stats.router_entropy = routing.probs.defined() ? mean_entropy(routing.probs) : 0.0;
  stats.loss_terms = routing.loss_terms;
  stats.choices = choice_table(routing);
  return stats;
}

MoEOutput MoEImpl::finish(const torch::Tensor& out, const torch::Tensor& x,
                          const RouterOutput& routing, double aux_scale,
                          const torch::Tensor& counts) {
  MoEOutput result;
  // The routed output plus, with a shared expert, its output on every token.
  result.output = shared_expert ? (out + shared_output(x.reshape(out.sizes()))).view(x.sizes())
                                : out.view(x.sizes());
  result.aux_loss = ((routing.aux_loss + routing.z_loss) * aux_scale).to(x.scalar_type());
  result.stats = make_stats(routing, counts);
  return result;
}

void MoEImpl::build_shared_expert() {
  const int64_t h = options.shared_expert_hidden();
  TORCH_CHECK(h >= 0, "MoE: shared_expert_hidden must be >= 0, got ", h);
  TORCH_CHECK(!options.shared_expert_gate() || h > 0,
              "MoE: shared_expert_gate needs shared_expert_hidden > 0");
  if (h == 0) return;
  // Split over the stage's tp group like the dense MLP (Megatron column/row): tp rank r holds
  // hidden [r * h / tp, (r + 1) * h / tp) and tp rank 0 the output bias.
  if (groups_) {
    shared_tp_ = groups_->tp.size();
    shared_tp_rank_ = groups_->tp.rank;
  }
  TORCH_CHECK(h % shared_tp_ == 0, "MoE: shared_expert_hidden=", h,
              " must be divisible by tp=", shared_tp_,
              " (the shared expert's hidden width is split over tp)");
  shared_expert = register_module(
      "shared_expert", GroupedExperts(GroupedExpertsOptions(1, options.d_model(), h / shared_tp_)
                                          .activation(options.activation())
                                          .bias(options.bias())
                                          .add_output_bias(shared_tp_rank_ == 0)));
  shared_expert->set_gradient_group(GroupKind::kDp);
  if (shared_tp_ > 1) {
    // Every parameter this rank holds is its own part (b2 lives on tp rank 0 only).
    std::vector<std::string> split;
    for (const auto& kv : shared_expert->named_parameters(/*recurse=*/false))
      split.push_back(kv.key());
    shared_expert->set_tp_shard_names(split);
  }
  // The gate is whole on every rank (the stage's tp ranks compute it on the same tokens).
  if (options.shared_expert_gate())
    shared_gate =
        register_parameter("shared_expert_gate", torch::randn({1, options.d_model()}) * 0.02);
}

int64_t MoEImpl::stage_rank() const {
  return groups_ ? groups_->stage.rank : 0;
}

torch::Tensor MoEImpl::shared_output(const torch::Tensor& tokens) {
  if (!shared_expert) return torch::Tensor();
  // Megatron's f and g around this rank's hidden slice: the input's gradient is summed over tp
  // in backward, the partial outputs in forward.
  const bool split = shared_tp_ > 1;
  auto in = split ? dist::copy_to_group(tokens, groups_->tp) : tokens;
  auto y = shared_expert->run(in, {tokens.size(0)});
  if (split) y = dist::all_reduce_sum(y, groups_->tp);
  if (shared_gate.defined()) y = y * torch::sigmoid(torch::mm(tokens, shared_gate.t()));  // [T, 1]
  return y;
}

MoEOutput MoEImpl::forward(const torch::Tensor& x) {
  return forward_with(x, MoECallOptions());
}

MoEOutput MoEImpl::forward_with(const torch::Tensor& x, const MoECallOptions& call_options) {
  MoECallOptions call = call_options;
  if (call.adaptive_r()) {
    TORCH_CHECK(is_adaptive(), "MoE: a per-call adaptive_r=", *call.adaptive_r(),
                " needs expert_layout=\"adaptive\", got \"", to_string(options.expert_layout()),
                "\"");
    check_adaptive_r(*call.adaptive_r());
  } else {
    call.adaptive_r(options.adaptive_r());
  }
  auto tokens = flatten_input(x);
  // This rank's block of the tokens (the slice group's share when they are replicated over tp).
  auto mine = dispatcher_->local_tokens(tokens);
  // 1. Route: which experts, with which weights; capacity applied by the gate.
  RouterOutput routing = gate->route(mine);
  // 2. Dispatch: the rows of this rank's experts, expert-major (exchanged between ranks when
  //    the layout places experts elsewhere).
  DispatchedRows d = dispatcher_->dispatch(mine, routing, call);
  // 3. Experts on their segments (grouped GEMM).
  auto y = dispatcher_->run_experts(d, *experts);
  // 4. Combine: back to token order, weighted by the router, re-assembled over the slices.
  auto out = dispatcher_->combine(y, d);
  auto result = finish(out, x, routing, dispatcher_->aux_scale(), d.routed_per_expert);
  result.stats.expert_rows = d.computed_rows >= 0 ? d.computed_rows : d.rows.size(0);
  result.stats.replicated = std::move(d.replicated);
  return result;
}

MoEOutput MoEImpl::forward_grouped(const torch::Tensor& x,
                                   const std::vector<int64_t>& group_sizes) {
  TORCH_CHECK(!groups_,
              "MoE: forward_grouped is the single-process reference; this layer is "
              "distributed");
  auto tokens = flatten_input(x);
  int64_t total = 0;
  for (auto n : group_sizes) {
    TORCH_CHECK(n >= 0, "MoE: group sizes must be >= 0, got ", n);
    total += n;
  }
  TORCH_CHECK(!group_sizes.empty() && total == tokens.size(0), "MoE: group sizes sum to ", total,
              " but there are ", tokens.size(0), " tokens");
  // 1. Route every group on its own (capacity and balance loss per group).
  RouterOutput routing;
  std::vector<torch::Tensor> tok, exp, w, probs;
  std::vector<RoutingTable> tables;
  torch::Tensor aux;
  int64_t offset = 0;
  for (auto n : group_sizes) {
    RouterOutput r = gate->route(tokens.narrow(0, offset, n));
    tok.push_back(r.token_index + offset);
    exp.push_back(r.expert_index);
    w.push_back(r.weight);
    probs.push_back(r.probs);
    tables.push_back(choice_table(r));
    tables.back().token = tables.back().token + offset;
    auto a = r.aux_loss + r.z_loss;
    aux = aux.defined() ? aux + a : a;
    routing.dropped += r.dropped;
    routing.capacity = std::max(routing.capacity, r.capacity);
    for (const auto& kv : r.loss_terms)
      routing.loss_terms[kv.first] += kv.second / static_cast<double>(group_sizes.size());
    offset += n;
  }
  routing.token_index = torch::cat(tok);
  routing.expert_index = torch::cat(exp);
  routing.weight = torch::cat(w);
  routing.probs = torch::cat(probs);
  auto cat_field = [&](torch::Tensor RoutingTable::*field) {
    std::vector<torch::Tensor> parts;
    for (const auto& t : tables) parts.push_back(t.*field);
    return torch::cat(parts);
  };
  for (auto field : {&RoutingTable::token, &RoutingTable::expert, &RoutingTable::weight,
                     &RoutingTable::slot, &RoutingTable::kept})
    routing.choices.*field = cat_field(field);
  routing.aux_loss = aux / static_cast<double>(group_sizes.size());
  routing.z_loss = torch::zeros_like(routing.aux_loss);
  // 2. The rest is the ordinary single-process flow.
  DispatchedRows d = dispatcher_->dispatch(tokens, routing, MoECallOptions());
  auto y = dispatcher_->run_experts(d, *experts);
  return finish(dispatcher_->combine(y, d), x, routing, 1.0, d.routed_per_expert);
}

MoEOutput MoEImpl::forward_reference(const torch::Tensor& x) {
  TORCH_CHECK(!groups_, "MoE: forward_reference runs on one process; this layer is distributed");
  auto tokens = flatten_input(x);
  RouterOutput routing = gate->route(tokens);
  return finish(sequential_moe_reference(*experts, tokens, routing), x, routing, 1.0, {});
}

}  // namespace hybridmoe
