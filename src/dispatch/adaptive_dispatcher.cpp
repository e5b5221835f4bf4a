// adaptive_dispatcher.cpp — the dispatcher of the adaptive expert layout (Tutel's adaptive
// parallelism; storage in core/moe_adaptive.cpp): the call's degree r decides where the experts'
// weights are gathered and where the rows go, with nothing migrated.
//   r = 0:  every rank all-gathers every expert over the stage and runs its own rows (no token
//           exchange).
//   r >= 1: the shard group of S ranks is cut into r sub-groups of m = S / r consecutive ranks;
//           each gathers its slices (sub-group j holds hidden slice j of h / r; b2 joins sub-group
//           0 only, so it is added once). Replica k of an expert is the r ranks {j * m + k}: a
//           source rank s sends each expert's rows to replica s % m (all r of its ranks) and sums
//           the r partial outputs that come back.
// Sub-group gathers are all-to-alls over the stage with splits inside the sub-group only, so no
// process groups beyond the layout's are needed.
#include <algorithm>

#include "dispatch/adaptive_weights.h"
#include "dispatch/dispatchers.h"
#include "hybridmoe/collectives.h"
#include "hybridmoe/parallel.h"

namespace hybridmoe::detail {

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

torch::Tensor join_columns(const torch::Tensor& t, int64_t c) {
  if (c == 1) return t;
  const int64_t n = t.size(0), d = t.size(1), hs = t.size(2);
  return t.view({n / c, c, d, hs}).permute({0, 2, 1, 3}).reshape({n / c, d, c * hs});
}

torch::Tensor join_rows(const torch::Tensor& t, int64_t c) {
  if (c == 1) return t;
  auto sizes = t.sizes().vec();
  sizes[0] /= c;
  sizes[1] *= c;
  return t.reshape(sizes);
}

namespace {

struct AdaptiveHandle : DispatchHandle {
  DispatchPlan plan;
  std::vector<int64_t> slice_rows;
  std::vector<torch::Tensor> copies;  // r >= 1: row of each row's copy j in the returned rows
};

}  // namespace

AdaptiveDispatcher::AdaptiveDispatcher(const MoEOptions& options, const ExpertPlacement& placement,
                                       std::shared_ptr<const ParallelGroups> groups,
                                       std::shared_ptr<GroupedExpertsImpl> grouped)
    : ExchangingDispatcher(std::move(groups)),
      placement_(placement),
      d_model_(options.d_model()),
      bias_(options.bias()),
      grouped_(std::move(grouped)) {
  TORCH_CHECK(grouped_,
              "AdaptiveDispatcher: needs the grouped experts (user expert modules "
              "are not supported by the adaptive layout)");
}

TokenExchange AdaptiveDispatcher::prepare(const torch::Tensor& mine, const RouterOutput& routing,
                                          const MoECallOptions& call,
                                          torch::Tensor* routed_per_expert) {
  TORCH_CHECK(call.adaptive_r(), "AdaptiveDispatcher: the call carries no adaptive_r");
  const int64_t r = *call.adaptive_r();
  const auto& stage = groups_->stage;
  const int64_t E = placement_.num_experts, W = stage.size(), me = stage.rank;
  const int64_t S = placement_.shards, L = placement_.local_experts;
  TORCH_CHECK(W == placement_.stage_size, "AdaptiveDispatcher: the stage has ", W,
              " ranks, the placement expects ", placement_.stage_size);
  TORCH_CHECK(placement_.is_valid_r(r), "AdaptiveDispatcher: adaptive_r=", r, " is not one of ",
              placement_.valid_r_text());
  auto* ex = grouped_.get();
  auto h = std::make_shared<AdaptiveHandle>();
  h->slice_rows = slice_rows_;
  // 1. Plan and permute (as the fixed layout).
  h->plan = make_plan(routing, mine.size(0), E);
  *routed_per_expert = h->plan.counts;
  const auto& plan = h->plan;
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
  TokenExchange x;
  x.activation = ex->options.activation();
  ExpertWeights& w = x.weights;  // this call's gathered weights
  w.w1 = join_columns(gather(ex->w1), c);
  w.w2 = join_rows(gather(ex->w2), c);
  if (ex->w3.defined()) w.w3 = join_columns(gather(ex->w3), c);
  if (ex->b1.defined()) w.b1 = join_rows(gather(ex->b1), c);
  if (ex->b3.defined()) w.b3 = join_rows(gather(ex->b3), c);
  if (bias_) {
    // A rank without b2 joins with an empty block that requires grad, so that every rank runs
    // the gather's backward collective.
    auto b2_mine =
        ex->b2.defined() ? ex->b2 : torch::zeros({0, d_model_}, ex->w1.options()).requires_grad_();
    w.b2 = gather_in_span(b2_mine, b2_rows, first, span, stage);
    // Sub-groups other than the first get no b2 rows: they add a zero bias (b2 is counted once),
    // kept in the graph so that the gather's backward runs on them too.
    if (w.b2.size(0) == 0) w.b2 = torch::cat({w.b2, torch::zeros({L, d_model_}, w.b2.options())});
  }
  x.finish = h;
  if (r == 0) {
    // 3a. No exchange: every expert on this rank's own rows.
    x.send_rows = rows;
    x.send_counts = plan.counts_host;
    return x;
  }
  // 3b. Rows to the r ranks of replica (me % m) of their expert's shard group, in slot order
  //     (stage rank d's local expert l at d * L + l); copy j of a row goes to sub-group j.
  const int64_t m = S / r;
  std::vector<int64_t> send_index;
  x.send_counts.assign(W * L, 0);
  std::vector<std::vector<int64_t>> pos(r, std::vector<int64_t>(rows.size(0), 0));
  for (int64_t d = 0; d < W; ++d) {
    const int64_t q = d % S;
    if (E < W && q % m != me % m) continue;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t e = E >= W ? d * L + l : d / S;
      const int64_t n = plan.counts_host[e], off = plan.offsets_host[e];
      x.send_counts[d * L + l] = n;
      for (int64_t a = off; a < off + n; ++a) {
        pos[E >= W ? 0 : q / m][a] = static_cast<int64_t>(send_index.size());
        send_index.push_back(a);
      }
    }
  }
  const auto dev = rows.device();
  for (int64_t j = 0; j < r; ++j) h->copies.push_back(torch::tensor(pos[j], torch::kInt64).to(dev));
  x.recv_counts = dist::exchange_counts(x.send_counts, stage);
  x.send_rows = gather_rows(rows, torch::tensor(send_index, torch::kInt64).to(dev));
  x.group = stage;
  return x;
}

torch::Tensor AdaptiveDispatcher::finish(const torch::Tensor& returned, DispatchHandle& handle) {
  auto& h = static_cast<AdaptiveHandle&>(handle);
  // Sum the r partial outputs of every row (copy j computed hidden slice j); r = 0: the rows.
  torch::Tensor y = h.copies.empty() ? returned : torch::Tensor();
  for (const auto& copy : h.copies) {
    auto part = gather_rows(returned, copy);
    y = y.defined() ? y + part : part;
  }
  return gather_slices(unpermute(y, h.plan), h.slice_rows);
}

}  // namespace hybridmoe::detail
