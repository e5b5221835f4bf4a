// dispatcher.cpp — see dispatcher.h and dispatchers.h: the experts step shared by every
// dispatcher, the local dispatcher, the exchange every exchanging dispatcher shares (all-to-all,
// expert-major order, etp gather), the chunked overlap decorator, and the factory.
#include "dispatch/dispatchers.h"

#include "experts/grouped_mlp.h"
#include "hybridmoe/collectives.h"
#include "hybridmoe/detail/hierarchical_all_to_all.h"
#include "hybridmoe/detail/overlap.h"
#include "hybridmoe/parallel.h"

#include <numeric>

namespace hybridmoe {

torch::Tensor TokenDispatcher::run_experts(DispatchedRows& d, ExpertsBase& experts) {
  if (d.weights.w1.defined()) return detail::grouped_mlp(d.rows, d.weights, d.counts, d.activation);
  return experts.run(d.rows, d.counts);
}

A2AAlgorithm exchange_algorithm(A2AAlgorithm requested, const std::vector<int64_t>& ranks,
                                int64_t ranks_per_node, const std::string& name) {
  if (requested == A2AAlgorithm::kFlat || ranks.size() <= 1) return A2AAlgorithm::kFlat;
  int64_t per_node = 0;
  try {
    per_node = dist::members_per_node(ranks, ranks_per_node, name);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false,
                "MoE: a2a_algorithm=hierarchical needs the token exchange's group to hold the "
                "same number of its ranks on every node it spans: ",
                e.what_without_backtrace());
  }
  // One node, or one member per node: the two-level exchange is the flat one.
  const bool two_levels = per_node > 1 && per_node < static_cast<int64_t>(ranks.size());
  return two_levels ? A2AAlgorithm::kHierarchical : A2AAlgorithm::kFlat;
}

std::unique_ptr<TokenDispatcher> make_token_dispatcher(
    const MoEOptions& options, const ExpertPlacement& placement,
    std::shared_ptr<const ParallelGroups> groups, std::shared_ptr<GroupedExpertsImpl> grouped) {
  const bool replicate = options.replicate().mode() != ReplicateMode::kOff;
  TORCH_CHECK(!replicate || (groups && options.expert_layout() == ExpertLayout::kFixed),
              "MoE: replicate=", to_string(options.replicate()),
              " needs a distributed layer with the fixed expert layout, got ",
              groups ? "" : "a single process, ",
              "expert_layout=", to_string(options.expert_layout()), " (use replicate=off)");
  const bool hierarchical = options.a2a_algorithm() == A2AAlgorithm::kHierarchical;
  TORCH_CHECK(!hierarchical || groups,
              "MoE: a2a_algorithm=hierarchical routes the expert-parallel all-to-all between "
              "nodes, which a single-process layer does not have (use flat)");
  TORCH_CHECK(
      !hierarchical || options.a2a_overlap_degree() == 1,
      "MoE: a2a_algorithm=hierarchical with a2a_overlap_degree=", options.a2a_overlap_degree(),
      ": the chunked overlap pipelines flat all-to-alls; use a2a_overlap_degree=1 or "
      "a2a_algorithm=flat");
  TORCH_CHECK(!hierarchical || !replicate,
              "MoE: a2a_algorithm=hierarchical with replicate=", to_string(options.replicate()),
              ": the replicating dispatcher exchanges its rows flat; use replicate=off or "
              "a2a_algorithm=flat");
  if (!groups) return std::make_unique<detail::LocalDispatcher>(options.num_experts());
  std::unique_ptr<detail::ExchangingDispatcher> d;
  if (replicate) {
    d = std::make_unique<detail::ReplicatingDispatcher>(options, groups, grouped);
  } else if (options.expert_layout() == ExpertLayout::kAdaptive) {
    d = std::make_unique<detail::AdaptiveDispatcher>(options, placement, groups, grouped);
    // The adaptive exchange runs over the stage, the fixed layout's over ep.
    d->use_a2a_algorithm(exchange_algorithm(options.a2a_algorithm(), groups->stage.ranks,
                                            groups->ranks_per_node, groups->stage.name));
  } else {
    d = std::make_unique<detail::AllToAllDispatcher>(options, groups);
    d->use_a2a_algorithm(exchange_algorithm(options.a2a_algorithm(), groups->ep.ranks,
                                            groups->ranks_per_node, groups->ep.name));
  }
  if (options.a2a_overlap_degree() == 1) return d;
  return std::make_unique<detail::OverlapDispatcher>(std::move(d), grouped, options.activation(),
                                                     options.a2a_overlap_degree());
}

namespace detail {

namespace {

// Local dispatch: the plan is all combine needs.
struct PlanHandle : DispatchHandle {
  DispatchPlan plan;
};

// What an exchanging dispatch keeps for combine: the exchange, its plan, and with etp > 1 the
// rows of every etp rank and the expert-major order of the gathered rows.
struct ExchangeHandle : DispatchHandle {
  TokenExchange x;
  ExchangePlan xp;
  std::vector<int64_t> etp_rows;
  ExpertMajorOrder etp_order;
};

}  // namespace

// ---- one process --------------------------------------------------------------------------------

DispatchedRows LocalDispatcher::dispatch(const torch::Tensor& mine, const RouterOutput& routing,
                                         const MoECallOptions& /*call*/) {
  auto h = std::make_shared<PlanHandle>();
  // 1. Plan: per-expert counts and a stable expert-contiguous order; 2. permute into it.
  h->plan = make_plan(routing, mine.size(0), num_experts_);
  DispatchedRows d;
  d.rows = permute(mine, h->plan);
  d.counts = h->plan.counts_host;
  d.routed_per_expert = h->plan.counts;
  d.handle = h;
  return d;
}

torch::Tensor LocalDispatcher::combine(const torch::Tensor& y, DispatchedRows& d) {
  return unpermute(y, static_cast<PlanHandle&>(*d.handle).plan);
}

// ---- the exchange of every exchanging dispatcher -------------------------------------------

ExchangingDispatcher::ExchangingDispatcher(std::shared_ptr<const ParallelGroups> groups)
    : groups_(std::move(groups)) {
  TORCH_CHECK(groups_, "token dispatcher: the parallel groups are null");
}

torch::Tensor ExchangingDispatcher::local_tokens(const torch::Tensor& tokens) {
  slice_rows_ = dist::even_split(tokens.size(0), groups_->slice.size());
  return scatter_to_slices(tokens, groups_->slice, slice_rows_);
}

double ExchangingDispatcher::aux_scale() const {
  return 1.0 / static_cast<double>(groups_->slice.size());
}

torch::Tensor ExchangingDispatcher::gather_slices(const torch::Tensor& y,
                                                  const std::vector<int64_t>& slice_rows) {
  return gather_from_slices(y, groups_->slice, slice_rows);
}

DispatchedRows ExchangingDispatcher::dispatch(const torch::Tensor& mine,
                                              const RouterOutput& routing,
                                              const MoECallOptions& call) {
  auto h = std::make_shared<ExchangeHandle>();
  DispatchedRows d;
  h->x = prepare(mine, routing, call, &d.routed_per_expert);
  const auto& x = h->x;
  torch::Tensor rows = x.send_rows;
  std::vector<int64_t> counts = x.send_counts;
  // 1. The token exchange: an all-to-all over the group, then the rows expert-major.
  if (x.exchanges()) {
    h->xp = make_exchange_plan(x.send_counts, x.recv_counts, x.group.size());
    h->xp.algorithm = a2a_;
    h->xp.ranks_per_node = groups_->ranks_per_node;
    rows = exchange_tokens(rows, h->xp, x.group);
    counts = h->xp.local_counts;
  }
  // 2. etp > 1: every etp rank runs its hidden slice on the rows of the whole etp group, expert-
  //    major over the etp ranks' blocks; combine sums the partial outputs back.
  const auto& etp = x.etp;
  if (etp.size() > 1) {
    const auto blocks = dist::all_gather_counts(counts, etp);  // [etp][local experts]
    h->etp_rows.clear();
    for (const auto& b : blocks)
      h->etp_rows.push_back(std::accumulate(b.begin(), b.end(), int64_t{0}));
    h->etp_order = expert_major_index(blocks);
    auto gathered = dist::all_gather_rows(rows, etp, h->etp_rows);
    rows = gather_rows(gathered, h->etp_order.index.to(rows.device()));
    counts = h->etp_order.per_expert;
  }
  d.rows = rows;
  d.counts = std::move(counts);
  d.weights = x.weights;
  d.activation = x.activation;
  d.replicated = x.replicated;
  d.handle = h;
  return d;
}

torch::Tensor ExchangingDispatcher::combine(const torch::Tensor& y_in, DispatchedRows& d) {
  auto& h = static_cast<ExchangeHandle&>(*d.handle);
  torch::Tensor y = y_in;
  // 1. etp > 1: the partial outputs back in block order, summed into each rank's rows.
  if (h.x.etp.size() > 1) {
    auto partial = gather_rows(y, h.etp_order.inverse.to(y.device()));
    y = dist::reduce_scatter_rows(partial, h.x.etp, h.etp_rows);
  }
  // 2. The mirror exchange, 3. the dispatcher's local finish.
  if (h.x.exchanges()) y = exchange_back(y, h.xp, h.x.group);
  return finish(y, *h.x.finish);
}

// ---- the chunked overlap ------------------------------------------------------------------------

namespace {

// The overlap's handle: the exchange (adaptive r = 0 has none; its rows stay on this rank).
struct OverlapHandle : DispatchHandle {
  TokenExchange x;
};

}  // namespace

OverlapDispatcher::OverlapDispatcher(std::unique_ptr<ExchangingDispatcher> inner,
                                     std::shared_ptr<GroupedExpertsImpl> grouped,
                                     Activation activation, int64_t degree)
    : inner_(std::move(inner)),
      grouped_(std::move(grouped)),
      activation_(activation),
      degree_(degree) {
  TORCH_CHECK(degree_ >= 2, "OverlapDispatcher: the degree must be >= 2, got ", degree_);
  TORCH_CHECK(grouped_,
              "OverlapDispatcher: the chunked exchange runs the built-in grouped "
              "experts; user expert modules are not supported there");
}

torch::Tensor OverlapDispatcher::local_tokens(const torch::Tensor& tokens) {
  return inner_->local_tokens(tokens);
}

double OverlapDispatcher::aux_scale() const {
  return inner_->aux_scale();
}

DispatchedRows OverlapDispatcher::dispatch(const torch::Tensor& mine, const RouterOutput& routing,
                                           const MoECallOptions& call) {
  auto h = std::make_shared<OverlapHandle>();
  DispatchedRows d;
  h->x = inner_->prepare(mine, routing, call, &d.routed_per_expert);
  // Rows that stay on this rank (no exchange to overlap) are the experts' rows already.
  d.rows = h->x.send_rows;
  d.counts = h->x.send_counts;
  // The experts run on what the chunks bring (with etp > 1: before the etp gather).
  if (h->x.exchanges())
    d.computed_rows = std::accumulate(h->x.recv_counts.begin(), h->x.recv_counts.end(), int64_t{0});
  d.weights = h->x.weights;
  d.activation = activation_;
  d.replicated = h->x.replicated;
  d.handle = h;
  return d;
}

torch::Tensor OverlapDispatcher::run_experts(DispatchedRows& d, ExpertsBase& experts) {
  auto& h = static_cast<OverlapHandle&>(*d.handle);
  if (!h.x.exchanges()) return TokenDispatcher::run_experts(d, experts);
  // Exchange, experts and return, chunk by chunk (overlap.h).
  const ExpertWeights w = h.x.weights.w1.defined() ? h.x.weights : grouped_->weights();
  return overlapped_expert_exchange(h.x.send_rows, h.x.send_counts, h.x.recv_counts, h.x.group,
                                    h.x.etp, w, activation_, degree_);
}

torch::Tensor OverlapDispatcher::combine(const torch::Tensor& y, DispatchedRows& d) {
  auto& h = static_cast<OverlapHandle&>(*d.handle);
  return inner_->finish(y, *h.x.finish);
}

}  // namespace detail
}  // namespace hybridmoe
