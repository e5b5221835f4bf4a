// replicate.h — hot-expert replication (FasterMoE's shadowing, PPoPP'22), a decision of the token
// dispatcher: each step, from the per-expert counts of every ep rank, a policy picks experts whose
// weights are all-gathered from their owner to every ep rank (with etp > 1: each etp rank's hidden
// slice over its ep group), and the tokens routed to them are computed where the placement says:
// on their source rank (FasterMoE: they skip the all-to-all), or spread evenly over the owner and
// the replicas. The policy: off, the N hottest experts (tests, benches), or auto — FasterMoE's
// greedy rule: take the next hottest expert while the modelled step time (the most loaded rank's
// expert compute + the token all-to-all + the weight all-gather and its gradient reduce-scatter)
// decreases, with a machine's figures (the planner's MachineSpec, plan.h). This header is
// c10d-free (the MoE options hold these).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace hybridmoe {

namespace plan {
struct MachineSpec;  // plan.h
}

/// Which experts a step replicates.
enum class ReplicateMode {
  kOff,      ///< none: every row goes to its expert's owner
  kHottest,  ///< the N most loaded experts (ReplicateOptions::hottest; ties: lower index)
  kAuto,     ///< FasterMoE's greedy rule on the cost model (replicate_cost)
};

/// Where the rows routed to a replicated expert are computed.
enum class ReplicatePlacement {
  kSource,  ///< on the ep rank that routed them (FasterMoE): they skip the all-to-all
  kSpread,  ///< evenly over the ep ranks (the owner and the replicas; replica_rows)
};

/// "source" or "spread"; anything else is an error naming it.
ReplicatePlacement parse_replicate_placement(const std::string& text);
std::string to_string(ReplicatePlacement placement);

/// The figures of the replication cost model: one rank's GEMM FLOP/s and the token all-to-all's
/// and the weight all-gather's latency (seconds per ring step) and bandwidth (bytes per second).
/// The defaults are MachineSpec's (this project's CPU machines); figures_of takes a probe's or a
/// cluster's.
struct ReplicateFigures {
  TORCH_ARG(double, gemm_flops) = 3e10;
  TORCH_ARG(double, a2a_latency_s) = 300e-6;
  TORCH_ARG(double, a2a_bytes_per_s) = 0.5e9;
  TORCH_ARG(double, gather_latency_s) = 600e-6;
  TORCH_ARG(double, gather_bytes_per_s) = 0.3e9;
  /// The share of a core each rank computes on while every rank of its node is busy: the node's
  /// cores over its ranks (1 or more: a core, or an accelerator, each). Below 1 the ranks share
  /// cores, and the experts' GEMMs take at least all ranks' rows over their cores however evenly
  /// the rows are spread, so replicating pays less. 0: not given — the layer uses this host's
  /// (on_this_host), replicate_cost counts a core each.
  TORCH_ARG(double, cores_per_rank) = 0.0;
};

/// `figures` with cores_per_rank filled in where it is 0: 1 on an accelerator (`on_device`),
/// else this host's usable cores (cpu_runtime.h) over `ranks_per_node`.
/// Example: on 2 cores, on_this_host(ReplicateFigures(), 8, false).cores_per_rank() == 0.25.
ReplicateFigures on_this_host(ReplicateFigures figures, int64_t ranks_per_node, bool on_device);

/// The figures of a machine: its GEMM FLOP/s and its intra-node (or inter-node) all-to-all and
/// all-gather links. Example: figures_of(probe_machine(...), /*inter_node=*/false).
ReplicateFigures figures_of(const plan::MachineSpec& machine, bool inter_node);

/// MoEOptions::replicate. Example: ReplicateOptions().mode(ReplicateMode::kHottest).hottest(2);
/// parse_replicate("auto"), parse_replicate("2"), parse_replicate("off").
struct ReplicateOptions {
  TORCH_ARG(ReplicateMode, mode) = ReplicateMode::kOff;
  /// kHottest: how many experts (1 ..= num_experts).
  TORCH_ARG(int64_t, hottest) = 0;
  /// kAuto: the machine the cost rule models.
  TORCH_ARG(ReplicateFigures, figures) = ReplicateFigures();
  /// Where a replicated expert's rows are computed.
  TORCH_ARG(ReplicatePlacement, placement) = ReplicatePlacement::kSource;
};

/// "off", "auto" or a positive integer N (the N hottest); anything else is an error naming it.
ReplicateOptions parse_replicate(const std::string& text);
/// "off", "auto" or N (the placement is to_string(options.placement())).
std::string to_string(const ReplicateOptions& options);

/// Rows of one replicated expert that ep rank j sends to ep rank k, [P][P] (a[j][j]: rows j
/// computes itself), from rows_per_rank[j], the rows rank j routed to it. kSource: the diagonal.
/// kSpread: rank k computes even_split(total, P)[k] rows; each rank keeps what it can of its own
/// rows and the surplus goes to the ranks short of their share, both in ascending rank order.
/// Example: replica_rows({5, 1, 0}, kSpread) = {{2, 1, 2}, {0, 1, 0}, {0, 0, 0}}.
std::vector<std::vector<int64_t>> replica_rows(const std::vector<int64_t>& rows_per_rank,
                                               ReplicatePlacement placement);

/// What the cost model needs of the layer: expert sizes and the element size in bytes.
struct ReplicateShape {
  int64_t d_model = 0;
  int64_t hidden = 0;         ///< of one rank's slice of an expert (the hidden width / etp)
  int64_t expert_params = 0;  ///< parameters of one rank's slice of an expert (all its tensors)
  int64_t etp = 1;            ///< ranks an expert's hidden width is split over
  int64_t matmuls = 2;        ///< GEMMs per row in the forward (3 with a gated activation)
  int64_t element_bytes = 4;
};

/// The modelled time (seconds) of one forward and backward of the experts and their exchanges
/// when `replicated` (sorted expert indices) are replicated, their rows placed by
/// `placement` (replica_rows). counts[j][e]: rows ep rank j (with etp > 1:
/// its etp group) routes to expert e; expert e lives on rank e / (E / P). Time = 3 x (the most
/// loaded rank's expert GEMMs; with etp > 1 each etp rank runs its slice on its group's rows;
/// with cores_per_rank c < 1 at least all ranks' rows over P c cores) + 4
/// all-to-alls (dispatch and combine, forward and backward; the busiest rank's send or receive
/// bytes, shared by the etp ranks) + with any replica 2 ring all-gathers of the replicated
/// weights (forward) and their gradients' reduce-scatter (backward).
double replicate_cost(const std::vector<std::vector<int64_t>>& counts,
                      const std::vector<int64_t>& replicated, const ReplicateShape& shape,
                      const ReplicateFigures& figures,
                      ReplicatePlacement placement = ReplicatePlacement::kSource);

/// The experts the policy replicates this step, sorted ascending; the same on every rank given
/// the same counts ([P][E] as in replicate_cost). kAuto: experts by descending total count
/// (ties: lower index), each added while replicate_cost decreases.
std::vector<int64_t> choose_replicated(const std::vector<std::vector<int64_t>>& counts,
                                       const ReplicateOptions& options,
                                       const ReplicateShape& shape);

}  // namespace hybridmoe
