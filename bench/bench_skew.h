// bench_skew.h — skewed routing for `hmoe bench layer --skew ALPHA`: a fixed, reproducible router
// bias that gives the experts Zipf(alpha)-distributed popularity (expert e chosen first with
// probability about (e + 1)^-alpha / H), and the imbalance figures of a routed step.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "hybridmoe/moe.h"

namespace hybridmoe::bench {

/// The options of a layer that can take the skew: alpha > 0 needs the "topk" gate (refused
/// otherwise, naming it) and sets its selection bias on the logits (selection_bias,
/// softmax_over_topk); alpha == 0 leaves the options as they are.
MoEOptions with_skew(MoEOptions options, double alpha);

/// Sets `layer`'s selection bias so that the first choice follows Zipf(alpha): b_e =
/// s * log((e + 1)^-alpha), s = std(logits of x) * sqrt(6) / pi (the Gumbel scale of the
/// logits, so that argmax(logits + b) ~ softmax(b / s)). Deterministic given the layer and x.
/// x: [T, d_model]. alpha == 0: nothing.
void set_zipf_bias(MoEImpl& layer, double alpha, const torch::Tensor& x);

/// max / mean of positive-mean values (1: balanced); 0 for an empty or all-zero list.
double max_over_mean(const std::vector<double>& values);

}  // namespace hybridmoe::bench
