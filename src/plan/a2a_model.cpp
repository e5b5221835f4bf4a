// a2a_model.cpp — see plan.h: the planner's model of the token all-to-all under each algorithm
// (flat: a message per pair of ranks, intra- or inter-node by where the peer lives; hierarchical:
// Tutel's 2DH in an intra-node and an inter-node round) and when the MoE layer runs the
// hierarchical one (the layer's own rule, exchange_algorithm).
#include <algorithm>
#include <set>
#include <sstream>

#include "hybridmoe/plan.h"

namespace hybridmoe::plan {

namespace {

// The members of `group` (world ranks) on the node of world rank `rank`, itself included.
int64_t members_on_node_of(const std::vector<int64_t>& group, int64_t rank,
                           int64_t ranks_per_node) {
  if (ranks_per_node <= 0) return static_cast<int64_t>(group.size());
  return std::count_if(group.begin(), group.end(),
                       [&](int64_t r) { return r / ranks_per_node == rank / ranks_per_node; });
}

}  // namespace

double flat_a2a_time(int64_t P, int64_t G, double bytes, const LinkFit& intra,
                     const LinkFit& inter) {
  TORCH_CHECK(P >= 1 && G >= 1 && G <= P, "flat_a2a_time: expected 1 <= on_node <= group_size, ",
              "got on_node ", G, " of ", P);
  const double share = bytes / static_cast<double>(P);  // one message: n / P bytes
  return static_cast<double>(G - 1) * (intra.latency_s + share / intra.bytes_per_s) +
         static_cast<double>(P - G) * (inter.latency_s + share / inter.bytes_per_s);
}

double hierarchical_a2a_time(int64_t P, int64_t G, double bytes, const LinkFit& intra,
                             const LinkFit& inter, double stream_bytes_per_s) {
  TORCH_CHECK(G >= 1 && P >= G && P % G == 0,
              "hierarchical_a2a_time: expected per_node dividing group_size, got per_node ", G,
              " of ", P);
  TORCH_CHECK(stream_bytes_per_s > 0, "hierarchical_a2a_time: stream_bytes_per_s must be > 0, got ",
              stream_bytes_per_s);
  const int64_t N = P / G;
  const double local_peers = static_cast<double>(G - 1), remote_nodes = static_cast<double>(N - 1);
  // 0. The node's send counts: P int64 to each local peer.
  const double counts = local_peers * (intra.latency_s + 8.0 * P / intra.bytes_per_s);
  // 1. Inside the node: n / G bytes to each local peer.
  const double inside = local_peers * (intra.latency_s + bytes / G / intra.bytes_per_s);
  // 2. Across nodes: n / N bytes to the same local index on each other node.
  const double across = remote_nodes * (inter.latency_s + bytes / N / inter.bytes_per_s);
  // 3. The rearrangements of the rows.
  const double copies = kPassesPerHierarchicalExchange * bytes / stream_bytes_per_s;
  return counts + inside + across + copies;
}

GroupKind exchange_group(const Layout& l) {
  return l.is_adaptive() ? GroupKind::kStage : GroupKind::kEp;
}

double token_a2a_time(const Layout& l, A2AAlgorithm algorithm, int64_t ranks_per_node, double bytes,
                      const MachineSpec& machine) {
  const LinkFit& intra = machine.link(Collective::kAllToAll, false);
  const LinkFit& inter = machine.link(Collective::kAllToAll, true);
  const auto groups = all_group_ranks(l.par, exchange_group(l));
  // The distinct (P, G) of the members: the slowest one counts.
  std::set<std::pair<int64_t, int64_t>> shapes;
  for (const auto& g : groups)
    for (int64_t r : g)
      shapes.emplace(static_cast<int64_t>(g.size()), members_on_node_of(g, r, ranks_per_node));
  double slowest = 0;
  for (const auto& [P, G] : shapes) {
    double t = 0;
    if (algorithm == A2AAlgorithm::kFlat) {
      t = flat_a2a_time(P, G, bytes, intra, inter);
    } else {
      // check_hierarchical holds: every node of a group holds G members.
      TORCH_CHECK(ranks_per_node > 0 && G > 1 && G < P && P % G == 0,
                  "token_a2a_time: the hierarchical all-to-all needs every node of the ",
                  to_string(exchange_group(l)), " group to hold the same number (> 1) of its ", P,
                  " members on several nodes; layout ", l.to_string(), ", ranks per node ",
                  ranks_per_node, ": a node holds ", G);
      t = hierarchical_a2a_time(P, G, bytes, intra, inter, machine.stream_bytes_per_s);
    }
    slowest = std::max(slowest, t);
  }
  return slowest;
}

std::string check_hierarchical(const ModelSpec& m, const ClusterSpec& cluster, const Layout& l) {
  const LayerTraffic t = layer_traffic(m, l);
  if (m.moe_layers() == 0 || t.a2a <= 0 || t.a2a_group <= 1)
    return "the layout has no token all-to-all";
  std::ostringstream why;
  if (l.overlap != 1) {
    why << "a2a overlap degree " << l.overlap
        << " > 1: the chunked overlap pipelines flat all-to-alls";
    return why.str();
  }
  const GroupKind kind = exchange_group(l);
  if (cluster.ranks_per_node <= 0 || !spans_nodes(l.par, kind, cluster.ranks_per_node)) {
    why << "the " << to_string(kind) << " group lies in one node: the layer runs it flat";
    return why.str();
  }
  for (const auto& g : all_group_ranks(l.par, kind)) {
    try {
      const A2AAlgorithm runs = exchange_algorithm(A2AAlgorithm::kHierarchical, g,
                                                   cluster.ranks_per_node, to_string(kind));
      if (runs != A2AAlgorithm::kHierarchical) {
        why << "the " << to_string(kind) << " group has "
            << (crosses_nodes(g, cluster.ranks_per_node) ? "one member per node"
                                                         : "a group in one node")
            << ": the layer runs it flat";
        return why.str();
      }
    } catch (const c10::Error& e) {
      return e.what_without_backtrace();
    }
  }
  return "";
}

}  // namespace hybridmoe::plan
