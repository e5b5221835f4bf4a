// bench_layer_dist.h — `hmoe bench layer --nproc N --layout tp,dp,ep,etp`: the distributed MoE
// layer on N local ranks at a global shape, with the time in each collective and the bytes moved
// per step, beside the single-process time of the same global step; sweeps over the overlap
// degree D (a2a_overlap_degree), over the adaptive layout's degree r, over hot-expert
// replication (off / auto / N) and, where the ep group spans nodes, over the all-to-all algorithm
// (flat / hierarchical: step time, bytes and messages across nodes), with a skewed router (--skew)
// to make the imbalance visible.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench_layer.h"
#include "hybridmoe/dist.h"
#include "hybridmoe/parallel.h"
#include "hybridmoe/replicate.h"

namespace hybridmoe::bench {

/// The sweeps beside the layout's own record.
struct DistLayerBenchOptions {
  /// a2a_overlap_degree values timed against each other (layouts with ep > 1 and etp = 1; empty:
  /// none). Each reports step time, time blocked in communication and the fraction of the D = 1
  /// all-to-all time no longer blocking.
  std::vector<int64_t> overlap_degrees = {1, 2, 4};
  /// Also time the adaptive expert layout on the layout's tp × dp (ep = etp = 1) at every valid r.
  bool adaptive = true;
  /// Hot-expert replication settings ("off", "auto", N) timed against each other on the layout
  /// (ep > 1; empty: none), each but "off" with every placement of `placements`. Each reports
  /// step time, the slowest rank's expert rows, the bytes moved, the choice, and the cost model's
  /// time for the choice with `figures` and with `cluster` (when given: a cluster that is not at
  /// hand, e.g. --cluster-flops/--cluster-bw).
  std::vector<std::string> replicate;
  std::vector<ReplicatePlacement> placements = {ReplicatePlacement::kSource};
  ReplicateFigures figures;
  c10::optional<ReplicateFigures> cluster;
  /// Ranks per node (nodes: consecutive world ranks) for the layer's groups; 0: the launcher's
  /// LOCAL_WORLD_SIZE (ParallelGroups::build). One host can play several nodes this way.
  int64_t ranks_per_node = 0;
  /// Time a2a_algorithm flat against hierarchical where the layout's ep group spans nodes with
  /// more than one rank on each (else the record says why not): step time and the bytes and
  /// messages that cross nodes per step, summed over ranks.
  bool a2a_algorithms = true;
};

/// Runs on every rank of `world` (collective); the record is complete on rank 0.
/// args.tokens is the global batch: each data-parallel rank gets tokens / dp of it.
/// Variants of a sweep are timed interleaved, step by step, each step after a barrier; a step's
/// time is the median over iterations, the slowest rank's; communication is the ranks' mean.
nlohmann::json run_layer_bench_distributed(const LayerBenchArgs& args, const ParallelConfig& layout,
                                           dist::World& world,
                                           const DistLayerBenchOptions& sweeps = {});

}  // namespace hybridmoe::bench
