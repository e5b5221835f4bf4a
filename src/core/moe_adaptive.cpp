// moe_adaptive.cpp — the storage of the adaptive expert layout (Tutel's adaptive parallelism,
// `expert_layout = "adaptive"`): fixed over the W = tp * dp ranks of a stage, the degree r chosen
// per forward call with nothing migrated (the call's weight gathers and token movements are the
// adaptive dispatcher's, dispatch/adaptive_dispatcher.cpp).
//
// Storage (stage rank i, E experts, hidden width h):
//   E >= W: rank i holds experts [i * E / W, (i + 1) * E / W) whole (S = 1);
//   E <  W: rank i holds hidden slice q = i % S (h / S wide) of expert i / S, S = W / E; the
//           output bias b2 lives on q = 0 only.
// Valid degrees: r ∈ {0} ∪ divisors(S).
#include <algorithm>
#include <numeric>
#include <sstream>

#include "dispatch/adaptive_weights.h"
#include "hybridmoe/collectives.h"
#include "hybridmoe/moe.h"

namespace hybridmoe {

using detail::gather_in_span;
using detail::join_columns;
using detail::join_rows;

namespace {

std::string join(const std::vector<int64_t>& v) {
  std::ostringstream out;
  for (size_t i = 0; i < v.size(); ++i) out << (i ? ", " : "") << v[i];
  return out.str();
}

}  // namespace

// ---- options and storage ---------------------------------------------------------------------

int64_t MoEImpl::adaptive_shard_size() const {
  const int64_t W = groups_ ? groups_->stage.size() : 1, E = options.num_experts();
  return E < W ? W / E : 1;
}

std::vector<int64_t> MoEImpl::valid_adaptive_r() const {
  std::vector<int64_t> out = {0};
  const int64_t S = adaptive_shard_size();
  for (int64_t r = 1; r <= S; ++r)
    if (S % r == 0) out.push_back(r);
  return out;
}

void MoEImpl::check_adaptive_r(int64_t r) const {
  const auto valid = valid_adaptive_r();
  TORCH_CHECK(std::find(valid.begin(), valid.end(), r) != valid.end(), "MoE: adaptive_r=", r,
              " is not valid for ", options.num_experts(), " experts on a stage of ",
              groups_ ? groups_->stage.size() : 1, " ranks (shard size S=", adaptive_shard_size(),
              "); valid values: ", join(valid));
}

void MoEImpl::set_adaptive_r(int64_t r) {
  TORCH_CHECK(is_adaptive(), "MoE: set_adaptive_r needs expert_layout=\"adaptive\", got \"",
              options.expert_layout(), "\"");
  check_adaptive_r(r);
  options.adaptive_r(r);
}

void MoEImpl::build_adaptive() {
  const auto& g = *groups_;
  const int64_t E = options.num_experts(), W = g.stage.size(), h = options.hidden();
  TORCH_CHECK(g.ep.size() == 1 && g.etp.size() == 1,
              "MoE: expert_layout=\"adaptive\" places the experts over all tp*dp=", W,
              " ranks of the stage itself; the layout must have ep=1 and etp=1, got ep=",
              g.ep.size(), " etp=", g.etp.size());
  TORCH_CHECK(!options.expert(),
              "MoE: expert_layout=\"adaptive\" slices and gathers the built-in grouped experts' "
              "weights; user expert modules are not supported there (use expert_layout=\"fixed\")");
  TORCH_CHECK(options.a2a_overlap_degree() >= 1, "MoE: a2a_overlap_degree must be >= 1, got ",
              options.a2a_overlap_degree());
  if (E >= W) {
    TORCH_CHECK(E % W == 0, "MoE: adaptive layout with num_experts=", E, " >= stage size W=", W,
                " needs W to divide E");
  } else {
    TORCH_CHECK(W % E == 0, "MoE: adaptive layout with num_experts=", E, " < stage size W=", W,
                " needs E to divide W");
    TORCH_CHECK(h % (W / E) == 0,
                "MoE: adaptive layout slices each expert's hidden width over S=", W / E,
                " ranks; d_hidden=", h, " is not divisible by it");
  }
  const int64_t S = adaptive_shard_size(), me = g.stage.rank;
  check_adaptive_r(options.adaptive_r());
  if (E >= W) {
    build(E / W, me * (E / W), h, /*add_output_bias=*/true);
  } else {
    build(1, me / S, h / S, /*add_output_bias=*/me % S == 0);
  }
}

// ---- sharding from and gathering to one process -----------------------------------------------

void MoEImpl::load_adaptive_shard_from(MoEImpl& full) {
  torch::NoGradGuard no_grad;
  const int64_t E = options.num_experts(), W = groups_->stage.size(), me = groups_->stage.rank;
  const int64_t S = adaptive_shard_size(), L = num_local_experts(), e0 = first_local_expert();
  const int64_t hs = options.hidden() / S, q = E >= W ? 0 : me % S;
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
  const int64_t E = options.num_experts(), W = stage.size();
  const int64_t S = adaptive_shard_size(), L = num_local_experts();
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
