// verify.cpp — see verify.h. The model: y = fc_out(h + MoE(h)), h = tanh(fc_in(x)); loss = mean
// squared error + the MoE auxiliary loss; Adam. The reference routes each rank's slice as its own
// GShard group (MoEImpl::forward_grouped), which is what the layout computes.
#include "hybridmoe/verify.h"

#include <algorithm>
#include <sstream>

#include "hybridmoe/collectives.h"
#include "hybridmoe/grouped_dp.h"
#include "hybridmoe/moe.h"
#include "hybridmoe/zero.h"
#include "verify_util.h"

namespace hybridmoe {

double relative_error(const torch::Tensor& a, const torch::Tensor& b) {
  auto a64 = a.detach().to(torch::kFloat64), b64 = b.detach().to(torch::kFloat64);
  if (b64.numel() == 0) return a64.numel() == 0 ? 0.0 : 1.0;
  const double scale = std::max(b64.abs().max().item<double>(), 1e-30);
  return (a64 - b64).abs().max().item<double>() / scale;
}

std::string GateSpec::to_string() const {
  std::ostringstream s;
  s << name;
  if (convention != Convention::kNone) s << "+" << hybridmoe::to_string(convention);
  if (top_k > 0) s << ":" << top_k;
  if (capacity_factor != 0) s << "@" << capacity_factor;
  return s.str();
}

GateSpec GateSpec::parse(const std::string& text) {
  GateSpec spec;
  const auto at = text.find('@');
  const auto head = text.substr(0, at);
  const auto colon = head.find(':');
  spec.name = head.substr(0, colon);
  TORCH_CHECK(!spec.name.empty(),
              "gate spec: expected name[+convention][:k][@capacity_factor], got \"", text, "\"");
  // "gate+convention", or a bare convention name that is not a gate name (topk gate).
  const auto plus = spec.name.find('+');
  if (plus != std::string::npos) {
    spec.convention = parse_convention(spec.name.substr(plus + 1));
    spec.name = spec.name.substr(0, plus);
    TORCH_CHECK(!spec.name.empty() && spec.convention != Convention::kNone,
                "gate spec: expected gate+convention in \"", text, "\"");
  } else {
    const auto gates = known_gate_names();
    const bool is_gate = std::find(gates.begin(), gates.end(), spec.name) != gates.end();
    for (const auto& c : known_convention_names())
      if (!is_gate && spec.name == c) {
        spec.convention = parse_convention(c);
        spec.name = "topk";
      }
  }
  if (colon != std::string::npos) {
    const std::string k_text = head.substr(colon + 1);
    size_t used = 0;
    try {
      spec.top_k = std::stoll(k_text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    TORCH_CHECK(!k_text.empty() && used == k_text.size(), "gate spec: the k of \"", text,
                "\" is not an integer (expected name[+convention][:k][@capacity_factor])");
    TORCH_CHECK(spec.top_k >= 1, "gate spec: k must be >= 1 in \"", text, "\"");
  }
  if (at != std::string::npos) {
    const std::string f_text = text.substr(at + 1);
    size_t used = 0;
    try {
      spec.capacity_factor = std::stod(f_text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    TORCH_CHECK(!f_text.empty() && used == f_text.size(), "gate spec: the capacity factor of \"",
                text, "\" is not a number");
    TORCH_CHECK(spec.capacity_factor != 0,
                "gate spec: capacity factor must be > 0 (fixed) or < 0 "
                "(dynamic: Tutel's largest per-expert count, bounded) in \"",
                text, "\"");
  }
  return spec;
}

std::vector<int64_t> adaptive_r_values(const ParallelConfig& layout, int64_t experts,
                                       int64_t d_hidden) {
  if (layout.pp != 1) return {};
  const auto p = expert_placement(ExpertLayout::kAdaptive, layout.stage_size(), experts, layout.ep,
                                  layout.etp);
  if (!p.fits() || !p.check_hidden(d_hidden).empty()) return {};
  return p.valid_r;
}

std::vector<ParallelConfig> verifiable_layouts(int64_t world_size, int64_t experts,
                                               int64_t d_hidden) {
  std::vector<ParallelConfig> out;
  for (const auto& c : valid_parallel_configs(world_size))
    if (experts % c.ep == 0 && d_hidden % c.etp == 0 && (c.pp == 1 || kVerifyHeads % c.tp == 0))
      out.push_back(c);
  return out;
}

namespace {

struct VerifyNetImpl : torch::nn::Module {
  VerifyNetImpl(const MoEOptions& mo, std::shared_ptr<const ParallelGroups> groups) {
    const int64_t d = mo.d_model();
    fc_in = register_module("fc_in", torch::nn::Linear(d, d));
    moe = groups ? MoE(mo, groups) : MoE(mo);
    register_module("moe", moe);
    fc_out = register_module("fc_out", torch::nn::Linear(d, d));
  }
  // x: [T, d] → (y [T, d], aux []). group_sizes: the reference's GShard groups.
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& x,
                                                  const std::vector<int64_t>& group_sizes = {}) {
    auto h = torch::tanh(fc_in(x));
    auto o = group_sizes.empty() ? moe(h) : moe->forward_grouped(h, group_sizes);
    return {fc_out(h + o.output), o.aux_loss};
  }
  torch::nn::Linear fc_in{nullptr}, fc_out{nullptr};
  MoE moe{nullptr};
};
TORCH_MODULE(VerifyNet);

// The step's global batch, the same on every rank. → (x [N, d], target [N, d]).
std::pair<torch::Tensor, torch::Tensor> batch(const VerifyOptions& o, int64_t n, int64_t step) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(o.seed * 1000 + step);
  auto x = torch::randn({n, o.d_model}, gen, torch::dtype(o.dtype));
  auto t = torch::randn({n, o.d_model}, gen, torch::dtype(o.dtype));
  return {x, t};
}

}  // namespace

VerifyRow verify_layout(dist::World& world, const ParallelConfig& layout, const GateSpec& gate,
                        const VerifyOptions& o, int64_t run_id) {
  if (layout.pp > 1 || o.model || o.recompute != Recompute::kNone)
    return verify_gpt_layout(world, layout, gate, o, run_id);
  VerifyRow row;
  row.replicate = to_string(o.replicate);
  row.replicate_placement = to_string(o.replicate.placement());
  row.layout = layout;
  row.gate = gate.to_string();
  row.expert_layout = o.expert_layout;
  row.adaptive_r = o.adaptive_r;
  auto groups = detail::verify_groups(world, layout, run_id, o.ranks_per_node);
  if (!groups) return row;
  row.a2a_algorithm = detail::verify_a2a_algorithm(o, *groups);
  const double tol = detail::verify_tolerance(o);

  // 1. The reference and the layout's model, from the same initial weights.
  auto mo = MoEOptions(o.d_model, o.experts)
                .d_hidden(o.d_hidden)
                .top_k(gate.top_k > 0 ? gate.top_k : o.top_k)
                .gate_type(gate.name)
                .convention(gate.convention)
                .capacity_factor(gate.capacity_factor);
  torch::manual_seed(o.seed);
  // The adaptive expert layout (if asked): the reference keeps the single-process experts.
  const auto ref_mo = mo;
  const auto degrees = adaptive_r_values(layout, o.experts, o.d_hidden);
  const bool every_step = o.adaptive_r.kind() == AdaptiveR::Kind::kEveryStep;
  if (o.expert_layout == ExpertLayout::kAdaptive) {
    TORCH_CHECK(!degrees.empty(), "verify: layout ", layout.to_string(), " with ", o.experts,
                " experts of width ", o.d_hidden, " has no adaptive expert layout");
    TORCH_CHECK(o.adaptive_r.is_value() || every_step,
                "verify: adaptive_r must be one r or every-step, got ", o.adaptive_r.to_string());
    mo.expert_layout(ExpertLayout::kAdaptive)
        .adaptive_r(every_step ? degrees[0] : o.adaptive_r.value());
  }
  mo.replicate(o.replicate).a2a_algorithm(o.a2a_algorithm);
  VerifyNet ref(ref_mo, nullptr);
  ref->to(o.dtype);
  VerifyNet net(mo, groups);
  net->to(o.dtype);
  {
    torch::NoGradGuard ng;
    for (auto* name : {"fc_in", "fc_out"}) {
      auto src = ref->named_children()[name]->named_parameters();
      for (auto& kv : net->named_children()[name]->named_parameters())
        kv.value().copy_(src[kv.key()]);
    }
    net->moe->load_shard_from(*ref->moe);
  }
  torch::optim::Adam ref_opt(ref->parameters(), torch::optim::AdamOptions(o.lr));
  detail::VerifyOptimizer opt(net.ptr(), groups, o);
  row.zero_stage = o.zero_stage;

  const auto coords = groups->coords();
  const int64_t tp = layout.tp, dp = layout.dp, B = o.tokens_per_rank;
  std::vector<int64_t> group_sizes;
  for (int64_t r = 0; r < dp; ++r)
    for (auto n : dist::even_split(B, tp)) group_sizes.push_back(n);

  // 2. S optimizer steps of both, comparing the global loss at each.
  for (int64_t step = 0; step < o.steps; ++step) {
    auto [x, t] = batch(o, dp * B, step);
    ref_opt.zero_grad();
    auto [y_ref, aux_ref] = ref->forward(x, group_sizes);
    auto loss_ref = torch::mse_loss(y_ref, t) + aux_ref;
    loss_ref.backward();
    ref_opt.step();

    opt.zero_grad();
    if (o.expert_layout == ExpertLayout::kAdaptive && every_step)
      net->moe->set_adaptive_r(degrees[step % degrees.size()]);
    auto x_mine = x.narrow(0, coords.dp * B, B), t_mine = t.narrow(0, coords.dp * B, B);
    auto [y, aux] = net->forward(x_mine);
    auto mse = torch::mse_loss(y, t_mine);
    (mse + aux).backward();
    opt.step(dp);
    // This rank's share of the global loss; the shares sum to it over the layout's ranks.
    const double share =
        (mse.detach() / static_cast<double>(tp * dp) + aux.detach() / static_cast<double>(dp))
            .item<double>();
    const double loss = dist::sum_over_ranks(share, groups->world);
    const double ref_loss = loss_ref.item<double>();
    row.loss_rel_err =
        std::max(row.loss_rel_err, std::abs(loss - ref_loss) / std::max(std::abs(ref_loss), 1e-30));
  }

  // 3. Parameters after the last step: dense and gate locally, experts gathered to full shape.
  double err = 0.0;
  auto ref_params = ref->named_parameters();
  for (auto& kv : net->named_parameters())
    if (kv.key().rfind("moe.experts.", 0) != 0)
      err = std::max(err, relative_error(kv.value(), ref_params[kv.key()]));
  auto full = net->moe->gather_full_expert_parameters();
  auto ref_experts = ref->moe->experts->named_parameters();
  for (auto& [name, t] : full) err = std::max(err, relative_error(t, ref_experts[name]));
  row.param_rel_err = dist::max_over_ranks(err, groups->world);
  row.loss_rel_err = dist::max_over_ranks(row.loss_rel_err, groups->world);
  row.pass = row.loss_rel_err <= tol && row.param_rel_err <= tol;
  return row;
}

}  // namespace hybridmoe
