// moe_adaptive.cpp — the adaptive expert layout of the distributed MoE layer (Tutel's adaptive
// parallelism, `expert_layout = "adaptive"`): storage fixed over the W = tp * dp ranks of a stage,
// the degree r chosen per forward call with nothing migrated.
//
// Storage (stage rank i, E experts, hidden width h):
//   E >= W: rank i holds experts [i * E / W, (i + 1) * E / W) whole (S = 1);
//   E <  W: rank i holds hidden slice q = i % S (h / S wide) of expert i / S, S = W / E; the
//           output bias b2 lives on q = 0 only.
// Degrees r ∈ {0} ∪ divisors(S):
//   r = 0: every rank all-gathers every expert over the stage (backward: reduce-scatter back to
//          the owning slices) and runs all E experts on its own rows; no token all-to-all.
//   r >= 1: the shard group of S ranks is cut into r sub-groups of m = S / r consecutive ranks;
//          each sub-group all-gathers its slices (sub-group j then holds hidden slice j of h / r;
//          b2 joins sub-group 0 only, so it is added once). Replica k of the expert is the r ranks
//          {j * m + k}; a source rank s sends each expert's rows to replica s % m (all r ranks of
//          it), and sums the r partial outputs that come back.
// Sub-group gathers are all-to-alls over the stage whose splits are non-zero inside the
// sub-group only, so no process groups beyond the layout's are needed.
#include <algorithm>
#include <numeric>
#include <sstream>

#include "../experts/grouped_mlp.h"
#include "hybridmoe/collectives.h"
#include "hybridmoe/exchange.h"
#include "hybridmoe/moe.h"
#include "hybridmoe/overlap.h"

namespace hybridmoe {

namespace {

// Concatenates, in stage-rank order, the rows of the `span` consecutive stage ranks starting at
// `first` (every rank passes its own span; spans partition the stage and have the same size).
// rows_per_rank: rows of every stage rank. Backward: each rank's rows of the summed gradient.
// x: [rows_per_rank[me], ...] → [sum over the span, ...].
torch::Tensor gather_in_span(const torch::Tensor& x, const std::vector<int64_t>& rows_per_rank,
                             int64_t first, int64_t span, const dist::Group& stage) {
  if (span == 1) return x;
  if (span == stage.size()) return dist::all_gather_rows(x, stage, rows_per_rank);
  // 1. One copy of x for each member (the copies' gradients are summed by expand's backward).
  auto sizes = x.sizes().vec();
  std::vector<int64_t> expanded = sizes;
  expanded.insert(expanded.begin(), span);
  sizes[0] *= span;
  auto copies = x.unsqueeze(0).expand(expanded).reshape(sizes);
  // 2. All-to-all over the stage with splits only inside the span.
  std::vector<int64_t> in_splits(stage.size(), 0), out_splits(stage.size(), 0);
  for (int64_t d = first; d < first + span; ++d) {
    in_splits[d] = x.size(0);
    out_splits[d] = rows_per_rank[d];
  }
  return dist::all_to_all(copies, out_splits, in_splits, stage);
}

// Hidden-sliced weights gathered as [n * L, ...] blocks of `c` slices per expert → full experts.
torch::Tensor join_columns(const torch::Tensor& t, int64_t c) {  // t: [n, d, hs] → [n/c, d, c*hs]
  if (c == 1) return t;
  const int64_t n = t.size(0), d = t.size(1), hs = t.size(2);
  return t.view({n / c, c, d, hs}).permute({0, 2, 1, 3}).reshape({n / c, d, c * hs});
}
torch::Tensor join_rows(const torch::Tensor& t, int64_t c) {  // t: [n, hs, ...] → [n/c, c*hs, ...]
  if (c == 1) return t;
  auto sizes = t.sizes().vec();
  sizes[0] /= c;
  sizes[1] *= c;
  return t.reshape(sizes);
}

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

// ---- forward ----------------------------------------------------------------------------------

MoEOutput MoEImpl::forward_with(const torch::Tensor& x, const MoECallOptions& call) {
  if (call.adaptive_r() < 0) return forward(x);
  TORCH_CHECK(is_adaptive(), "MoE: a per-call adaptive_r=", call.adaptive_r(),
              " needs expert_layout=\"adaptive\", got \"", options.expert_layout(), "\"");
  check_adaptive_r(call.adaptive_r());
  if (!groups_) return forward(x);  // one rank: every r is the local computation
  auto tokens = flatten_input(x);
  auto result = forward_adaptive(tokens, call.adaptive_r());
  result.output = result.output.view(x.sizes());
  return result;
}

MoEOutput MoEImpl::forward_adaptive(const torch::Tensor& tokens, int64_t r) {
  check_adaptive_r(r);
  const auto& g = *groups_;
  const auto& stage = g.stage;
  const int64_t E = options.num_experts(), W = stage.size(), me = stage.rank;
  const int64_t S = adaptive_shard_size(), L = E >= W ? E / W : 1;
  auto* ex = grouped.get();
  // 1. Slice the replicated tokens over tp, route, plan and permute (as the fixed layout).
  const auto slice_rows = dist::even_split(tokens.size(0), g.slice.size());
  auto mine = scatter_to_slices(tokens, g.slice, slice_rows);
  RouterOutput routing = gate->route(mine);
  DispatchPlan plan = make_plan(routing, mine.size(0), E);
  auto rows = permute(mine, plan);
  // 2. Gather the weights: over the stage (r = 0) or the sub-group of m = S / r ranks.
  const int64_t span = r == 0 ? W : S / r;
  const int64_t first = r == 0 ? 0 : (me / span) * span;
  const int64_t c = std::min(span, S);  // slices of one expert inside the span
  std::vector<int64_t> per_rank(W, L), b2_rows(W, 0);
  for (int64_t d = 0; d < W; ++d) b2_rows[d] = E >= W ? L : (d % S == 0 ? 1 : 0);
  auto gather = [&](const torch::Tensor& t) {
    return gather_in_span(t, per_rank, first, span, stage);
  };
  ExpertWeights w;  // this call's gathered weights
  w.w1 = join_columns(gather(ex->w1), c);
  w.w2 = join_rows(gather(ex->w2), c);
  if (ex->w3.defined()) w.w3 = join_columns(gather(ex->w3), c);
  if (ex->b1.defined()) w.b1 = join_rows(gather(ex->b1), c);
  if (ex->b3.defined()) w.b3 = join_rows(gather(ex->b3), c);
  if (options.bias()) {
    // A rank without b2 joins with an empty block that requires grad, so that every rank runs
    // the gather's backward collective.
    auto b2_mine = ex->b2.defined()
                       ? ex->b2
                       : torch::zeros({0, options.d_model()}, ex->w1.options()).requires_grad_();
    w.b2 = gather_in_span(b2_mine, b2_rows, first, span, stage);
    // Sub-groups other than the first get no b2 rows: they add a zero bias (b2 is counted once),
    // kept in the graph so that the gather's backward runs on them too.
    if (w.b2.size(0) == 0)
      w.b2 = torch::cat({w.b2, torch::zeros({L, options.d_model()}, w.b2.options())});
  }
  const auto act = options.activation();
  torch::Tensor y;
  if (r == 0) {
    // 3a. Every expert on this rank's own rows.
    y = detail::grouped_mlp(rows, w.w1, w.b1, w.w2, w.b2, w.w3, w.b3, plan.counts_host, act);
  } else {
    // 3b. Rows to the r ranks of replica (me % m) of their expert's shard group.
    const int64_t m = S / r;
    std::vector<int64_t> send_counts(W * L, 0), send_index;
    std::vector<std::vector<int64_t>> pos(r, std::vector<int64_t>(rows.size(0), 0));
    for (int64_t d = 0; d < W; ++d) {
      const int64_t q = d % S;
      if (E < W && q % m != me % m) continue;
      for (int64_t l = 0; l < L; ++l) {
        const int64_t e = E >= W ? d * L + l : d / S;
        const int64_t n = plan.counts_host[e], off = plan.offsets_host[e];
        send_counts[d * L + l] = n;
        for (int64_t a = off; a < off + n; ++a) {
          pos[E >= W ? 0 : q / m][a] = static_cast<int64_t>(send_index.size());
          send_index.push_back(a);
        }
      }
    }
    auto recv_counts = dist::exchange_counts(send_counts, stage);
    std::vector<int64_t> send_splits(W, 0), recv_splits(W, 0);
    std::vector<std::vector<int64_t>> blocks(W, std::vector<int64_t>(L, 0));
    for (int64_t d = 0; d < W; ++d)
      for (int64_t l = 0; l < L; ++l) {
        send_splits[d] += send_counts[d * L + l];
        blocks[d][l] = recv_counts[d * L + l];
        recv_splits[d] += blocks[d][l];
      }
    const auto dev = rows.device();
    auto sent = gather_rows(rows, torch::tensor(send_index, torch::kInt64).to(dev));
    torch::Tensor back;
    if (options.a2a_overlap_degree() > 1) {
      // 3-4 in D chunks, the exchanges overlapped with the experts (overlap.h).
      back = overlapped_expert_exchange(sent, send_counts, recv_counts, stage, dist::Group(), w,
                                        act, options.a2a_overlap_degree());
    } else {
      auto received = dist::all_to_all(sent, recv_splits, send_splits, stage);
      // 4. This rank's partial outputs (its 1/r hidden slice) on the rows it received.
      auto order = expert_major_index(blocks);
      auto xe = gather_rows(received, order.index.to(dev));
      auto ye = detail::grouped_mlp(xe, w.w1, w.b1, w.w2, w.b2, w.w3, w.b3, order.per_expert, act);
      back =
          dist::all_to_all(gather_rows(ye, order.inverse.to(dev)), send_splits, recv_splits, stage);
    }
    // 5. Sum the r partial outputs of every row (copy j computed hidden slice j).
    for (int64_t j = 0; j < r; ++j) {
      auto part = gather_rows(back, torch::tensor(pos[j], torch::kInt64).to(dev));
      y = y.defined() ? y + part : part;
    }
  }
  // 6. Combine and re-assemble the replicated tokens.
  auto out = gather_from_slices(unpermute(y, plan), g.slice, slice_rows);
  return finish(out, tokens, routing, 1.0 / static_cast<double>(g.slice.size()), plan.counts);
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
