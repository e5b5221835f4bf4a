// bench_layer_dist.h — `hmoe bench layer --nproc N --layout tp,dp,ep,etp`: the distributed MoE
// layer on N local ranks at a global shape, with the time in each collective and the bytes moved
// per step, beside the single-process time of the same global step.
#pragma once

#include <nlohmann/json.hpp>

#include "bench_layer.h"
#include "hybridmoe/dist.h"
#include "hybridmoe/parallel.h"

namespace hybridmoe::bench {

/// Runs on every rank of `world` (collective); the record is complete on rank 0.
/// args.tokens is the global batch: each data-parallel rank gets tokens / dp of it.
nlohmann::json run_layer_bench_distributed(const LayerBenchArgs& args, const ParallelConfig& layout,
                                           dist::World& world);

}  // namespace hybridmoe::bench
