// alltoall_dispatcher.cpp — the fixed expert layout's dispatcher: each rank of the slice (tp)
// group routes its block of the replicated tokens, rows go to their experts' ranks over ep (rank j
// of ep holds experts [j * L, (j + 1) * L)), with etp > 1 every etp rank runs its hidden slice
// (the gather over etp is ExchangingDispatcher's); combine unpermutes with the router weights and
// all-gathers the slices back.
#include "dispatch/dispatchers.h"
#include "hybridmoe/collectives.h"
#include "hybridmoe/parallel.h"

namespace hybridmoe::detail {

namespace {

struct AllToAllHandle : DispatchHandle {
  DispatchPlan plan;
  std::vector<int64_t> slice_rows;
};

}  // namespace

AllToAllDispatcher::AllToAllDispatcher(const MoEOptions& options,
                                       std::shared_ptr<const ParallelGroups> groups)
    : ExchangingDispatcher(std::move(groups)), num_experts_(options.num_experts()) {}

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
  return gather_slices(unpermute(returned, h.plan), h.slice_rows);
}

}  // namespace hybridmoe::detail
