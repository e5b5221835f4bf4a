// hierarchical_all_to_all.cpp — see hybridmoe/detail/hierarchical_all_to_all.h: the two-level
// all-to-all over point-to-point messages of the comm core (send_async / recv, with their
// timeout and errors), and the cross-node traffic of it and of the flat exchange.
#include "hybridmoe/detail/hierarchical_all_to_all.h"

#include <functional>
#include <mutex>
#include <numeric>

#include "hybridmoe/detail/comm_tape.h"
#include "parallel/comm/work.h"

namespace hybridmoe::dist {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Tags of the three rounds (each pair of ranks matches its messages by tag, in order).
constexpr int64_t kCountsTag = 2201, kIntraTag = 2202, kCrossTag = 2203;
// The name of the forward result on a recompute tape.
constexpr const char* kTapeOp = "hierarchical_all_to_all";

std::mutex& traffic_mutex() {
  static std::mutex m;
  return m;
}
CrossNodeTraffic& traffic_total() {
  static CrossNodeTraffic t;
  return t;
}

/// The group's members in blocks of G per node: N blocks; this rank is local index l of block n.
struct NodeShape {
  int64_t G = 1, N = 1, n = 0, l = 0;
  int64_t member(int64_t node, int64_t local) const { return node * G + local; }
};

NodeShape node_shape(const Group& g, int64_t ranks_per_node) {
  TORCH_CHECK(g.is_member(), "hierarchical_all_to_all: this process is not a member of group '",
              g.name, "'");
  const int64_t P = g.size();
  NodeShape s;
  s.G = members_per_node(g.ranks, ranks_per_node, g.name);
  s.N = P / s.G;
  s.n = g.rank / s.G;
  s.l = g.rank % s.G;
  return s;
}

/// `rows` rows shaped like x's.
std::vector<int64_t> shape_of(const torch::Tensor& x, int64_t rows) {
  std::vector<int64_t> shape = x.sizes().vec();
  shape[0] = rows;
  return shape;
}

/// Sends each non-empty block to its peer (not to this rank), then receives what `expected`
/// says each peer sends (an empty block needs no message); `keep` is this rank's own block.
/// Returns the received blocks by peer index; `peer(i)` is the group rank of peer i.
std::vector<torch::Tensor> swap_blocks(const std::vector<torch::Tensor>& blocks,
                                       const std::vector<int64_t>& expected, int64_t self,
                                       const std::function<int64_t(int64_t)>& peer, int64_t tag,
                                       const torch::Tensor& like, const Group& g,
                                       CrossNodeTraffic* traffic) {
  std::vector<PendingWork> sends;
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (static_cast<int64_t>(i) == self || blocks[i].size(0) == 0) continue;
    sends.push_back(send_async(blocks[i], peer(i), tag, g));
    if (traffic != nullptr) {
      traffic->bytes += blocks[i].numel() * blocks[i].element_size();
      traffic->messages += 1;
    }
  }
  std::vector<torch::Tensor> got(expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    if (static_cast<int64_t>(i) == self) {
      got[i] = blocks[i];
    } else if (expected[i] == 0) {
      got[i] = like.new_empty(shape_of(like, 0));
    } else {
      got[i] = recv(shape_of(like, expected[i]), like.options(), peer(i), tag, g);
    }
  }
  for (auto& w : sends) w.wait();
  return got;
}

torch::Tensor exchange(const torch::Tensor& x, const std::vector<int64_t>& out_splits,
                       const std::vector<int64_t>& in_splits, const Group& g, const NodeShape& s,
                       CrossNodeTraffic* traffic) {
  const int64_t P = g.size();
  const int64_t G = s.G, N = s.N;
  // 0. The send counts of every rank of this node: S[l1][k] rows from (n, l1) to member k.
  std::vector<torch::Tensor> count_blocks(G, torch::tensor(in_splits, torch::kInt64).view({1, P}));
  auto counts = swap_blocks(
      count_blocks, std::vector<int64_t>(G, 1), s.l, [&](int64_t l2) { return s.member(s.n, l2); },
      kCountsTag, torch::empty({1, P}, torch::kInt64), g, nullptr);
  std::vector<std::vector<int64_t>> S(G);
  for (int64_t l1 = 0; l1 < G; ++l1) {
    auto c = counts[l1].reshape({P}).contiguous();
    S[l1].assign(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + P);
  }
  // 1. Inside the node: to local rank l2 the rows for (n2, l2), n2 ascending.
  std::vector<int64_t> off(P + 1, 0);
  std::partial_sum(in_splits.begin(), in_splits.end(), off.begin() + 1);
  std::vector<torch::Tensor> to_local(G);
  for (int64_t l2 = 0; l2 < G; ++l2) {
    std::vector<torch::Tensor> parts;
    for (int64_t n2 = 0; n2 < N; ++n2) {
      const int64_t k = s.member(n2, l2);
      parts.push_back(x.narrow(0, off[k], in_splits[k]));
    }
    to_local[l2] = torch::cat(parts).contiguous();
  }
  std::vector<int64_t> from_local_rows(G, 0);
  for (int64_t l1 = 0; l1 < G; ++l1)
    for (int64_t n2 = 0; n2 < N; ++n2) from_local_rows[l1] += S[l1][s.member(n2, s.l)];
  auto from_local = swap_blocks(
      to_local, from_local_rows, s.l, [&](int64_t l2) { return s.member(s.n, l2); }, kIntraTag, x,
      g, nullptr);
  // 2. Across nodes: to (n2, l) the rows of every local rank l1 for (n2, l), l1 ascending.
  std::vector<torch::Tensor> to_node(N);
  for (int64_t n2 = 0; n2 < N; ++n2) {
    std::vector<torch::Tensor> parts;
    for (int64_t l1 = 0; l1 < G; ++l1) {
      int64_t start = 0;
      for (int64_t before = 0; before < n2; ++before) start += S[l1][s.member(before, s.l)];
      parts.push_back(from_local[l1].narrow(0, start, S[l1][s.member(n2, s.l)]));
    }
    to_node[n2] = torch::cat(parts).contiguous();
  }
  std::vector<int64_t> from_node_rows(N, 0);
  for (int64_t n1 = 0; n1 < N; ++n1)
    for (int64_t l1 = 0; l1 < G; ++l1) from_node_rows[n1] += out_splits[s.member(n1, l1)];
  auto from_node = swap_blocks(
      to_node, from_node_rows, s.n, [&](int64_t n2) { return s.member(n2, s.l); }, kCrossTag, x, g,
      traffic);
  // 3. From node n1, local l1 ascending: the flat exchange's source order n1 * G + l1.
  return torch::cat(from_node);
}

struct HierarchicalAllToAllFn : torch::autograd::Function<HierarchicalAllToAllFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const std::vector<int64_t>& output_splits,
                               const std::vector<int64_t>& input_splits, const Group& g,
                               int64_t ranks_per_node, CrossNodeTraffic* traffic) {
    ctx->saved_data["out"] = output_splits;
    ctx->saved_data["in"] = input_splits;
    ctx->saved_data["group"] = detail::pack(g);
    ctx->saved_data["per_node"] = ranks_per_node;
    // A recomputed forward takes the recorded result (no messages); the first one records it.
    dist::CommTape* tape = dist::CommTape::active();
    if (tape != nullptr && dist::CommTape::active_mode() == dist::CommTape::Mode::kReplay)
      return tape->replay(kTapeOp);
    auto y = exchange(x, output_splits, input_splits, g, node_shape(g, ranks_per_node), traffic);
    if (tape != nullptr) tape->record(kTapeOp, y);
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // The conjugate: every row's gradient goes back the way the row came.
    const Group& g = detail::unpack(ctx->saved_data["group"]);
    auto dx = exchange(grads[0].contiguous(), ctx->saved_data["in"].toIntVector(),
                       ctx->saved_data["out"].toIntVector(), g,
                       node_shape(g, ctx->saved_data["per_node"].toInt()), nullptr);
    return {
        dx, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

int64_t members_per_node(const std::vector<int64_t>& ranks, int64_t ranks_per_node,
                         const std::string& name) {
  TORCH_CHECK(ranks_per_node >= 1, "hierarchical_all_to_all: ranks per node should be >= 1, got ",
              ranks_per_node);
  TORCH_CHECK(!ranks.empty(), "hierarchical_all_to_all: group '", name, "' has no members");
  const int64_t P = static_cast<int64_t>(ranks.size());
  auto node_of = [&](int64_t k) { return ranks[k] / ranks_per_node; };
  int64_t G = 0;
  while (G < P && node_of(G) == node_of(0)) ++G;
  TORCH_CHECK(P % G == 0, "hierarchical_all_to_all: group '", name, "' of ", P, " members has ", G,
              " on its first node (nodes of ", ranks_per_node,
              " world ranks); every node should hold the same number of them");
  for (int64_t k = 0; k < P; ++k) {
    TORCH_CHECK(node_of(k) == node_of(k / G * G), "hierarchical_all_to_all: group '", name,
                "' should fill its nodes (of ", ranks_per_node,
                " world ranks) in group-rank order, ", G, " members each, but member ", k,
                " (world rank ", ranks[k], ") is on node ", node_of(k));
  }
  return G;
}

torch::Tensor hierarchical_all_to_all(const torch::Tensor& x,
                                      const std::vector<int64_t>& output_splits,
                                      const std::vector<int64_t>& input_splits, const Group& group,
                                      int64_t ranks_per_node, CrossNodeTraffic* traffic) {
  const int64_t P = group.size();
  TORCH_CHECK(static_cast<int64_t>(output_splits.size()) == P &&
                  static_cast<int64_t>(input_splits.size()) == P,
              "hierarchical_all_to_all: group '", group.name, "' has ", P,
              " ranks, so the splits need ", P, " entries; got ", output_splits.size(),
              " output and ", input_splits.size(), " input splits");
  const int64_t rows = std::accumulate(input_splits.begin(), input_splits.end(), int64_t{0});
  TORCH_CHECK(x.dim() >= 1 && x.size(0) == rows, "hierarchical_all_to_all: x should have ", rows,
              " rows (the input splits' sum), got ", x.sizes());
  if (traffic != nullptr) *traffic = CrossNodeTraffic();
  if (P == 1) return x;
  return HierarchicalAllToAllFn::apply(x.contiguous(), output_splits, input_splits, group,
                                       ranks_per_node, traffic);
}

CrossNodeTraffic flat_cross_node_traffic(const std::vector<int64_t>& input_splits,
                                         int64_t row_bytes, const Group& group,
                                         int64_t ranks_per_node) {
  TORCH_CHECK(ranks_per_node >= 1, "flat_cross_node_traffic: ranks per node should be >= 1, got ",
              ranks_per_node);
  TORCH_CHECK(static_cast<int64_t>(input_splits.size()) == group.size() && group.is_member(),
              "flat_cross_node_traffic: ", input_splits.size(), " splits for group '", group.name,
              "' of ", group.size(), " ranks");
  CrossNodeTraffic t;
  const int64_t my_node = group.ranks[group.rank] / ranks_per_node;
  for (int64_t k = 0; k < group.size(); ++k) {
    if (group.ranks[k] / ranks_per_node == my_node || input_splits[k] == 0) continue;
    t.bytes += input_splits[k] * row_bytes;
    t.messages += 1;
  }
  return t;
}

void record_cross_node_traffic(const CrossNodeTraffic& t) {
  std::lock_guard<std::mutex> lock(traffic_mutex());
  traffic_total().bytes += t.bytes;
  traffic_total().messages += t.messages;
}

CrossNodeTraffic cross_node_traffic_total() {
  std::lock_guard<std::mutex> lock(traffic_mutex());
  return traffic_total();
}

}  // namespace hybridmoe::dist
