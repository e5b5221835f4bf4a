// a2a_algorithm_dist_test.cpp — MoEOptions::a2a_algorithm on the distributed layer: with the
// exchange group spread over several "nodes" (ranks_per_node set on the groups: the algorithm only
// reads it, so one host can play several nodes), the hierarchical (Tutel 2DH) token exchange gives
// the flat one's output, aux loss, input gradient and every parameter gradient bit for bit in
// float64 (it only moves rows: the experts see the same rows in the same order), over uneven
// token counts, a rank without tokens and experts without rows; the fixed layout (etp 1 and 2) and
// the adaptive one. That the two-level exchange really ran is read from the comm statistics (its
// point-to-point messages, no flat all-to-all), and the cross-node traffic the layer counts is
// checked: the same bytes cross for both algorithms, in no more messages for the hierarchical one.
// Where the group lies in one node or has one member per node, the flat exchange runs (the
// documented choice). Refused: uneven nodes, the chunked overlap, replication.
#include <gtest/gtest.h>

#include "hybridmoe/collectives.h"
#include "hybridmoe/comm_stats.h"
#include "hybridmoe/detail/hierarchical_all_to_all.h"
#include "hybridmoe/moe.h"
#include "hybridmoe/parallel.h"
#include "support/compare.h"
#include "support/multirank.h"

namespace hybridmoe {
namespace {

using testing::RankContext;
using testing::run_on_ranks;
using testing::throws_with;
using Results = std::vector<std::pair<std::string, torch::Tensor>>;

struct Case {
  ParallelConfig layout;
  int64_t ranks_per_node;
  int64_t experts;
  bool two_levels;          // whether the exchange group spans nodes with > 1 member on each
  int64_t adaptive_r = -1;  // >= 0: the adaptive layout at this r
};

// One forward and backward of the layer: routing counts, output, aux loss, input gradient and
// every parameter gradient.
Results step(MoE& moe, const torch::Tensor& x_in, const torch::Tensor& dy) {
  auto x = x_in.clone().requires_grad_(true);
  auto out = moe(x);
  ((out.output * dy).sum() + out.aux_loss).backward();
  Results r = {{"tokens_per_expert", out.stats.tokens_per_expert},
               {"output", out.output.detach()},
               {"aux_loss", out.aux_loss.detach()},
               {"dx", x.grad()}};
  for (auto& kv : moe->named_parameters()) r.emplace_back(kv.key(), kv.value().grad());
  return r;
}

// What one variant of the layer cost: calls of the flat all-to-all and of point-to-point sends,
// and the cross-node traffic the layer counted (summed over the world).
struct Cost {
  int64_t all_to_all_calls = 0, p2p_sends = 0;
  dist::CrossNodeTraffic traffic;
};

void run_case(RankContext& ctx, const Case& c) {
  auto groups = std::make_shared<ParallelGroups>(ParallelGroups::build(c.layout, ctx.world));
  groups->ranks_per_node = c.ranks_per_node;
  const int64_t d = 6;
  auto opts = MoEOptions(d, c.experts).d_hidden(8).top_k(2);
  torch::manual_seed(5);
  MoE full(opts);
  full->to(torch::kFloat64);
  {
    // A router that prefers expert 0 and never picks some experts: runs without rows.
    torch::NoGradGuard ng;
    auto w = full->gate->named_parameters()["weight"];
    w[0].fill_(3.0);
    if (c.experts > 2) w[c.experts - 1].fill_(-5.0);
  }
  if (c.adaptive_r >= 0) opts.expert_layout(ExpertLayout::kAdaptive).adaptive_r(c.adaptive_r);
  // Uneven tokens per data-parallel rank, none on dp rank 1.
  const int64_t dp_rank = groups->coords().dp;
  const int64_t tokens = dp_rank == 1 ? 0 : 3 + 4 * dp_rank;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(40 + dp_rank);
  auto x = torch::randn({tokens, d}, gen, torch::kFloat64).abs();
  auto dy = torch::randn({tokens, d}, gen, torch::kFloat64);
  const std::string what = c.layout.to_string() + " nodes of " + std::to_string(c.ranks_per_node) +
                           " E=" + std::to_string(c.experts) +
                           (c.adaptive_r >= 0 ? " adaptive r=" + std::to_string(c.adaptive_r) : "");
  std::vector<Results> results;
  std::vector<Cost> costs;
  for (auto algorithm : {A2AAlgorithm::kFlat, A2AAlgorithm::kHierarchical}) {
    MoE moe(MoEOptions(opts).a2a_algorithm(algorithm), groups);
    moe->to(torch::kFloat64);
    moe->load_shard_from(*full);
    dist::barrier(groups->world);
    dist::reset_comm_stats();
    const auto before = dist::cross_node_traffic_total();
    results.push_back(step(moe, x, dy));
    const auto after = dist::cross_node_traffic_total();
    auto stats = dist::comm_stats();
    auto sums = dist::all_reduce_sum(
        torch::tensor({after.bytes - before.bytes, after.messages - before.messages},
                      torch::kInt64),
        groups->world);
    Cost cost;
    cost.all_to_all_calls = stats["all_to_all"].calls;
    cost.p2p_sends = stats["p2p_send"].calls;
    cost.traffic = {sums[0].item<int64_t>(), sums[1].item<int64_t>()};
    costs.push_back(cost);
  }
  // 1. Bit for bit: the hierarchical exchange only moves rows, into the flat one's order.
  ASSERT_EQ(results[1].size(), results[0].size()) << what;
  for (size_t i = 0; i < results[0].size(); ++i) {
    const auto& [name, expect] = results[0][i];
    const auto& got = results[1][i].second;
    ASSERT_EQ(expect.defined(), got.defined()) << what << " " << name;
    if (!expect.defined()) continue;
    EXPECT_TRUE(torch::equal(got, expect)) << what << " " << name;
  }
  // 2. Which exchange ran: the two-level one sends point to point and runs no flat all-to-all;
  //    flat otherwise (the adaptive layout at r = 0 exchanges no tokens at all).
  const bool exchanges = c.adaptive_r != 0;
  EXPECT_EQ(costs[0].all_to_all_calls > 0, exchanges) << what;
  EXPECT_EQ(costs[0].p2p_sends, 0) << what;
  if (c.two_levels && exchanges) {
    EXPECT_EQ(costs[1].all_to_all_calls, 0) << what;
    EXPECT_GT(costs[1].p2p_sends, 0) << what;
  } else {
    EXPECT_EQ(costs[1].all_to_all_calls, costs[0].all_to_all_calls) << what;
    EXPECT_EQ(costs[1].p2p_sends, 0) << what;
  }
  // 3. Cross-node traffic counted by the layer: every row that changes node crosses once with
  //    either algorithm; the two-level exchange bundles it into at most as many messages.
  EXPECT_EQ(costs[1].traffic.bytes, costs[0].traffic.bytes) << what;
  EXPECT_LE(costs[1].traffic.messages, costs[0].traffic.messages) << what;
  if (c.two_levels && exchanges) {
    EXPECT_GT(costs[0].traffic.bytes, 0) << what;
    EXPECT_LT(costs[1].traffic.messages, costs[0].traffic.messages) << what;
  }
}

TEST(A2AAlgorithm, HierarchicalEqualsFlatOnFourRanks) {
  run_on_ranks(4, [](RankContext& ctx) {
    // ep 4 over 2 nodes of 2: the two-level exchange.
    run_case(ctx, {{1, 4, 1, 4, 1}, 2, 8, true});
    run_case(ctx, {{1, 4, 1, 4, 1}, 2, 4, true});
    // ep 2 x etp 2 (ep groups {0, 2} and {1, 3}): one member per node, flat.
    run_case(ctx, {{2, 2, 1, 2, 2}, 2, 4, false});
    // ep 2 (groups {0, 1} and {2, 3}) inside a node: flat.
    run_case(ctx, {{1, 4, 1, 2, 1}, 2, 4, false});
    // The adaptive layout exchanges over the stage (4 ranks on 2 nodes): r = 1 and 2, and r = 0
    // (no token exchange).
    run_case(ctx, {{1, 4, 1, 1, 1}, 2, 4, true, 1});
    run_case(ctx, {{1, 4, 1, 1, 1}, 2, 2, true, 2});
    run_case(ctx, {{1, 4, 1, 1, 1}, 2, 2, true, 0});
  });
}

TEST(A2AAlgorithm, HierarchicalEqualsFlatOnEightRanks) {
  run_on_ranks(8, [](RankContext& ctx) {
    // 2 nodes of 4: ep 8 (4 members per node); ep 4 x etp 2 (groups {0, 2, 4, 6} and
    // {1, 3, 5, 7}: 2 members per node).
    run_case(ctx, {{1, 8, 1, 8, 1}, 4, 8, true});
    run_case(ctx, {{2, 4, 1, 4, 2}, 4, 8, true});
    // 4 nodes of 2: ep 8 spans all four.
    run_case(ctx, {{1, 8, 1, 8, 1}, 2, 16, true});
  });
}

TEST(A2AAlgorithm, RefusesWhatCannotRun) {
  run_on_ranks(4, [](RankContext& ctx) {
    auto groups =
        std::make_shared<ParallelGroups>(ParallelGroups::build({1, 4, 1, 4, 1}, ctx.world));
    groups->ranks_per_node = 2;
    const auto opts = MoEOptions(4, 4).d_hidden(8).a2a_algorithm(A2AAlgorithm::kHierarchical);
    // The chunked overlap and replication exchange flat: refused, naming both settings.
    EXPECT_TRUE(throws_with([&] { MoE layer(MoEOptions(opts).a2a_overlap_degree(2), groups); },
                            "a2a_algorithm=hierarchical with a2a_overlap_degree=2"));
    EXPECT_TRUE(
        throws_with([&] { MoE layer(MoEOptions(opts).replicate(parse_replicate("1")), groups); },
                    "a2a_algorithm=hierarchical with replicate=1"));
    // Nodes of 3 world ranks: ep's 4 members lie 3 and 1 on two nodes.
    groups->ranks_per_node = 3;
    EXPECT_TRUE(throws_with([&] { MoE layer(opts, groups); },
                            "a2a_algorithm=hierarchical needs the token exchange's group to hold "
                            "the same number of its ranks on every node it spans"));
    // Flat runs there.
    EXPECT_NO_THROW(MoE layer(MoEOptions(opts).a2a_algorithm(A2AAlgorithm::kFlat), groups));
  });
}

}  // namespace
}  // namespace hybridmoe
