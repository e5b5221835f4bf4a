// bench_layer_dist.h — `hmoe bench layer --nproc N --layout tp,dp,ep,etp`: the distributed MoE
// layer on N local ranks at a global shape, with the time in each collective and the bytes moved
// per step, beside the single-process time of the same global step; sweeps over the overlap
// degree D (a2a_overlap_degree) and over the adaptive layout's degree r.
#pragma once

#include <vector>

#include <nlohmann/json.hpp>

#include "bench_layer.h"
#include "hybridmoe/dist.h"
#include "hybridmoe/parallel.h"

namespace hybridmoe::bench {

/// The sweeps beside the layout's own record.
struct DistLayerBenchOptions {
  /// a2a_overlap_degree values timed against each other (layouts with ep > 1 and etp = 1; empty:
  /// none). Each reports step time, time blocked in communication and the fraction of the D = 1
  /// all-to-all time no longer blocking.
  std::vector<int64_t> overlap_degrees = {1, 2, 4};
  /// Also time the adaptive expert layout on the layout's tp × dp (ep = etp = 1) at every valid r.
  bool adaptive = true;
};

/// Runs on every rank of `world` (collective); the record is complete on rank 0.
/// args.tokens is the global batch: each data-parallel rank gets tokens / dp of it.
/// Variants of a sweep are timed interleaved, step by step, each step after a barrier; a step's
/// time is the median over iterations, the slowest rank's; communication is the ranks' mean.
nlohmann::json run_layer_bench_distributed(const LayerBenchArgs& args, const ParallelConfig& layout,
                                           dist::World& world,
                                           const DistLayerBenchOptions& sweeps = {});

}  // namespace hybridmoe::bench
