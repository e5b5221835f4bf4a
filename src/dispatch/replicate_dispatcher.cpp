// replicate_dispatcher.cpp — the fixed layout's dispatcher with hot-expert replication
// (FasterMoE's shadowing; replicate.h). Each call: every ep rank's per-expert counts are
// all-gathered (one small collective, which also gives the counts this rank receives), the
// policy picks the replicated experts (the same on every ep rank: a function of those counts),
// the rows of replicated experts stay on this rank while the others take the all-to-all, and the
// replicated experts' weights are all-gathered from their owners (all_gather_rows, whose
// conjugate reduce-scatters the replicas' gradients back to the owner before any optimizer
// step). The experts then run once over [the local experts' received rows; the kept rows of each
// replicated expert] with [own weights; gathered weights]. Combine splits the two parts, sends the
// first back and puts both into route order. ep > 1, etp = 1, the built-in grouped experts.
#include "dispatch/dispatchers.h"
#include "hybridmoe/collectives.h"
#include "hybridmoe/parallel.h"

namespace hybridmoe::detail {

namespace {

struct ReplicaHandle : DispatchHandle {
  DispatchPlan plan;
  ExchangePlan xp;
  std::vector<int64_t> slice_rows;
  int64_t exchanged_rows = 0;  ///< rows received by the all-to-all: the first rows of y
  /// [A]: row of [returned; kept] of each expert-sorted row; undefined when nothing is
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

ExpertWeights ReplicatingDispatcher::with_replicas(const std::vector<int64_t>& replicated,
                                                   int64_t first_local) {
  ExpertWeights own = grouped_->weights();
  if (replicated.empty()) return own;
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
  // 3. [own; gathered] per tensor.
  ExpertWeights out = own;
  auto outs = fields(out);
  int64_t col = 0;
  for (size_t i = 0; i < fs.size(); ++i) {
    auto shape = fs[i]->sizes().vec();
    shape[0] = static_cast<int64_t>(replicated.size());
    auto gathered = flat.narrow(1, col, widths[i]).reshape(shape);
    *outs[i] = torch::cat({*fs[i], gathered}, 0);
    col += widths[i];
  }
  return out;
}

DispatchedRows ReplicatingDispatcher::dispatch(const torch::Tensor& mine,
                                               const RouterOutput& routing,
                                               const MoECallOptions& /*call*/) {
  const auto& ep = groups_->ep;
  const int64_t P = ep.size(), E = num_experts_, L = E / P, me = ep.rank;
  auto h = std::make_shared<ReplicaHandle>();
  h->slice_rows = slice_rows_;
  h->plan = make_plan(routing, mine.size(0), E);
  DispatchedRows d;
  d.routed_per_expert = h->plan.counts;
  // 1. Every ep rank's rows per expert: the policy's input and what this rank receives.
  const auto counts = dist::all_gather_counts(h->plan.counts_host, ep);  // [P][E]
  auto own = grouped_->weights();
  ReplicateShape shape;
  shape.d_model = d_model_;
  shape.hidden = hidden_;
  for (auto* t : fields(own)) shape.expert_params += t->numel() / L;
  shape.matmuls = own.w3.defined() ? 3 : 2;
  shape.element_bytes = static_cast<int64_t>(own.w1.element_size());
  d.replicated = choose_replicated(counts, replicate_, shape);
  std::vector<char> is_rep(E, 0);
  for (auto e : d.replicated) is_rep[e] = 1;
  // 2. The expert-sorted rows split: replicated experts' stay, the others travel.
  std::vector<int64_t> send_counts(E, 0), recv_counts(E, 0), sent, kept, kept_counts;
  const auto& off = h->plan.offsets_host;
  for (int64_t e = 0; e < E; ++e) {
    auto& to = is_rep[e] ? kept : sent;
    for (int64_t i = off[e]; i < off[e + 1]; ++i) to.push_back(i);
    if (is_rep[e]) {
      kept_counts.push_back(h->plan.counts_host[e]);
    } else {
      send_counts[e] = h->plan.counts_host[e];
    }
  }
  for (int64_t j = 0; j < P; ++j)
    for (int64_t l = 0; l < L; ++l)
      recv_counts[j * L + l] = is_rep[me * L + l] ? 0 : counts[j][me * L + l];
  auto rows = permute(mine, h->plan);
  h->xp = make_exchange_plan(send_counts, recv_counts, P);
  if (d.replicated.empty()) {  // every row travels, in expert-sorted order
    d.rows = exchange_tokens(rows, h->xp, ep);
    h->exchanged_rows = d.rows.size(0);
  } else {
    const auto opts = torch::dtype(torch::kInt64).device(rows.device());
    auto sent_t = torch::tensor(sent, opts), kept_t = torch::tensor(kept, opts);
    auto received = exchange_tokens(gather_rows(rows, sent_t), h->xp, ep);
    h->exchanged_rows = received.size(0);
    auto order = torch::cat({sent_t, kept_t});
    h->to_route = torch::empty_like(order).index_put_({order}, torch::arange(order.numel(), opts));
    // 3. [received rows of the local experts; kept rows of each replicated expert], with
    //    [own weights; the replicas' weights].
    d.rows = torch::cat({received, gather_rows(rows, kept_t)});
  }
  d.counts = h->xp.local_counts;
  d.counts.insert(d.counts.end(), kept_counts.begin(), kept_counts.end());
  d.weights = with_replicas(d.replicated, me * L);
  d.activation = grouped_->options.activation();
  d.handle = h;
  return d;
}

torch::Tensor ReplicatingDispatcher::combine(const torch::Tensor& y, DispatchedRows& d) {
  auto& h = static_cast<ReplicaHandle&>(*d.handle);
  auto returned = exchange_back(y.narrow(0, 0, h.exchanged_rows), h.xp, groups_->ep);
  torch::Tensor sorted = returned;
  if (h.to_route.defined()) {
    auto kept = y.narrow(0, h.exchanged_rows, y.size(0) - h.exchanged_rows);
    sorted = gather_rows(torch::cat({returned, kept}), h.to_route);
  }
  return gather_slices(unpermute(sorted, h.plan), h.slice_rows);
}

}  // namespace hybridmoe::detail
