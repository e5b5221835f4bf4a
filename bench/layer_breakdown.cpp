// layer_breakdown.cpp — see layer_breakdown.h. The pieces are those MoEImpl::forward runs on one
// process (its local dispatcher: make_plan + permute to dispatch, unpermute to combine).
#include "layer_breakdown.h"

#include <chrono>
#include <vector>

#include "bench_common.h"
#include "hybridmoe/detail/dispatch.h"

namespace hybridmoe::bench {

const char* const kBreakdownMethod =
    "phases re-run one by one from the layer's public pieces on the same input, each its own "
    "autograd graph: route = gate->route (+ aux and z losses); dispatch = make_plan + permute "
    "(the local dispatcher); experts = experts->run; combine = unpermute + the loss sum; backward "
    "of each from the gradient its successor produced, in reverse order. Not included: the "
    "layer's routing statistics (bincount, entropy, choice table) and the shared autograd graph";

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// One round: the eight phase times of one forward + backward.
PhaseTimes one_round(MoEImpl& moe, const torch::Tensor& x) {
  PhaseTimes t;
  // Forward, phase by phase, each from detached inputs.
  auto x_route = x.detach().requires_grad_(true);
  auto t0 = Clock::now();
  RouterOutput routing = moe.gate->route(x_route);
  auto aux = routing.aux_loss + routing.z_loss;
  t.route_fwd = ms_since(t0);

  RouterOutput to_dispatch = routing;
  to_dispatch.weight = routing.weight.detach().requires_grad_(true);  // [A]
  auto x_dispatch = x.detach().requires_grad_(true);
  t0 = Clock::now();
  DispatchPlan plan = make_plan(to_dispatch, x_dispatch.size(0), moe.options.num_experts());
  auto rows = permute(x_dispatch, plan);  // [A, d]
  t.dispatch_fwd = ms_since(t0);

  auto rows_in = rows.detach().requires_grad_(true);
  t0 = Clock::now();
  auto y = moe.experts->run(rows_in, plan.counts_host);  // [A, d]
  t.experts_fwd = ms_since(t0);

  auto y_in = y.detach().requires_grad_(true);
  t0 = Clock::now();
  auto loss = unpermute(y_in, plan).sum();
  t.combine_fwd = ms_since(t0);

  // Backward in reverse, each phase from the gradient its successor left on the boundary.
  t0 = Clock::now();
  loss.backward();
  t.combine_bwd = ms_since(t0);
  t0 = Clock::now();
  y.backward(y_in.grad());
  t.experts_bwd = ms_since(t0);
  t0 = Clock::now();
  rows.backward(rows_in.grad());
  t.dispatch_bwd = ms_since(t0);
  t0 = Clock::now();
  torch::autograd::backward({routing.weight, aux},
                            {to_dispatch.weight.grad(), torch::ones_like(aux)});
  t.route_bwd = ms_since(t0);
  return t;
}

}  // namespace

PhaseTimes time_layer_phases(MoEImpl& moe, const torch::Tensor& x, int warmup, int iters) {
  TORCH_CHECK(!moe.is_distributed(), "layer breakdown: expected a single-process layer");
  TORCH_CHECK(!moe.shared_expert,
              "layer breakdown: expected no shared expert, got shared_expert_hidden=",
              moe.options.shared_expert_hidden());
  TORCH_CHECK(iters >= 1, "layer breakdown: expected iters >= 1, got ", iters);
  for (int i = 0; i < warmup; ++i) one_round(moe, x);
  std::vector<PhaseTimes> rounds;
  for (int i = 0; i < iters; ++i) rounds.push_back(one_round(moe, x));
  auto med = [&](double PhaseTimes::*field) {
    std::vector<double> v;
    for (const auto& r : rounds) v.push_back(r.*field);
    return median(v);
  };
  PhaseTimes m;
  for (auto field : {&PhaseTimes::route_fwd, &PhaseTimes::route_bwd, &PhaseTimes::dispatch_fwd,
                     &PhaseTimes::dispatch_bwd, &PhaseTimes::experts_fwd, &PhaseTimes::experts_bwd,
                     &PhaseTimes::combine_fwd, &PhaseTimes::combine_bwd})
    m.*field = med(field);
  return m;
}

}  // namespace hybridmoe::bench
