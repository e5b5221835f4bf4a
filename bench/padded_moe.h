// padded_moe.h — the padded-batched MoE layer of GShard and Tutel, built here as a benchmark
// baseline: every expert's tokens scattered into one [E, capacity, d] buffer padded to the largest
// expert's count (Tutel's capacity_factor 0: nothing dropped), one batched matmul (torch::bmm) per
// projection, the rows gathered back and combined with the gate weights. Same weights, gate and
// result as hybridmoe's MoE layer (tests/bench/padded_moe_test.cpp proves it); only the way the
// expert GEMMs are batched differs.
#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "hybridmoe/experts.h"
#include "hybridmoe/gate.h"
#include "hybridmoe/moe.h"

namespace hybridmoe::bench {

/// What the padded layer returns: the output and auxiliary loss as MoEOutput's, and the padded
/// buffer's capacity (the largest expert's row count).
struct PaddedMoEOutput {
  torch::Tensor output;    // [T, d_model]
  torch::Tensor aux_loss;  // []
  int64_t capacity = 0;
};

/// The expert half of the padded layer on a routing result: scatter into [E, capacity, d], one
/// bmm per projection (w1, w3 for SwiGLU, then w2, each bias added to every slot), gather back,
/// combine weighted by routing.weight. x: [T, d]; w: GroupedExperts' layout ([E, d, h], ...).
/// Returns [T, d]; *capacity receives the buffer's capacity when given.
torch::Tensor padded_experts_combine(const torch::Tensor& x, const RouterOutput& routing,
                                     const ExpertWeights& w, Activation activation,
                                     int64_t* capacity = nullptr);

/// The whole padded layer with `moe`'s gate and grouped experts: route, then
/// padded_experts_combine. Needs a single-process layer with the built-in grouped experts and no
/// shared expert. x: [T, d_model].
PaddedMoEOutput padded_moe_forward(MoEImpl& moe, const torch::Tensor& x);

}  // namespace hybridmoe::bench
