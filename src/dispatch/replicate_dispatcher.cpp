// replicate_dispatcher.cpp — the fixed layout's dispatcher with hot-expert replication
// (FasterMoE's shadowing; replicate.h). Each call, prepare():
//   1. every ep rank's per-expert counts are all-gathered (with etp > 1 summed over the etp group
//      as well, so that every rank of the ep x etp block sees the same counts), and the policy
//      picks the replicated experts (the same on every such rank: a function of those counts);
//   2. each rank becomes L + R experts: its L own, then the R replicas; a replicated expert's rows
//      go to replica slots where the placement says (replica_rows: their source rank, or spread
//      evenly over the ep ranks) and its own slot on the owner gets none;
//   3. the replicated experts' weights are all-gathered over ep from their owners
//      (all_gather_rows, whose conjugate reduce-scatters the replicas' gradients back to the
//      owner before any optimizer step); with etp > 1 each etp rank gathers its hidden slice, over
//      its own ep group (the ranks that hold the same slice).
// The exchange, the etp gather of the rows and their mirrors are then ExchangingDispatcher's (or
// the chunked overlap's) over L + R slots per rank with the call's weights [own; replicas];
// finish() puts the returned rows back into route order. ep > 1, the grouped experts.
#include "dispatch/dispatchers.h"
#include "hybridmoe/collectives.h"
#include "hybridmoe/parallel.h"

namespace hybridmoe::detail {

namespace {

struct ReplicaHandle : DispatchHandle {
  DispatchPlan plan;
  std::vector<int64_t> slice_rows;
  /// [A]: row of send_rows of each expert-sorted row; undefined when nothing is replicated (the
  /// rows are sent in expert-sorted order).
  torch::Tensor to_route;
};

// The tensors of an expert's weights that are defined, in a fixed order.
std::vector<torch::Tensor*> fields(ExpertWeights& w) {
  std::vector<torch::Tensor*> out;
  for (auto* t : {&w.w1, &w.b1, &w.w2, &w.b2, &w.w3, &w.b3})
    if (t->defined()) out.push_back(t);
  return out;
}

// The policy's counts: [P][E] of the ep group, summed over the etp group (rank j: etp group j).
std::vector<std::vector<int64_t>> group_counts(const std::vector<std::vector<int64_t>>& ep_counts,
                                               const dist::Group& etp) {
  if (etp.size() <= 1) return ep_counts;
  std::vector<int64_t> flat;
  for (const auto& row : ep_counts) flat.insert(flat.end(), row.begin(), row.end());
  const auto all = dist::all_gather_counts(flat, etp);  // [etp][P * E]
  auto out = ep_counts;
  const auto E = static_cast<int64_t>(out.empty() ? 0 : out[0].size());
  for (size_t j = 0; j < out.size(); ++j)
    for (int64_t e = 0; e < E; ++e) {
      out[j][e] = 0;
      for (const auto& q : all) out[j][e] += q[static_cast<int64_t>(j) * E + e];
    }
  return out;
}

}  // namespace

ReplicatingDispatcher::ReplicatingDispatcher(const MoEOptions& options,
                                             std::shared_ptr<const ParallelGroups> groups,
                                             std::shared_ptr<GroupedExpertsImpl> grouped)
    : AllToAllDispatcher(options, std::move(groups)),
      replicate_(options.replicate()),
      grouped_(std::move(grouped)),
      d_model_(options.d_model()) {
  const auto& g = *groups_;
  const std::string what = "MoE: replicate=" + to_string(replicate_);
  TORCH_CHECK(g.ep.size() > 1, what,
              " replicates experts over the ep group; it needs ep > 1, got ep=", g.ep.size());
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
  *routed_per_expert = h->plan.counts;
  // 1. Every ep rank's rows per expert (what this rank receives), and the policy's choice.
  const auto counts = dist::all_gather_counts(h->plan.counts_host, ep);  // [P][E]
  auto own = grouped_->weights();
  ReplicateShape shape;
  shape.d_model = d_model_;
  shape.hidden = own.w1.size(2);
  // The same on every etp rank: b2 (on one of them) counts as d_model when the experts have biases.
  for (const auto* t : {&own.w1, &own.b1, &own.w2, &own.w3, &own.b3})
    if (t->defined()) shape.expert_params += t->numel() / L;
  if (grouped_->options.bias()) shape.expert_params += d_model_;
  shape.matmuls = own.w3.defined() ? 3 : 2;
  shape.element_bytes = static_cast<int64_t>(own.w1.element_size());
  shape.etp = groups_->etp.size();
  TokenExchange x;
  // The policy's figures know how many cores this host's ranks share (unless given).
  auto policy = replicate_;
  policy.figures(on_this_host(policy.figures(), groups_->ranks_per_node, !mine.device().is_cpu()));
  x.replicated = choose_replicated(group_counts(counts, groups_->etp), policy, shape);
  const auto R = static_cast<int64_t>(x.replicated.size()), Lx = L + R;
  std::vector<int64_t> slot_of(E, -1);  // replica slot of each replicated expert
  for (int64_t r = 0; r < R; ++r) slot_of[x.replicated[r]] = L + r;
  // 2. Each replicated expert's rows: from which ep rank to which ([R][P][P]).
  std::vector<std::vector<std::vector<int64_t>>> moves;
  for (auto e : x.replicated) {
    std::vector<int64_t> routed(P);
    for (int64_t j = 0; j < P; ++j) routed[j] = counts[j][e];
    moves.push_back(replica_rows(routed, replicate_.placement()));
  }
  // 3. Slots (rank k's expert l at k * Lx + l, its replicas after its own) both ways, and the
  //    expert-sorted rows in slot order; a replicated expert's rows are taken in order.
  x.send_counts.assign(P * Lx, 0);
  x.recv_counts.assign(P * Lx, 0);
  auto rows = permute(mine, h->plan);
  std::vector<int64_t> order;
  order.reserve(static_cast<size_t>(rows.size(0)));
  std::vector<int64_t> taken(R, 0);
  const auto& off = h->plan.offsets_host;
  for (int64_t k = 0; k < P; ++k) {
    for (int64_t l = 0; l < L; ++l) {
      const int64_t e = k * L + l;
      if (slot_of[e] < 0) {
        x.send_counts[k * Lx + l] = counts[me][e];
        for (int64_t i = off[e]; i < off[e + 1]; ++i) order.push_back(i);
      }
      if (slot_of[me * L + l] < 0) x.recv_counts[k * Lx + l] = counts[k][me * L + l];
    }
    for (int64_t r = 0; r < R; ++r) {
      const int64_t n = moves[r][me][k], first = off[x.replicated[r]] + taken[r];
      x.send_counts[k * Lx + L + r] = n;
      for (int64_t i = first; i < first + n; ++i) order.push_back(i);
      taken[r] += n;
      x.recv_counts[k * Lx + L + r] = moves[r][k][me];
    }
  }
  x.group = ep;
  x.etp = groups_->etp;
  x.activation = grouped_->options.activation();
  if (R == 0) {  // every row travels, in expert-sorted order
    x.send_rows = rows;
  } else {
    const auto opts = torch::dtype(torch::kInt64).device(rows.device());
    auto order_t = torch::tensor(order, opts);
    x.send_rows = gather_rows(rows, order_t);
    h->to_route =
        torch::empty_like(order_t).index_put_({order_t}, torch::arange(order_t.numel(), opts));
    // 4. The replicas' weights from their owners; the call's experts are [own; replicas].
    x.weights = gather_replicas(x.replicated, me * L);
    auto ws = fields(own), rs = fields(x.weights);
    for (size_t i = 0; i < ws.size(); ++i) *rs[i] = torch::cat({*ws[i], *rs[i]}, 0);
  }
  x.finish = h;
  return x;
}

torch::Tensor ReplicatingDispatcher::finish(const torch::Tensor& returned, DispatchHandle& handle) {
  auto& h = static_cast<ReplicaHandle&>(handle);
  // returned: [A, d] in send_rows' order → expert-sorted → route order → the slices' tokens.
  torch::Tensor sorted = returned;
  if (h.to_route.defined()) sorted = gather_rows(returned, h.to_route);
  return gather_slices(unpermute(sorted, h.plan), h.slice_rows);
}

}  // namespace hybridmoe::detail
