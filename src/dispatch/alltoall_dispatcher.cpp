// alltoall_dispatcher.cpp — the fixed expert layout's dispatcher: each rank of the slice (tp)
// group routes its block of the replicated tokens, rows go to their experts' ranks over ep (rank j
// of ep holds experts [j * L, (j + 1) * L)), with etp > 1 every etp rank runs its hidden slice
// (the gather over etp is ExchangingDispatcher's); combine unpermutes with the router weights and
// all-gathers the slices back.
#include "dispatch/dispatchers.h"
#include "hybridmoe/collectives.h"

namespace hybridmoe::detail {

namespace {

struct AllToAllHandle : DispatchHandle {
  DispatchPlan plan;
  std::vector<int64_t> slice_rows;
};

}  // namespace

AllToAllDispatcher::AllToAllDispatcher(const MoEOptions& options,
                                       std::shared_ptr<const ParallelGroups> groups)
    : num_experts_(options.num_experts()), groups_(std::move(groups)) {
  TORCH_CHECK(groups_, "AllToAllDispatcher: the parallel groups are null");
}

torch::Tensor AllToAllDispatcher::local_tokens(const torch::Tensor& tokens) {
  slice_rows_ = dist::even_split(tokens.size(0), groups_->slice.size());
  return scatter_to_slices(tokens, groups_->slice, slice_rows_);
}

double AllToAllDispatcher::aux_scale() const {
  return 1.0 / static_cast<double>(groups_->slice.size());
}

TokenExchange AllToAllDispatcher::prepare(const torch::Tensor& mine, const RouterOutput& routing,
                                          const MoECallOptions& /*call*/,
                                          torch::Tensor* routed_per_expert) {
  const auto& g = *groups_;
  auto h = std::make_shared<AllToAllHandle>();
  h->slice_rows = slice_rows_;
  // 1. Plan over all E experts and permute: rows sorted by global expert are in slot order.
  h->plan = make_plan(routing, mine.size(0), num_experts_);
  *routed_per_expert = h->plan.counts;
  TokenExchange x;
  x.send_rows = permute(mine, h->plan);
  x.send_counts = h->plan.counts_host;
  x.group = g.ep;
  x.etp = g.etp;
  // 2. What every ep rank sends to each of this rank's experts.
  if (g.ep.size() > 1) x.recv_counts = dist::exchange_counts(x.send_counts, g.ep);
  x.finish = h;
  return x;
}

torch::Tensor AllToAllDispatcher::finish(const torch::Tensor& returned, DispatchHandle& handle) {
  auto& h = static_cast<AllToAllHandle&>(handle);
  return gather_from_slices(unpermute(returned, h.plan), groups_->slice, h.slice_rows);
}

}  // namespace hybridmoe::detail
