// replicate_test.cpp — the replication policy (replicate.h) on the host: parsing of "off" / "auto"
// / N and of the placement, the placement of a replicated expert's rows (replica_rows) against
// its definition, the cost model against hand-computed times (both placements, etp), the N
// hottest (ties to the lower index), and FasterMoE's greedy rule: a prefix of the experts by heat,
// never worse than no replication, and stopping where the next hottest expert no longer lowers the
// modelled time.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "hybridmoe/cpu_runtime.h"
#include "hybridmoe/plan.h"
#include "hybridmoe/replicate.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

TEST(ReplicatePolicy, ParsesOffAutoAndCounts) {
  EXPECT_EQ(parse_replicate("off").mode(), ReplicateMode::kOff);
  EXPECT_EQ(parse_replicate("auto").mode(), ReplicateMode::kAuto);
  auto two = parse_replicate("2");
  EXPECT_EQ(two.mode(), ReplicateMode::kHottest);
  EXPECT_EQ(two.hottest(), 2);
  for (const char* s : {"off", "auto", "3"}) EXPECT_EQ(to_string(parse_replicate(s)), s);
  for (const char* bad : {"", "0", "-1", "2x", "on"})
    EXPECT_TRUE(testing::throws_with([&] { parse_replicate(bad); },
                                     "replicate: expected \"off\", \"auto\" or a positive number"))
        << bad;
}

TEST(ReplicatePolicy, ParsesPlacements) {
  EXPECT_EQ(parse_replicate_placement("source"), ReplicatePlacement::kSource);
  EXPECT_EQ(parse_replicate_placement("spread"), ReplicatePlacement::kSpread);
  for (const char* s : {"source", "spread"}) EXPECT_EQ(to_string(parse_replicate_placement(s)), s);
  EXPECT_EQ(ReplicateOptions().placement(), ReplicatePlacement::kSource);
  for (const char* bad : {"", "even", "Source"})
    EXPECT_TRUE(testing::throws_with([&] { parse_replicate_placement(bad); },
                                     "expected \"source\" or \"spread\""))
        << bad;
}

// replica_rows: kSource keeps every row where it was routed; kSpread gives rank k exactly its even
// share (the first total % P ranks one more), moves no row a rank could keep, and sends only from
// ranks over their share to ranks under it — checked on random loads by those definitions, and on
// the header's example by value.
TEST(ReplicatePolicy, ReplicaRowsKeepOrSpreadEvenly) {
  using Rows = std::vector<std::vector<int64_t>>;
  EXPECT_EQ(replica_rows({5, 1, 0}, ReplicatePlacement::kSpread),
            (Rows{{2, 1, 2}, {0, 1, 0}, {0, 0, 0}}));
  std::mt19937 gen(3);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t P = 1 + trial % 6;
    std::vector<int64_t> routed(P);
    for (auto& n : routed) n = (gen() % 3 == 0) ? 0 : static_cast<int64_t>(gen() % 12);
    const int64_t total = std::accumulate(routed.begin(), routed.end(), int64_t{0});
    const auto src = replica_rows(routed, ReplicatePlacement::kSource);
    const auto a = replica_rows(routed, ReplicatePlacement::kSpread);
    for (int64_t j = 0; j < P; ++j) {
      int64_t sent = 0, got = 0;
      for (int64_t k = 0; k < P; ++k) {
        EXPECT_EQ(src[j][k], j == k ? routed[j] : 0);
        EXPECT_GE(a[j][k], 0);
        sent += a[j][k];
        got += a[k][j];
      }
      const int64_t share = total / P + (j < total % P ? 1 : 0);
      EXPECT_EQ(sent, routed[j]) << trial;
      EXPECT_EQ(got, share) << trial;
      EXPECT_EQ(a[j][j], std::min(routed[j], share)) << trial;
      for (int64_t k = 0; k < P; ++k) {
        const int64_t share_k = total / P + (k < total % P ? 1 : 0);
        if (k != j && a[j][k] > 0) {
          EXPECT_GT(routed[j], share) << trial;
          EXPECT_LT(routed[k], share_k) << trial;
        }
      }
    }
  }
}

TEST(ReplicatePolicy, FiguresComeFromTheMachine) {
  plan::MachineSpec m;
  m.gemm_flops = 7e14;
  m.inter[static_cast<int>(plan::Collective::kAllToAll)] = plan::LinkFit{1e-5, 2.5e10};
  m.inter[static_cast<int>(plan::Collective::kAllGather)] = plan::LinkFit{2e-5, 3.5e10};
  auto f = figures_of(m, /*inter_node=*/true);
  EXPECT_EQ(f.gemm_flops(), 7e14);
  EXPECT_EQ(f.a2a_latency_s(), 1e-5);
  EXPECT_EQ(f.a2a_bytes_per_s(), 2.5e10);
  EXPECT_EQ(f.gather_latency_s(), 2e-5);
  EXPECT_EQ(f.gather_bytes_per_s(), 3.5e10);
  auto intra = figures_of(m, /*inter_node=*/false);
  EXPECT_EQ(intra.a2a_bytes_per_s(), m.intra[0].bytes_per_s);
}

ReplicateShape small_shape() {
  ReplicateShape s;
  s.d_model = 2;
  s.hidden = 3;
  s.expert_params = 10;
  s.matmuls = 2;
  s.element_bytes = 8;
  return s;
}

ReplicateFigures small_figures() {
  return ReplicateFigures()
      .gemm_flops(1e3)
      .a2a_latency_s(0.1)
      .a2a_bytes_per_s(100)
      .gather_latency_s(0.2)
      .gather_bytes_per_s(1000);
}

// Two ranks, one expert each; rank 0 routes 6 rows to expert 0 and 2 to expert 1, rank 1 routes 4
// to expert 0. A row costs 2 * 2 * 3 * 2 * 3 = 72 FLOPs (forward and backward), 16 bytes.
TEST(ReplicatePolicy, CostModelMatchesHandComputedTimes) {
  const std::vector<std::vector<int64_t>> counts = {{6, 2}, {4, 0}};
  // Off: rank 0 computes 10 rows (0.72 s); the busiest side of the exchange moves 4 rows, 64 bytes:
  // 4 all-to-alls of 0.1 + 0.64 s.
  EXPECT_NEAR(replicate_cost(counts, {}, small_shape(), small_figures()), 0.72 + 2.96, 1e-12);
  // Expert 0 replicated: rank 1 computes its 4 rows and expert 1's 2 (0.432 s); only rank 0's 2
  // rows travel (4 x (0.1 + 0.32)); the 80 weight bytes: 2 x (0.2 + 0.5 * 80 / 1000).
  EXPECT_NEAR(replicate_cost(counts, {0}, small_shape(), small_figures()), 0.432 + 1.68 + 0.48,
              1e-12);
}

// Two ranks sharing one core (cores_per_rank 0.5): the GEMMs take at least all 12 rows on the one
// core (0.864 s), off or replicated, so replicating saves only the exchange; with a core each
// (0 counts as 1, as 1 does) the times above.
TEST(ReplicatePolicy, RanksSharingCoresBoundTheGemmTime) {
  const std::vector<std::vector<int64_t>> counts = {{6, 2}, {4, 0}};
  const auto shared = small_figures().cores_per_rank(0.5);
  EXPECT_NEAR(replicate_cost(counts, {}, small_shape(), shared), 0.864 + 2.96, 1e-12);
  EXPECT_NEAR(replicate_cost(counts, {0}, small_shape(), shared), 0.864 + 1.68 + 0.48, 1e-12);
  for (double own : {1.0, 2.0})
    EXPECT_EQ(replicate_cost(counts, {0}, small_shape(), small_figures().cores_per_rank(own)),
              replicate_cost(counts, {0}, small_shape(), small_figures()));
  // One hot expert: with a core each it is worth its weights; on shared cores the rows take as
  // long wherever they are computed, so even a free exchange leaves only the weights' cost.
  const std::vector<std::vector<int64_t>> hot = {{40, 1, 1, 1}, {38, 2, 0, 1}};
  auto opts =
      ReplicateOptions()
          .mode(ReplicateMode::kAuto)
          .figures(small_figures().a2a_latency_s(0).gather_latency_s(0).gather_bytes_per_s(1e18));
  EXPECT_EQ(choose_replicated(hot, opts, small_shape()), (std::vector<int64_t>{0}));
  opts.figures(small_figures().a2a_latency_s(0).a2a_bytes_per_s(1e18).cores_per_rank(0.5));
  EXPECT_EQ(choose_replicated(hot, opts, small_shape()), (std::vector<int64_t>{}));
  // The layer fills in this host's share where none is given; given figures stay.
  EXPECT_EQ(on_this_host(ReplicateFigures(), 4, /*on_device=*/true).cores_per_rank(), 1.0);
  EXPECT_EQ(on_this_host(ReplicateFigures(), 4, false).cores_per_rank(),
            static_cast<double>(usable_cores()) / 4.0);
  EXPECT_EQ(on_this_host(ReplicateFigures().cores_per_rank(0.3), 4, false).cores_per_rank(), 0.3);
  EXPECT_TRUE(testing::throws_with([] { on_this_host(ReplicateFigures(), 0, false); },
                                   "ranks_per_node must be >= 1, got 0"));
}

// The same load spread: expert 0's 10 rows, 5 per rank, so rank 0 sends 1 of its 6 to rank 1.
// Rank 1 computes 4 + 1 + expert 1's 2 = 7 rows (0.504 s); rank 0 sends 3 rows, 48 bytes
// (4 x (0.1 + 0.48)); the weights as before (0.48). With etp = 2 (the counts are the etp groups',
// each etp rank sends half the bytes): off, 4 x (0.1 + 0.32) for the exchange.
TEST(ReplicatePolicy, CostModelKnowsThePlacementAndEtp) {
  const std::vector<std::vector<int64_t>> counts = {{6, 2}, {4, 0}};
  EXPECT_NEAR(
      replicate_cost(counts, {0}, small_shape(), small_figures(), ReplicatePlacement::kSpread),
      0.504 + 2.32 + 0.48, 1e-12);
  auto etp2 = small_shape();
  etp2.etp = 2;
  EXPECT_NEAR(replicate_cost(counts, {}, etp2, small_figures()), 0.72 + 1.68, 1e-12);
  // The greedy rule models the placement it runs: a slow exchange replicates under either, and
  // a spread choice is costed with the rows it moves.
  const std::vector<std::vector<int64_t>> skew = {{40, 1, 1, 1}, {38, 2, 0, 1}};
  for (auto p : {ReplicatePlacement::kSource, ReplicatePlacement::kSpread}) {
    auto opts = ReplicateOptions()
                    .mode(ReplicateMode::kAuto)
                    .placement(p)
                    .figures(small_figures().gather_latency_s(0).gather_bytes_per_s(1e18));
    const auto chosen = choose_replicated(skew, opts, small_shape());
    ASSERT_FALSE(chosen.empty()) << to_string(p);
    EXPECT_LT(replicate_cost(skew, chosen, small_shape(), opts.figures(), p),
              replicate_cost(skew, {}, small_shape(), opts.figures(), p));
  }
}

TEST(ReplicatePolicy, HottestTakesTheMostLoadedTiesToTheLowerIndex) {
  const std::vector<std::vector<int64_t>> counts = {{1, 5, 0, 3}, {2, 0, 3, 0}};  // 3 5 3 3
  auto two = ReplicateOptions().mode(ReplicateMode::kHottest).hottest(2);
  EXPECT_EQ(choose_replicated(counts, two, small_shape()), (std::vector<int64_t>{0, 1}));
  auto all = ReplicateOptions().mode(ReplicateMode::kHottest).hottest(9);
  EXPECT_EQ(choose_replicated(counts, all, small_shape()), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_TRUE(choose_replicated(counts, ReplicateOptions(), small_shape()).empty());
}

TEST(ReplicatePolicy, AutoIsTheGreedyPrefixThatLowersTheModelledTime) {
  const std::vector<std::vector<std::vector<int64_t>>> loads = {
      {{6, 2}, {4, 0}},
      {{40, 1, 1, 1}, {38, 2, 0, 1}},
      {{5, 5, 5, 5}, {5, 5, 5, 5}},
      {{100, 0, 0, 0, 0, 0, 0, 0},
       {90, 3, 0, 0, 0, 0, 0, 2},
       {0, 0, 0, 0, 7, 0, 0, 0},
       {80, 0, 9, 0, 0, 0, 0, 0}},
  };
  for (double gather_bw : {1e1, 1e3, 1e6}) {
    auto opts = ReplicateOptions()
                    .mode(ReplicateMode::kAuto)
                    .figures(small_figures().gather_bytes_per_s(gather_bw));
    for (const auto& counts : loads) {
      const auto chosen = choose_replicated(counts, opts, small_shape());
      // The heat order (total count descending, ties lower index), by loops.
      const auto E = static_cast<int64_t>(counts[0].size());
      std::vector<std::pair<int64_t, int64_t>> heat;
      for (int64_t e = 0; e < E; ++e) {
        int64_t n = 0;
        for (const auto& row : counts) n += row[e];
        heat.push_back({-n, e});
      }
      std::sort(heat.begin(), heat.end());
      std::vector<int64_t> prefix;
      for (size_t i = 0; i < chosen.size(); ++i) prefix.push_back(heat[i].second);
      std::sort(prefix.begin(), prefix.end());
      EXPECT_EQ(chosen, prefix) << gather_bw;
      const double t = replicate_cost(counts, chosen, small_shape(), opts.figures());
      EXPECT_LE(t, replicate_cost(counts, {}, small_shape(), opts.figures()));
      if (static_cast<int64_t>(chosen.size()) < E) {
        auto next = chosen;
        next.push_back(heat[chosen.size()].second);
        std::sort(next.begin(), next.end());
        EXPECT_GE(replicate_cost(counts, next, small_shape(), opts.figures()), t) << gather_bw;
      }
    }
  }
  // The skewed load with free weight gathers replicates expert 0 at least.
  auto free_gather = ReplicateOptions()
                         .mode(ReplicateMode::kAuto)
                         .figures(small_figures().gather_latency_s(0).gather_bytes_per_s(1e18));
  auto chosen = choose_replicated(loads[1], free_gather, small_shape());
  ASSERT_FALSE(chosen.empty());
  EXPECT_EQ(chosen[0], 0);
}

}  // namespace
}  // namespace hybridmoe
