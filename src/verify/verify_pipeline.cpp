// verify_pipeline.cpp — see verify.h: the layout proof on a small GPT trained through the
// pipeline schedule. The reference is one process running each micro-batch of the global batch
// with the layout's GShard groups (moe_group_sizes), its losses scaled by 1 / micro-batches.
#include <algorithm>

#include "hybridmoe/grouped_dp.h"
#include "hybridmoe/model.h"
#include "hybridmoe/verify.h"
#include "hybridmoe/zero.h"
#include "verify_util.h"

namespace hybridmoe {

namespace {

constexpr int64_t kVocab = 32;

// Tokens of one micro-batch of the global batch, the same on every rank: [rows, S] in [0, 32).
torch::Tensor random_tokens(uint64_t seed, int64_t rows, int64_t S) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randint(kVocab, {rows, S}, gen, torch::kInt64);
}

// A family's model at verify size: its architecture and router (k and capacity from the gate
// spec), kVerifyFamilyHeads heads, 2 blocks per stage, the verify's experts and widths.
GPTOptions verify_family_options(ModelFamily family, const ParallelConfig& layout,
                                 const GateSpec& gate, const VerifyOptions& o) {
  TORCH_CHECK(gate.name == "topk" && gate.convention == Convention::kNone, "verify --model ",
              to_string(family),
              ": the family's router is verified; a gate spec may only set k and the capacity "
              "factor (topk[:k][@factor]), got \"",
              gate.to_string(), "\"");
  auto opts = model_preset(family);
  auto g = opts.gate();
  g.top_k(gate.top_k > 0 ? gate.top_k : g.top_k()).capacity_factor(gate.capacity_factor);
  opts.vocab_size(kVocab)
      .context(o.tokens_per_rank)
      .n_heads(kVerifyFamilyHeads)
      .n_layers(2 * layout.pp)
      .d_mlp(2 * opts.d_model())
      .num_experts(o.experts)
      .expert_hidden(o.d_hidden)
      .gate(g);
  if (opts.shared_expert_hidden() > 0) opts.shared_expert_hidden(o.d_hidden);
  return opts;
}

GPTOptions verify_gpt_options(const ParallelConfig& layout, const GateSpec& gate,
                              const VerifyOptions& o) {
  if (o.model) return verify_family_options(*o.model, layout, gate, o);
  GateOptions g;
  g.type(gate.name)
      .convention(gate.convention)
      .top_k(gate.top_k > 0 ? gate.top_k : o.top_k)
      .capacity_factor(gate.capacity_factor)
      .z_loss_coef(1e-3);
  return GPTOptions()
      .vocab_size(kVocab)
      .context(o.tokens_per_rank)
      .d_model(o.d_model)
      .n_heads(kVerifyHeads)
      .n_layers(2 * layout.pp)
      .d_mlp(2 * o.d_model)
      .moe_every(2)
      .num_experts(o.experts)
      .expert_hidden(o.d_hidden)
      .gate(g);
}

}  // namespace

VerifyRow verify_gpt_layout(dist::World& world, const ParallelConfig& layout, const GateSpec& gate,
                            const VerifyOptions& o, int64_t run_id) {
  VerifyRow row;
  row.layout = layout;
  row.gate = gate.to_string();
  row.replicate = to_string(o.replicate);
  row.replicate_placement = to_string(o.replicate.placement());
  row.model = o.model ? to_string(*o.model) : "gpt";
  if (o.recompute != Recompute::kNone)
    row.model += std::string("+recompute_") + recompute_name(o.recompute);
  row.schedule = layout.pp > 1 ? to_string(o.schedule) : "";
  if (!o.model) {
    TORCH_CHECK(kVerifyHeads % layout.tp == 0, "verify: the GPT of pipeline layouts has ",
                kVerifyHeads, " heads, which tp=", layout.tp, " does not divide");
    TORCH_CHECK(o.d_model % kVerifyHeads == 0, "verify: d_model=", o.d_model,
                " must be divisible by the GPT's ", kVerifyHeads, " heads");
  }
  auto groups = detail::verify_groups(world, layout, run_id, o.ranks_per_node);
  if (!groups) return row;
  row.a2a_algorithm = detail::verify_a2a_algorithm(o, *groups);
  const double tol = detail::verify_tolerance(o);
  const int64_t M = o.micro_batches > 0 ? o.micro_batches : layout.pp + 1;
  row.micro_batches = M;

  // 1. The reference and the layout's model from the same initial weights.
  const auto opts = verify_gpt_options(layout, gate, o);
  torch::manual_seed(o.seed);
  GPT ref(opts);
  ref->to(o.dtype);
  // The reference replicates nothing and exchanges nothing.
  GPT net(GPTOptions(opts).replicate(o.replicate).a2a_algorithm(o.a2a_algorithm), groups);
  net->to(o.dtype);
  net->load_shard_from(*ref);
  net->set_recompute(o.recompute);
  torch::optim::Adam ref_opt(ref->parameters(), torch::optim::AdamOptions(o.lr));
  detail::VerifyOptimizer opt(net.ptr(), groups, o);
  row.zero_stage = o.zero_stage;

  // One sequence of S tokens per data-parallel rank and micro-batch.
  const auto coords = groups->coords();
  const int64_t dp = layout.dp, tp = layout.tp, S = o.tokens_per_rank;
  const auto group_sizes = moe_group_sizes(layout, S);
  PipelineOptions po;
  po.micro_batches = M;
  po.schedule = o.schedule;
  po.activation_sizes = {1, S, opts.d_model()};
  po.activation_options = torch::TensorOptions().dtype(o.dtype);

  // 2. S optimizer steps of both, comparing the global loss at each.
  for (int64_t step = 0; step < o.steps; ++step) {
    std::vector<torch::Tensor> tokens, targets;
    for (int64_t m = 0; m < M; ++m) {
      const uint64_t seed = o.seed * 1000 + static_cast<uint64_t>(step * M + m) * 2;
      tokens.push_back(random_tokens(seed, dp, S));
      targets.push_back(random_tokens(seed + 1, dp, S));
    }
    // The reference: every micro-batch of the global batch, gradients accumulated.
    ref_opt.zero_grad();
    double ref_loss = 0.0;
    for (int64_t m = 0; m < M; ++m) {
      auto r = ref->forward(tokens[m], group_sizes);
      auto loss = (lm_loss(r.logits, targets[m]) + r.aux_loss) / static_cast<double>(M);
      loss.backward();
      ref_loss += loss.item<double>();
    }
    ref_opt.step();
    // The layout: this dp rank's row of every micro-batch through the stages.
    opt.zero_grad();
    double share = 0.0;
    run_pipeline(groups->pp, po, [&](int64_t m, const torch::Tensor& input) {
      auto r = net->forward_stage(input.defined() ? input : tokens[m].narrow(0, coords.dp, 1));
      StageForward f;
      f.output = r.output;
      f.loss = r.aux_loss / static_cast<double>(M);
      share += r.aux_loss.item<double>() / static_cast<double>(dp * M);
      if (net->is_last_stage()) {
        auto ce = lm_loss(r.output, targets[m].narrow(0, coords.dp, 1));
        f.loss = f.loss + ce / static_cast<double>(M);
        share += ce.item<double>() / static_cast<double>(tp * dp * M);
      }
      return f;
    });
    net->reduce_tied_gradients();
    opt.step(dp);
    // The gates' per-step updates (the loss-free balancing bias) of both.
    ref->after_step();
    net->after_step();
    const double loss = dist::sum_over_ranks(share, groups->world);
    row.loss_rel_err =
        std::max(row.loss_rel_err, std::abs(loss - ref_loss) / std::max(std::abs(ref_loss), 1e-30));
  }

  // 3. Every parameter after the last step, gathered back into a one-process model.
  GPT full(opts);
  full->to(o.dtype);
  net->gather_full(*full);
  double err = 0.0;
  auto ref_params = ref->named_parameters();
  for (auto& kv : full->named_parameters())
    err = std::max(err, relative_error(kv.value(), ref_params[kv.key()]));
  row.param_rel_err = dist::max_over_ranks(err, groups->world);
  row.loss_rel_err = dist::max_over_ranks(row.loss_rel_err, groups->world);
  row.pass = row.loss_rel_err <= tol && row.param_rel_err <= tol;
  return row;
}

}  // namespace hybridmoe
