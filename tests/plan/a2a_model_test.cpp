// a2a_model_test.cpp — the planner's token all-to-all under each algorithm (plan.h): the flat and
// hierarchical times equal their formulas on hand-computed figures, the estimate charges the
// layout's algorithm four times per MoE layer, and the planner's choice: hierarchical where the
// inter-node latency dominates, flat where bandwidth dominates or on one node, never
// hierarchical where the MoE layer refuses it or runs it flat (overlap degree > 1, uneven nodes,
// a group inside one node), with the choice in the JSON and the trainer keys.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "hybridmoe/plan.h"
#include "hybridmoe/train.h"
#include "plan/tiny_model.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

using testing::tiny_model;

constexpr double kRel = 1e-12;
const auto kA2A = static_cast<size_t>(plan::Collective::kAllToAll);

void expect_rel(double got, double want, const std::string& what) {
  EXPECT_NEAR(got, want, kRel * std::abs(want)) << what;
}

// Fast intra-node links and a slow, high-latency network: latency dominates small messages.
plan::MachineSpec latency_bound_machine() {
  plan::MachineSpec m;
  m.set_latency(false, 10e-6);
  m.set_bandwidth(false, 10e9);
  m.set_latency(true, 5e-3);
  m.set_bandwidth(true, 1e9);
  return m;
}

// No latency anywhere and a thin network: the bytes decide, and both algorithms move the same
// bytes across nodes, the hierarchical one more inside them.
plan::MachineSpec bandwidth_bound_machine() {
  plan::MachineSpec m;
  m.set_latency(false, 0.0);
  m.set_latency(true, 0.0);
  m.set_bandwidth(false, 1e9);
  m.set_bandwidth(true, 0.05e9);
  return m;
}

plan::Layout fixed_layout(int64_t dp, int64_t ep, int64_t D = 1) {
  plan::Layout l;
  l.par = ParallelConfig{1, dp, 1, ep, 1};
  l.overlap = D;
  return l;
}

// The ranked estimate of a layout, whichever algorithm it got; nullptr when absent.
const plan::Estimate* find(const std::vector<plan::Estimate>& ranked, plan::Layout l) {
  for (auto a : {A2AAlgorithm::kFlat, A2AAlgorithm::kHierarchical}) {
    l.a2a_algorithm = a;
    for (const auto& e : ranked)
      if (e.layout == l) return &e;
  }
  return nullptr;
}

TEST(A2AModel, FlatAndHierarchicalTimesFollowTheirFormulas) {
  const plan::LinkFit intra{1e-4, 1e9}, inter{1e-3, 1e8};
  const double n = 65536, stream = 2e9;
  // 8 ranks, 4 on each of 2 nodes: 3 local peers and 4 remote ones, 8192 bytes each.
  expect_rel(plan::flat_a2a_time(8, 4, n, intra, inter),
             3 * (1e-4 + 8192 / 1e9) + 4 * (1e-3 + 8192 / 1e8), "flat 8 = 2 x 4");
  // 0. counts: 3 x 64 bytes; 1. 3 x n / 4 = 16384 bytes; 2. one remote node, n / 2 = 32768
  // bytes; 3. 6 passes over n.
  expect_rel(
      plan::hierarchical_a2a_time(8, 4, n, intra, inter, stream),
      3 * (1e-4 + 64 / 1e9) + 3 * (1e-4 + 16384 / 1e9) + 1 * (1e-3 + 32768 / 1e8) + 6 * n / stream,
      "hierarchical 8 = 2 x 4");
  // 8 ranks, 2 on each of 4 nodes: flat 1 local and 6 remote peers; hierarchical 1 local peer
  // (n / 2) and 3 remote nodes (n / 4).
  expect_rel(plan::flat_a2a_time(8, 2, n, intra, inter),
             1 * (1e-4 + 8192 / 1e9) + 6 * (1e-3 + 8192 / 1e8), "flat 8 = 4 x 2");
  expect_rel(
      plan::hierarchical_a2a_time(8, 2, n, intra, inter, stream),
      1 * (1e-4 + 64 / 1e9) + 1 * (1e-4 + 32768 / 1e9) + 3 * (1e-3 + 16384 / 1e8) + 6 * n / stream,
      "hierarchical 8 = 4 x 2");
  // Flat inside one node and with one member per node: the all-to-all formula at the intra- or
  // inter-node figures.
  expect_rel(plan::flat_a2a_time(8, 8, n, intra, inter),
             plan::collective_time(plan::Collective::kAllToAll, 8, n, intra), "one node");
  expect_rel(plan::flat_a2a_time(8, 1, n, intra, inter),
             plan::collective_time(plan::Collective::kAllToAll, 8, n, inter), "a node each");
  EXPECT_TRUE(testing::throws_with([&] { plan::hierarchical_a2a_time(8, 3, n, intra, inter, 1); },
                                   "per_node dividing group_size"));
}

TEST(A2AModel, EstimateChargesTheLayoutsAlgorithmFourTimesPerMoELayer) {
  // tiny model, tp1 dp4 ep4 on 2 nodes of 2: T = Ts = 8 tokens, n = Ts k d b = 8*2*8*4 = 512
  // bytes, one MoE layer, M = 1 (one pipeline slot). The counts exchange (8 E = 32 bytes) is flat.
  const plan::ModelSpec m = tiny_model();
  const plan::ClusterSpec c{4, 2, 0.0};
  plan::MachineSpec mach;
  mach.set_latency(false, 2e-5);
  mach.set_bandwidth(false, 4e8);
  mach.set_latency(true, 3e-4);
  mach.set_bandwidth(true, 5e7);
  mach.stream_bytes_per_s = 1e9;
  const plan::Layout flat = fixed_layout(4, 4);
  plan::Layout hier = flat;
  hier.a2a_algorithm = A2AAlgorithm::kHierarchical;
  EXPECT_EQ(plan::check_hierarchical(m, c, hier), "");
  EXPECT_EQ(hier.to_string(), "tp1.dp4.pp1.ep4.etp1.z0.r-.D1.M1.hier");
  // flat over P = 4 with G = 2: 1 local peer, 2 remote ones, n / 4 bytes each.
  const double counts = 1 * (2e-5 + 8.0 / 4e8) + 2 * (3e-4 + 8.0 / 5e7);
  const double f = 1 * (2e-5 + 128 / 4e8) + 2 * (3e-4 + 128 / 5e7);
  // hierarchical: counts 1 x 32 bytes, 1 local peer n / 2, 1 remote node n / 2, 6 passes.
  const double h =
      1 * (2e-5 + 32 / 4e8) + 1 * (2e-5 + 256 / 4e8) + 1 * (3e-4 + 256 / 5e7) + 6 * 512 / 1e9;
  const plan::Estimate ef = plan::estimate(m, c, mach, flat);
  const plan::Estimate eh = plan::estimate(m, c, mach, hier);
  expect_rel(ef.collective_s[kA2A], counts + 4 * f, "flat");
  expect_rel(eh.collective_s[kA2A], counts + 4 * h, "hierarchical");
  expect_rel(eh.step_s - ef.step_s, 4 * (h - f), "step difference");
  // The estimate refuses what the layer refuses.
  plan::Layout chunked = hier;
  chunked.overlap = 2;
  EXPECT_TRUE(testing::throws_with([&] { plan::estimate(m, c, mach, chunked); },
                                   "chunked overlap pipelines flat all-to-alls"));
  EXPECT_TRUE(testing::throws_with(
      [&] {
        plan::estimate(m, plan::ClusterSpec{4, 0, 0.0}, mach, hier);
      },
      "lies in one node"));
}

TEST(A2AModel, PlannerPicksHierarchicalWhenInterNodeLatencyDominates) {
  // tiny model on 8 ranks, 4 nodes of 2: ep 4 groups {0..3}, {4..7} and the adaptive layout's
  // stage (8 ranks) span nodes with 2 members on each. Small messages at 5 ms per inter-node
  // message: the hierarchical exchange saves (G-1)(N-1) of them for (G-1) intra-node ones of
  // 10 us and a few bytes.
  const plan::ModelSpec m = tiny_model();
  const plan::ClusterSpec c{8, 2, 0.0};
  const plan::MachineSpec mach = latency_bound_machine();
  const auto ranked = plan::rank_layouts(m, c, mach);
  int64_t hierarchical = 0;
  for (const auto& e : ranked) {
    plan::Layout flat = e.layout, hier = e.layout;
    flat.a2a_algorithm = A2AAlgorithm::kFlat;
    hier.a2a_algorithm = A2AAlgorithm::kHierarchical;
    if (!plan::check_hierarchical(m, c, hier).empty()) {
      EXPECT_EQ(e.layout.a2a_algorithm, A2AAlgorithm::kFlat) << e.layout.to_string();
      continue;
    }
    EXPECT_EQ(e.layout.a2a_algorithm, A2AAlgorithm::kHierarchical) << e.layout.to_string();
    EXPECT_LT(e.step_s, plan::estimate(m, c, mach, flat).step_s) << e.layout.to_string();
    ++hierarchical;
  }
  // The fixed ep 4 layout (D 1) and the adaptive r = 2 one over the stage (S = 2) among them.
  const plan::Estimate* ep4 = find(ranked, fixed_layout(8, 4));
  ASSERT_NE(ep4, nullptr);
  EXPECT_EQ(ep4->layout.a2a_algorithm, A2AAlgorithm::kHierarchical);
  plan::Layout r2 = fixed_layout(8, 1);
  r2.expert_layout = ExpertLayout::kAdaptive;
  r2.adaptive_r = 2;
  const plan::Estimate* adaptive = find(ranked, r2);
  ASSERT_NE(adaptive, nullptr);
  EXPECT_EQ(adaptive->layout.a2a_algorithm, A2AAlgorithm::kHierarchical);
  EXPECT_GE(hierarchical, 2);
}

TEST(A2AModel, PlannerPicksFlatWhenBandwidthDominatesOrOnOneNode) {
  const plan::ModelSpec m = tiny_model();
  for (const auto& [cluster, mach] : std::vector<std::pair<plan::ClusterSpec, plan::MachineSpec>>{
           {{8, 2, 0.0}, bandwidth_bound_machine()},
           {{8, 0, 0.0}, latency_bound_machine()},
           {{8, 8, 0.0}, latency_bound_machine()}}) {
    const auto ranked = plan::rank_layouts(m, cluster, mach);
    ASSERT_FALSE(ranked.empty());
    int64_t weighed = 0;
    for (const auto& e : ranked) {
      EXPECT_EQ(e.layout.a2a_algorithm, A2AAlgorithm::kFlat)
          << e.layout.to_string() << " on nodes of " << cluster.ranks_per_node;
      plan::Layout h = e.layout;
      h.a2a_algorithm = A2AAlgorithm::kHierarchical;
      if (!plan::check_hierarchical(m, cluster, h).empty()) continue;
      ++weighed;
      EXPECT_LT(e.step_s, plan::estimate(m, cluster, mach, h).step_s) << h.to_string();
    }
    // Across nodes the hierarchical variants were weighed and lost; on one node none exists.
    EXPECT_EQ(weighed > 0, cluster.ranks_per_node == 2);
  }
}

TEST(A2AModel, NeverHierarchicalWhereTheLayerRefusesIt) {
  const plan::ModelSpec m = tiny_model();
  const plan::MachineSpec mach = latency_bound_machine();
  plan::PlanOptions only;
  only.a2a_algorithms = {A2AAlgorithm::kHierarchical};
  // 4 nodes of 2, every a2a overlap degree, only hierarchical weighed: a hierarchical layout has
  // D = 1 and every exchange group of it runs two-level in the layer (exchange_algorithm).
  const plan::ClusterSpec even{8, 2, 0.0};
  int64_t hierarchical = 0, chunked = 0;
  for (const auto& e : plan::rank_layouts(m, even, mach, only)) {
    if (e.layout.overlap > 1) ++chunked;
    if (e.layout.a2a_algorithm != A2AAlgorithm::kHierarchical) continue;
    ++hierarchical;
    EXPECT_EQ(e.layout.overlap, 1) << e.layout.to_string();
    for (const auto& g : all_group_ranks(e.layout.par, plan::exchange_group(e.layout)))
      EXPECT_EQ(exchange_algorithm(A2AAlgorithm::kHierarchical, g, 2, "x"),
                A2AAlgorithm::kHierarchical)
          << e.layout.to_string();
  }
  EXPECT_GT(hierarchical, 0);
  EXPECT_GT(chunked, 0);
  // Nodes of 3 ranks: no exchange group of 8 ranks fills its nodes evenly in group-rank order
  // (ep 8: 3, 3, 2; ep 4: {0..3} holds 3 and 1), so the layer refuses or runs flat: all flat.
  const plan::ClusterSpec uneven{8, 3, 0.0};
  for (const auto& e : plan::rank_layouts(m, uneven, mach, only))
    EXPECT_EQ(e.layout.a2a_algorithm, A2AAlgorithm::kFlat) << e.layout.to_string();
  plan::Layout h = fixed_layout(8, 4);  // ep 4: {0..3} has 3 members on node 0, 1 on node 1
  h.a2a_algorithm = A2AAlgorithm::kHierarchical;
  EXPECT_NE(plan::check_hierarchical(m, uneven, h).find("same number"), std::string::npos)
      << plan::check_hierarchical(m, uneven, h);
  EXPECT_TRUE(testing::throws_with([&] { plan::estimate(m, uneven, mach, h); }, "same number"));
  // tp 2, ep 2 with etp 2: ep groups {0, 2}, {1, 3}, ... have one member on each node of 2, where
  // the layer runs the exchange flat.
  plan::Layout spread = h;
  spread.par = ParallelConfig{2, 4, 1, 2, 2};
  ASSERT_EQ(all_group_ranks(spread.par, GroupKind::kEp).front(), (std::vector<int64_t>{0, 2}));
  const std::string why = plan::check_hierarchical(m, even, spread);
  EXPECT_NE(why.find("one member per node"), std::string::npos) << why;
}

TEST(A2AModel, TheChoiceReachesTheJsonAndTheTrainerKeys) {
  const plan::ModelSpec m = tiny_model();
  const plan::ClusterSpec c{8, 2, 0.0};
  const auto ranked = plan::rank_layouts(m, c, latency_bound_machine());
  const auto j = nlohmann::json::parse(plan::to_json(ranked));
  ASSERT_EQ(j["layouts"].size(), ranked.size());
  int64_t hierarchical = 0;
  for (size_t i = 0; i < ranked.size(); ++i) {
    const auto& l = ranked[i].layout;
    EXPECT_EQ(j["layouts"][i]["a2a_algorithm"].get<std::string>(), to_string(l.a2a_algorithm));
    if (l.a2a_algorithm != A2AAlgorithm::kHierarchical) continue;
    ++hierarchical;
    TrainConfig config;
    const std::string why = plan::apply_layout(config, l);
    EXPECT_EQ(config.a2a_algorithm, A2AAlgorithm::kHierarchical) << l.to_string();
    EXPECT_EQ(get_config_value(config, "a2a_algorithm"), "hierarchical");
    EXPECT_TRUE(plan::layout_of(config) == l) << l.to_string() << ": " << why;
  }
  EXPECT_GT(hierarchical, 0);
  EXPECT_NE(plan::to_table(ranked).find("hierarchical"), std::string::npos);
}

}  // namespace
}  // namespace hybridmoe
