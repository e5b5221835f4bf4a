// moe_adaptive.cpp — the storage of the adaptive expert layout (Tutel's adaptive parallelism,
// `expert_layout = "adaptive"`): fixed over the W = tp * dp ranks of a stage, the degree r chosen
// per forward call with nothing migrated (the call's weight gathers and token movements are the
// adaptive dispatcher's, dispatch/adaptive_dispatcher.cpp).
//
// Storage (stage rank i, E experts, hidden width h; the placement, S and the valid r are
// ExpertPlacement's, placement.h):
//   E >= W: rank i holds experts [i * E / W, (i + 1) * E / W) whole (S = 1);
//   E <  W: rank i holds hidden slice q = i % S (h / S wide) of expert i / S, S = W / E; the
//           output bias b2 lives on q = 0 only.
// Valid degrees: r ∈ {0} ∪ divisors(S).
#include "dispatch/adaptive_weights.h"
#include "hybridmoe/collectives.h"
#include "hybridmoe/moe.h"
#include "hybridmoe/parallel.h"

namespace hybridmoe {

using detail::gather_in_span;
using detail::join_columns;
using detail::join_rows;

// ---- options and storage ---------------------------------------------------------------------

void MoEImpl::check_adaptive_r(int64_t r) const {
  TORCH_CHECK(placement_.is_valid_r(r), "MoE: adaptive_r=", r, " is not valid for ",
              options.num_experts(), " experts on a stage of ", placement_.stage_size,
              " ranks (shard size S=", placement_.shards,
              "); valid values: ", placement_.valid_r_text());
}

void MoEImpl::set_adaptive_r(int64_t r) {
  TORCH_CHECK(is_adaptive(), "MoE: set_adaptive_r needs expert_layout=\"adaptive\", got \"",
              to_string(options.expert_layout()), "\"");
  check_adaptive_r(r);
  options.adaptive_r(r);
}

void MoEImpl::build_adaptive() {
  const auto& p = placement_;
  const int64_t E = p.num_experts, W = p.stage_size, h = options.hidden();
  TORCH_CHECK(p.ep == 1 && p.etp == 1,
              "MoE: expert_layout=\"adaptive\" places the experts over all tp*dp=", W,
              " ranks of the stage itself; the layout must have ep=1 and etp=1, got ep=", p.ep,
              " etp=", p.etp);
  TORCH_CHECK(!options.expert(),
              "MoE: expert_layout=\"adaptive\" slices and gathers the built-in grouped experts' "
              "weights; user expert modules are not supported there (use expert_layout=\"fixed\")");
  TORCH_CHECK(options.a2a_overlap_degree() >= 1, "MoE: a2a_overlap_degree must be >= 1, got ",
              options.a2a_overlap_degree());
  TORCH_CHECK(p.fits(), "MoE: adaptive layout with num_experts=", E, " and stage size W=", W, ": ",
              p.problem);
  TORCH_CHECK(p.check_hidden(h).empty(),
              "MoE: adaptive layout slices each expert's hidden width over S=", p.shards,
              " ranks; d_hidden=", h, " is not divisible by it");
  check_adaptive_r(options.adaptive_r());
  const int64_t me = stage_rank();
  build(p.local_experts, p.first_local_expert(me), h / p.shards,
        /*add_output_bias=*/p.hidden_slice(me) == 0);
}

// ---- sharding from and gathering to one process -----------------------------------------------

void MoEImpl::load_adaptive_shard_from(MoEImpl& full) {
  torch::NoGradGuard no_grad;
  const int64_t S = placement_.shards, L = num_local_experts(), e0 = first_local_expert();
  const int64_t hs = options.hidden() / S, q = placement_.hidden_slice(stage_rank());
  auto src = full.experts->named_parameters();
  for (auto& kv : experts->named_parameters()) {
    const auto& name = kv.key();
    TORCH_CHECK(src.contains(name), "MoE::load_shard_from: source has no ", name);
    auto s = src[name].narrow(0, e0, L);
    if (name == "w1" || name == "w3") s = s.narrow(2, q * hs, hs);
    if (name == "b1" || name == "b3" || name == "w2") s = s.narrow(1, q * hs, hs);
    TORCH_CHECK(s.sizes() == kv.value().sizes(), "MoE::load_shard_from: ", name, " slice ",
                s.sizes(), " vs local ", kv.value().sizes());
    kv.value().copy_(s);
  }
}

std::map<std::string, torch::Tensor> MoEImpl::gather_adaptive_expert_parameters() {
  torch::NoGradGuard no_grad;
  const auto& stage = groups_->stage;
  const int64_t E = placement_.num_experts, W = placement_.stage_size;
  const int64_t S = placement_.shards, L = num_local_experts();
  std::vector<int64_t> per_rank(W, L), b2_rows(W, 0);
  for (int64_t d = 0; d < W; ++d) b2_rows[d] = E >= W ? L : (d % S == 0 ? 1 : 0);
  auto* ex = grouped.get();
  std::map<std::string, torch::Tensor> full;
  auto gather = [&](const torch::Tensor& t) {
    return gather_in_span(t.detach().contiguous(), per_rank, 0, W, stage);
  };
  full["w1"] = join_columns(gather(ex->w1), S).contiguous();
  full["w2"] = join_rows(gather(ex->w2), S).contiguous();
  if (ex->w3.defined()) full["w3"] = join_columns(gather(ex->w3), S).contiguous();
  if (ex->b1.defined()) full["b1"] = join_rows(gather(ex->b1), S).contiguous();
  if (ex->b3.defined()) full["b3"] = join_rows(gather(ex->b3), S).contiguous();
  if (options.bias()) {
    auto b2 =
        ex->b2.defined() ? ex->b2.detach() : torch::zeros({0, options.d_model()}, ex->w1.options());
    full["b2"] = gather_in_span(b2.contiguous(), b2_rows, 0, W, stage);
  }
  return full;
}

}  // namespace hybridmoe
