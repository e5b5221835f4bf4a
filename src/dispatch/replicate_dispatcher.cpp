// replicate_dispatcher.cpp — the fixed layout's dispatcher with hot-expert replication
// (FasterMoE's shadowing; replicate.h). Each call, prepare(): every ep rank's per-expert counts
// are all-gathered (one small collective, which also gives the counts this rank receives), the
// policy picks the replicated experts (the same on every ep rank: a function of those counts),
// the rows of replicated experts stay on this rank while the others take the all-to-all, and the
// replicated experts' weights are all-gathered from their owners (all_gather_rows, whose
// conjugate reduce-scatters the replicas' gradients back to the owner before any optimizer
// step). dispatch() then runs the experts once over [the local experts' received rows; the kept
// rows] with [own weights; gathered weights], and combine() sends the first part back; under the
// chunked overlap (which exchanges and computes the travelling rows itself) finish() computes the
// kept rows. Both put the two parts back into route order. ep > 1, etp = 1, the grouped experts.
#include "dispatch/dispatchers.h"
#include "experts/grouped_mlp.h"
#include "hybridmoe/collectives.h"
#include "hybridmoe/parallel.h"

namespace hybridmoe::detail {

namespace {

struct ReplicaHandle : DispatchHandle {
  DispatchPlan plan;
  ExchangePlan xp;  ///< dispatch()'s exchange (the overlap plans its own)
  std::vector<int64_t> slice_rows;
  std::vector<int64_t> replicated;
  int64_t exchanged_rows = 0;  ///< dispatch(): rows received by the all-to-all, the first of y
  torch::Tensor kept_rows;     ///< [K, d]: this rank's rows of the replicated experts
  std::vector<int64_t> kept_counts;  ///< [R]: of each replicated expert
  ExpertWeights replicas;            ///< the replicated experts' weights, gathered
  Activation activation = Activation::kGelu;
  /// [A]: row of [returned; kept outputs] of each expert-sorted row; undefined when nothing is
  /// replicated (the returned rows are in expert-sorted order already).
  torch::Tensor to_route;
};

// The tensors of an expert's weights that are defined, in a fixed order.
std::vector<torch::Tensor*> fields(ExpertWeights& w) {
  std::vector<torch::Tensor*> out;
  for (auto* t : {&w.w1, &w.b1, &w.w2, &w.b2, &w.w3, &w.b3})
    if (t->defined()) out.push_back(t);
  return out;
}

}  // namespace

ReplicatingDispatcher::ReplicatingDispatcher(const MoEOptions& options,
                                             std::shared_ptr<const ParallelGroups> groups,
                                             std::shared_ptr<GroupedExpertsImpl> grouped)
    : AllToAllDispatcher(options, std::move(groups)),
      replicate_(options.replicate()),
      grouped_(std::move(grouped)),
      d_model_(options.d_model()),
      hidden_(options.hidden()) {
  const auto& g = *groups_;
  const std::string what = "MoE: replicate=" + to_string(replicate_);
  TORCH_CHECK(g.ep.size() > 1, what,
              " replicates experts over the ep group; it needs ep > 1, got ep=", g.ep.size());
  TORCH_CHECK(g.etp.size() == 1, what, " is not supported with etp=", g.etp.size(),
              " yet (use etp=1 or replicate=off)");
  TORCH_CHECK(grouped_, what,
              " gathers the built-in grouped experts' weights; user expert "
              "modules are not supported (use replicate=off)");
  TORCH_CHECK(replicate_.mode() != ReplicateMode::kHottest ||
                  (replicate_.hottest() >= 1 && replicate_.hottest() <= options.num_experts()),
              "MoE: replicate=", replicate_.hottest(),
              " must be in [1, num_experts=", options.num_experts(), "]");
}

ExpertWeights ReplicatingDispatcher::gather_replicas(const std::vector<int64_t>& replicated,
                                                     int64_t first_local) {
  ExpertWeights own = grouped_->weights();
  const auto& ep = groups_->ep;
  const int64_t L = own.w1.size(0);
  // 1. This rank's replicated experts, and how many each owner gives (ascending = owner order).
  std::vector<int64_t> mine, per_rank(ep.size(), 0);
  for (auto e : replicated) {
    ++per_rank[e / L];
    if (e / L == ep.rank) mine.push_back(e - first_local);
  }
  // 2. One all-gather of every tensor of those experts, flattened side by side.
  auto fs = fields(own);
  auto idx = torch::tensor(mine, torch::dtype(torch::kInt64).device(own.w1.device()));
  std::vector<torch::Tensor> parts;
  std::vector<int64_t> widths;
  for (auto* t : fs) {
    widths.push_back(t->numel() / L);
    parts.push_back(t->index_select(0, idx).reshape({idx.numel(), widths.back()}));
  }
  auto flat = dist::all_gather_rows(torch::cat(parts, 1), ep, per_rank);  // [R, sum(widths)]
  // 3. Back to each tensor's shape, R experts.
  ExpertWeights out = own;
  auto outs = fields(out);
  int64_t col = 0;
  for (size_t i = 0; i < fs.size(); ++i) {
    auto shape = fs[i]->sizes().vec();
    shape[0] = static_cast<int64_t>(replicated.size());
    *outs[i] = flat.narrow(1, col, widths[i]).reshape(shape);
    col += widths[i];
  }
  return out;
}

TokenExchange ReplicatingDispatcher::prepare(const torch::Tensor& mine, const RouterOutput& routing,
                                             const MoECallOptions& /*call*/,
                                             torch::Tensor* routed_per_expert) {
  const auto& ep = groups_->ep;
  const int64_t P = ep.size(), E = num_experts_, L = E / P, me = ep.rank;
  auto h = std::make_shared<ReplicaHandle>();
  h->slice_rows = slice_rows_;
  h->plan = make_plan(routing, mine.size(0), E);
  h->activation = grouped_->options.activation();
  *routed_per_expert = h->plan.counts;
  // 1. Every ep rank's rows per expert: the policy's input and what this rank receives.
  const auto counts = dist::all_gather_counts(h->plan.counts_host, ep);  // [P][E]
  auto own = grouped_->weights();
  ReplicateShape shape;
  shape.d_model = d_model_;
  shape.hidden = hidden_;
  for (auto* t : fields(own)) shape.expert_params += t->numel() / L;
  shape.matmuls = own.w3.defined() ? 3 : 2;
  shape.element_bytes = static_cast<int64_t>(own.w1.element_size());
  h->replicated = choose_replicated(counts, replicate_, shape);
  std::vector<char> is_rep(E, 0);
  for (auto e : h->replicated) is_rep[e] = 1;
  // 2. The expert-sorted rows split: replicated experts' stay, the others travel.
  TokenExchange x;
  x.send_counts.assign(E, 0);
  x.recv_counts.assign(E, 0);
  std::vector<int64_t> sent, kept;
  const auto& off = h->plan.offsets_host;
  for (int64_t e = 0; e < E; ++e) {
    auto& to = is_rep[e] ? kept : sent;
    for (int64_t i = off[e]; i < off[e + 1]; ++i) to.push_back(i);
    if (is_rep[e]) {
      h->kept_counts.push_back(h->plan.counts_host[e]);
    } else {
      x.send_counts[e] = h->plan.counts_host[e];
    }
  }
  for (int64_t j = 0; j < P; ++j)
    for (int64_t l = 0; l < L; ++l)
      x.recv_counts[j * L + l] = is_rep[me * L + l] ? 0 : counts[j][me * L + l];
  auto rows = permute(mine, h->plan);
  x.group = ep;
  x.etp = groups_->etp;
  x.activation = h->activation;
  x.replicated = h->replicated;
  if (h->replicated.empty()) {  // every row travels, in expert-sorted order
    x.send_rows = rows;
  } else {
    const auto opts = torch::dtype(torch::kInt64).device(rows.device());
    auto sent_t = torch::tensor(sent, opts), kept_t = torch::tensor(kept, opts);
    x.send_rows = gather_rows(rows, sent_t);
    h->kept_rows = gather_rows(rows, kept_t);
    x.kept_rows = h->kept_rows.size(0);
    auto order = torch::cat({sent_t, kept_t});
    h->to_route = torch::empty_like(order).index_put_({order}, torch::arange(order.numel(), opts));
    // 3. The replicas' weights, from their owners.
    h->replicas = gather_replicas(h->replicated, me * L);
  }
  x.finish = h;
  return x;
}

DispatchedRows ReplicatingDispatcher::dispatch(const torch::Tensor& mine,
                                               const RouterOutput& routing,
                                               const MoECallOptions& call) {
  DispatchedRows d;
  auto x = prepare(mine, routing, call, &d.routed_per_expert);
  auto& h = static_cast<ReplicaHandle&>(*x.finish);
  h.xp = make_exchange_plan(x.send_counts, x.recv_counts, x.group.size());
  d.rows = exchange_tokens(x.send_rows, h.xp, x.group);
  h.exchanged_rows = d.rows.size(0);
  d.counts = h.xp.local_counts;
  d.weights = grouped_->weights();
  if (!h.replicated.empty()) {
    // [received rows of the local experts; kept rows], [own weights; the replicas' weights]:
    // one grouped GEMM over both.
    d.rows = torch::cat({d.rows, h.kept_rows});
    d.counts.insert(d.counts.end(), h.kept_counts.begin(), h.kept_counts.end());
    auto ws = fields(d.weights), rs = fields(h.replicas);
    for (size_t i = 0; i < ws.size(); ++i) *ws[i] = torch::cat({*ws[i], *rs[i]}, 0);
  }
  d.activation = h.activation;
  d.replicated = h.replicated;
  d.handle = x.finish;
  return d;
}

torch::Tensor ReplicatingDispatcher::combine(const torch::Tensor& y, DispatchedRows& d) {
  auto& h = static_cast<ReplicaHandle&>(*d.handle);
  auto returned = exchange_back(y.narrow(0, 0, h.exchanged_rows), h.xp, groups_->ep);
  return to_tokens(returned, y.narrow(0, h.exchanged_rows, y.size(0) - h.exchanged_rows), h);
}

torch::Tensor ReplicatingDispatcher::finish(const torch::Tensor& returned, DispatchHandle& handle) {
  auto& h = static_cast<ReplicaHandle&>(handle);
  // The chunked overlap brought back the travelling rows; the kept rows are computed here.
  torch::Tensor kept_out;
  if (!h.replicated.empty())
    kept_out = grouped_mlp(h.kept_rows, h.replicas, h.kept_counts, h.activation);
  return to_tokens(returned, kept_out, h);
}

torch::Tensor ReplicatingDispatcher::to_tokens(const torch::Tensor& returned,
                                               const torch::Tensor& kept_out,
                                               DispatchHandle& handle) {
  auto& h = static_cast<ReplicaHandle&>(handle);
  torch::Tensor sorted = returned;
  if (h.to_route.defined()) sorted = gather_rows(torch::cat({returned, kept_out}), h.to_route);
  return gather_slices(unpermute(sorted, h.plan), h.slice_rows);
}

}  // namespace hybridmoe::detail
