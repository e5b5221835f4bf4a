// layer_breakdown.h — where the MoE layer's time goes: route, dispatch, experts and combine, each
// forward and backward. The layer has no timing hooks, so its phases are re-run one by one from the
// same public pieces it is made of (kBreakdownMethod says which), each phase its own autograd graph
// (inputs detached at the phase boundaries) so that each backward can be timed on its own too.
#pragma once

#include <string>

#include <torch/torch.h>

#include "hybridmoe/moe.h"

namespace hybridmoe::bench {

/// Median milliseconds of each phase, forward and backward.
struct PhaseTimes {
  double route_fwd = 0, route_bwd = 0;
  double dispatch_fwd = 0, dispatch_bwd = 0;
  double experts_fwd = 0, experts_bwd = 0;
  double combine_fwd = 0, combine_bwd = 0;
  double sum() const {
    return route_fwd + route_bwd + dispatch_fwd + dispatch_bwd + experts_fwd + experts_bwd +
           combine_fwd + combine_bwd;
  }
};

/// How time_layer_phases obtains the breakdown (the benchmark's `breakdown_method`).
extern const char* const kBreakdownMethod;

/// Times the phases of `moe` (single-process, no shared expert) on x: [T, d_model], `warmup`
/// untimed rounds then the median of `iters`; the loss is out.sum() + aux_loss as in the layer
/// benchmark.
PhaseTimes time_layer_phases(MoEImpl& moe, const torch::Tensor& x, int warmup, int iters);

}  // namespace hybridmoe::bench
