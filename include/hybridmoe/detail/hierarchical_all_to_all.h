// hierarchical_all_to_all.h — Tutel's two-level ("2DH") all-to-all over a group whose members lie
// on several nodes: rows first move inside each node so that local rank l holds everything the
// node sends to the ranks of local index l, then one message per node pair crosses the network,
// arriving in the flat exchange's order. The same result as dist::all_to_all bit for bit (it only
// moves rows); an autograd function whose backward is the same exchange with the splits swapped.
// The MoE layer's token exchange runs it with MoEOptions::a2a_algorithm = kHierarchical
// (exchange.h), and counts the cross-node traffic of every exchange it runs here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "hybridmoe/collectives.h"

namespace hybridmoe::dist {

/// What one rank's part of an exchange sends across nodes: bytes of rows and messages that carry
/// rows (a peer that gets no rows gets no message).
struct CrossNodeTraffic {
  int64_t bytes = 0;
  int64_t messages = 0;
};

/// The members of a group (its world `ranks` in group-rank order, `name` for errors) on each node
/// it spans (nodes of ranks_per_node consecutive world ranks): G such that group rank k is local
/// rank k % G of the group's k / G-th node. Refused, naming the group and the member out of
/// place, unless the members fill their nodes in group-rank order, G on each.
///
/// Example:
///   members_per_node({0, 2, 4, 6}, /*ranks_per_node=*/4, "ep");  // 2 (nodes {0,2}, {4,6})
///   members_per_node({0, 1, 2, 3}, 3, "ep");  // error: 3 on its first node, 1 on the next
int64_t members_per_node(const std::vector<int64_t>& ranks, int64_t ranks_per_node,
                         const std::string& name);

/// all_to_all(x, output_splits, input_splits, group) in two levels. Nodes hold ranks_per_node
/// consecutive world ranks; the group's members must fill its nodes in group-rank order, the
/// same number on each (group rank k is local rank k % G of the k / G-th node of the group),
/// else an error names the group and the member out of place. Every rank of a node first learns
/// the node's send counts (one message per local peer), so intermediate ranks know the rows they
/// hold. `traffic` (optional) receives this rank's cross-node sends. The forward result is
/// taped like the flat all-to-all's (comm_tape.h): a recomputed region replays it without
/// sending anything.
///
/// Example:
///   // 4 ranks on 2 nodes of 2: rank 0 sends 1 row to each rank.
///   auto y = hierarchical_all_to_all(x, out_splits, {1, 1, 1, 1}, world->group(), 2);
torch::Tensor hierarchical_all_to_all(const torch::Tensor& x,
                                      const std::vector<int64_t>& output_splits,
                                      const std::vector<int64_t>& input_splits, const Group& group,
                                      int64_t ranks_per_node, CrossNodeTraffic* traffic = nullptr);

/// What the flat all_to_all with these input splits sends across nodes from this rank (rows of
/// `row_bytes` bytes; one message per peer on another node that gets rows).
CrossNodeTraffic flat_cross_node_traffic(const std::vector<int64_t>& input_splits,
                                         int64_t row_bytes, const Group& group,
                                         int64_t ranks_per_node);

/// The process's running total of the cross-node traffic of token exchanges: the MoE layer's
/// exchange (exchange.h) adds what each of its exchanges sent across nodes, with the algorithm it
/// ran. Benchmarks read its growth over a step. Thread-safe.
void record_cross_node_traffic(const CrossNodeTraffic& t);
CrossNodeTraffic cross_node_traffic_total();

}  // namespace hybridmoe::dist
