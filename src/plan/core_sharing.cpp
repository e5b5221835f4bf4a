// core_sharing.cpp — see plan.h: ranks that share a node's cores. The cores this process may run
// on (the probe's figure; cpu_runtime.h's usable_cores), and the pipeline's time in slots when a
// node has fewer cores than ranks, so that a rank idle in a fill or drain slot hands its core to
// the ranks still busy.
//
// The model (processor sharing within each pipeline slot):
//   Every rank runs one thread. The machine figures are measured with every rank busy at once
//   (probe_machine), so they already hold a rank's share of the cores when all n ranks of a node
//   run: min(1, c / n) of a core, c the node's cores. When only a of them run (the others wait in
//   a pipeline bubble: blocked in a receive, off the CPU), each runs on min(1, c / a) of a core.
//   A slot in which a > 0 ranks of a node are busy therefore takes
//       f(a) = min(1, c / n) / min(1, c / a)
//   of the all-busy slot time on that node (f(n) = 1; f = 1 for every a when c >= n: today's
//   model), and a slot lasts as long as its slowest node: max over nodes of f. The pipeline takes
//   sum over its M + pp - 1 slots (1F1B: stage s busy in slots s .. s + M - 1) of that, in units
//   of one all-busy slot.
//   With one node and c <= n, f(a) = max(a, c) / n, so the slots sum to at least both lower
//   bounds of any schedule: the ranks' total work over the cores (M slots; the sum of a over the
//   slots is n M) and the chain of M + pp - 1 slots with every busy rank on a core of its own
//   ((M + pp - 1) c / n). It is M — no bubble — when every slot's busy ranks fill the cores (a
//   stage holds >= c ranks: pp 2 of 2 ranks on 2 cores); with pp 4 of one rank on 2 cores a
//   slot of 1 or 2 busy ranks takes half an all-busy slot. A node's idle cores never help another
//   node's ranks.
//   The whole slot scales, communication included: on one node the collectives are copies over
//   loopback (the probe measures them with every rank busy, so they are CPU work like the
//   compute), and what a rank waits for in them is other busy ranks. For links between nodes this
//   overstates the gain of the fill and drain slots (the wire does not speed up).
//   Outside the pipeline (pp = 1, the gradient sync, the optimizer) every rank is busy at once,
//   so those terms keep the all-busy figures; layouts without a pipeline predict as before.
#include <algorithm>
#include <vector>

#include "hybridmoe/cpu_runtime.h"
#include "hybridmoe/plan.h"

namespace hybridmoe::plan {

int64_t local_cores() {
  return usable_cores();
}

double core_share_factor(int64_t busy, int64_t ranks, int64_t cores) {
  TORCH_CHECK(cores >= 1, "core_share_factor: cores must be >= 1, got ", cores);
  TORCH_CHECK(ranks >= 1 && busy >= 0 && busy <= ranks,
              "core_share_factor: need 0 <= busy <= ranks and ranks >= 1, got busy ", busy, " of ",
              ranks);
  if (busy == 0) return 0.0;
  const double c = static_cast<double>(cores);
  const double all_busy = std::min(1.0, c / static_cast<double>(ranks));
  return all_busy / std::min(1.0, c / static_cast<double>(busy));
}

double pipeline_slots(const ParallelConfig& par, int64_t micro_batches, int64_t ranks_per_node,
                      int64_t cores) {
  TORCH_CHECK(cores >= 1, "pipeline_slots: cores must be >= 1, got ", cores);
  TORCH_CHECK(micro_batches >= 1, "pipeline_slots: micro_batches must be >= 1, got ",
              micro_batches);
  const int64_t world = par.world_size(), pp = par.pp, M = micro_batches;
  // 1. Ranks of each stage on each node (nodes of ranks_per_node consecutive ranks).
  const int64_t per_node = ranks_per_node > 0 ? std::min(ranks_per_node, world) : world;
  const int64_t nodes = (world + per_node - 1) / per_node;
  std::vector<std::vector<int64_t>> on_node(nodes, std::vector<int64_t>(pp, 0));
  std::vector<int64_t> node_ranks(nodes, 0);
  for (int64_t r = 0; r < world; ++r) {
    ++on_node[r / per_node][rank_coords(par, r).pp];
    ++node_ranks[r / per_node];
  }
  // 2. Each slot: its busy stages, the slowest node's share factor.
  double slots = 0;
  for (int64_t j = 0; j < M + pp - 1; ++j) {
    double slowest = 0;
    for (int64_t node = 0; node < nodes; ++node) {
      int64_t busy = 0;
      for (int64_t s = std::max<int64_t>(0, j - M + 1); s <= std::min(j, pp - 1); ++s)
        busy += on_node[node][s];
      slowest = std::max(slowest, core_share_factor(busy, node_ranks[node], cores));
    }
    slots += slowest;
  }
  return slots;
}

}  // namespace hybridmoe::plan
