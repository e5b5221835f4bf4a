// planner_test.cpp — the planner's enumeration and ranking (plan.h): the layouts match
// valid_parallel_configs, the adaptive r values follow Tutel's rule, a layout that does not fit
// memory never ranks first, more inter-node bandwidth never ranks an all-to-all-heavy layout
// worse, the JSON parses with every key, the trainer mapping, Spearman's rank correlation. The
// machine probe on 2 ranks is in probe_dist_test.cpp.
#include <algorithm>
#include <cmath>
#include <set>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "hybridmoe/plan.h"
#include "hybridmoe/train.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

// Sizes every degree up to 8 divides.
plan::ModelSpec divisible_model() {
  plan::ModelSpec m;
  m.n_layers = 8;
  m.d_model = 64;
  m.n_heads = 8;
  m.d_mlp = 256;
  m.expert_hidden = 256;
  m.num_experts = 8;
  m.top_k = 2;
  m.moe_every = 2;
  m.seq_len = 32;
  m.batch_size = 64;
  m.context = 32;
  return m;
}

// Few parameters, many routed tokens: the token all-to-all dominates communication.
plan::ModelSpec a2a_heavy_model() {
  plan::ModelSpec m = divisible_model();
  m.n_layers = 2;
  m.d_model = 64;
  m.d_mlp = 64;
  m.expert_hidden = 64;
  m.top_k = 4;
  m.moe_every = 1;
  m.seq_len = 128;
  m.batch_size = 128;
  m.context = 128;
  return m;
}

std::set<std::string> config_names(const std::vector<ParallelConfig>& v) {
  std::set<std::string> out;
  for (const auto& c : v) out.insert(c.to_string());
  return out;
}

TEST(Planner, EnumerationMatchesValidParallelConfigs) {
  const plan::ModelSpec m = divisible_model();
  plan::PlanOptions bare;
  bare.zero_stages = {0};
  bare.overlap_degrees = {1};
  bare.max_micro_batches = 1;
  bare.adaptive = false;
  for (int64_t world : {1, 2, 4, 8}) {
    const auto valid = valid_parallel_configs(world);
    const auto layouts = plan::enumerate_layouts(m, world, bare);
    std::vector<ParallelConfig> pars;
    for (const auto& l : layouts) pars.push_back(l.par);
    EXPECT_EQ(layouts.size(), valid.size()) << "world " << world;
    EXPECT_EQ(config_names(pars), config_names(valid)) << "world " << world;
    // With every dimension on, the same configs appear, each with the other dimensions.
    std::vector<ParallelConfig> all;
    for (const auto& l : plan::enumerate_layouts(m, world)) all.push_back(l.par);
    EXPECT_EQ(config_names(all), config_names(valid)) << "world " << world;
  }
}

TEST(Planner, EnumerationCountsPerConfig) {
  // World 8, E = 8: per config, ZeRO {0, 1 where dp > 1 or edp > 1} x r x D x M in {1, 2, 4, 8}
  // with M dividing 64 / dp.
  const plan::ModelSpec m = divisible_model();
  const auto layouts = plan::enumerate_layouts(m, 8);
  for (const auto& p : valid_parallel_configs(8)) {
    int64_t expected = 0;
    const int64_t W = p.stage_size();
    std::vector<int64_t> rs = {-1};
    if (p.ep == 1 && p.etp == 1 && W > 1) {
      // S = max(1, W / 8) = 1 on 8 ranks: r = 0 only (r = 1 is the fixed layout).
      rs.push_back(0);
    }
    for (int64_t r : rs)
      for (int64_t zero : {0, 1}) {
        if (zero == 1 && p.dp == 1 && !(r < 0 && p.edp() > 1)) continue;
        const bool a2a = r < 0 ? p.ep > 1 : (r >= 1 && W > 1);
        const int64_t degrees = a2a ? 3 : 1;
        int64_t micro = 0;
        for (int64_t M : {1, 2, 4, 8})
          if (64 % (p.dp * M) == 0 && p.pp <= 8) ++micro;
        expected += degrees * micro;
      }
    const auto n = std::count_if(layouts.begin(), layouts.end(),
                                 [&](const plan::Layout& l) { return l.par == p; });
    EXPECT_EQ(n, expected) << p.to_string();
  }
}

TEST(Planner, AdaptiveRValuesAreZeroAndDivisorsOfS) {
  // 4 experts on a stage of 8 ranks: S = 2, r in {0, 1, 2}; on a stage of 4: S = 1, r in {0}.
  plan::ModelSpec m = divisible_model();
  m.num_experts = 4;
  std::map<std::string, std::set<int64_t>> rs;
  for (const auto& l : plan::enumerate_layouts(m, 8))
    if (l.is_adaptive()) rs[l.par.to_string()].insert(l.adaptive_r);
  EXPECT_EQ(rs["tp1.dp8.pp1.ep1.etp1"], (std::set<int64_t>{0, 1, 2}));
  EXPECT_EQ(rs["tp2.dp4.pp1.ep1.etp1"], (std::set<int64_t>{0, 1, 2}));
  EXPECT_EQ(rs["tp1.dp4.pp2.ep1.etp1"], (std::set<int64_t>{0}));
  EXPECT_EQ(rs.count("tp1.dp8.pp1.ep2.etp1"), 0u);  // adaptive mode needs ep = etp = 1
}

TEST(Planner, LayoutThatDoesNotFitNeverRanksFirst) {
  const plan::ModelSpec m = divisible_model();
  const plan::MachineSpec machine;
  for (int64_t world : {4, 8}) {
    plan::ClusterSpec free{world, 0, 0.0};
    const auto unlimited = plan::rank_layouts(m, free, machine);
    ASSERT_FALSE(unlimited.empty());
    // Memory limits at several quantiles of the layouts' peak memory.
    std::vector<double> mems;
    for (const auto& e : unlimited) mems.push_back(e.memory.total() / (1024.0 * 1024.0));
    std::sort(mems.begin(), mems.end());
    for (double q : {0.1, 0.5, 0.9}) {
      plan::ClusterSpec c = free;
      c.mem_per_rank_mb = mems[static_cast<size_t>(q * (mems.size() - 1))];
      plan::PlanOptions keep;
      keep.keep_unfit = true;
      const auto ranked = plan::rank_layouts(m, c, machine, keep);
      ASSERT_FALSE(ranked.empty());
      EXPECT_TRUE(ranked.front().fits);
      EXPECT_LE(ranked.front().memory.total(), c.mem_per_rank_mb * 1024 * 1024);
      bool seen_unfit = false;
      for (const auto& e : ranked) {
        seen_unfit = seen_unfit || !e.fits;
        EXPECT_FALSE(seen_unfit && e.fits) << "a fitting layout ranked after one that does not";
      }
      for (const auto& e : plan::rank_layouts(m, c, machine)) EXPECT_TRUE(e.fits);
    }
    // The unconstrained winner is dropped once the limit is just below its peak memory.
    const plan::Estimate& best = unlimited.front();
    plan::ClusterSpec tight = free;
    tight.mem_per_rank_mb = best.memory.total() / (1024.0 * 1024.0) * 0.999;
    const auto ranked = plan::rank_layouts(m, tight, machine);
    if (!ranked.empty()) {
      EXPECT_FALSE(ranked.front().layout == best.layout);
    }
  }
}

TEST(Planner, MoreInterNodeBandwidthNeverRanksAnAllToAllHeavyLayoutWorse) {
  const plan::ModelSpec m = a2a_heavy_model();
  const plan::ClusterSpec c{8, 2, 0.0};  // 4 nodes of 2 ranks
  plan::MachineSpec machine;             // a fast network: 50 us per ring step, overlap hides all
  machine.set_latency(false, 50e-6);
  machine.set_latency(true, 50e-6);
  machine.overlap_efficiency = 1.0;
  machine.set_bandwidth(false, 20e9);
  const std::vector<double> bandwidths = {0.05e9, 0.2e9, 1e9, 5e9, 20e9};
  // The layout with the largest share of its step in the all-to-all at the lowest bandwidth.
  machine.set_bandwidth(true, bandwidths.front());
  const auto slow = plan::rank_layouts(m, c, machine);
  const auto a2a = static_cast<size_t>(plan::Collective::kAllToAll);
  plan::Layout heavy;
  double share = -1;
  for (const auto& e : slow)
    if (e.layout.overlap == 1 && e.collective_s[a2a] / e.step_s > share)
      share = e.collective_s[a2a] / e.step_s, heavy = e.layout;
  ASSERT_GT(share, 0.3) << heavy.to_string();
  size_t previous = slow.size();
  double previous_step = 1e300;
  for (double bw : bandwidths) {
    machine.set_bandwidth(true, bw);
    const auto ranked = plan::rank_layouts(m, c, machine);
    size_t pos = 0;
    while (pos < ranked.size() && !(ranked[pos].layout == heavy)) ++pos;
    ASSERT_LT(pos, ranked.size());
    EXPECT_LE(pos, previous) << heavy.to_string() << " at " << bw / 1e9 << " GB/s";
    EXPECT_LT(ranked[pos].step_s, previous_step);
    previous = pos;
    previous_step = ranked[pos].step_s;
  }
}

TEST(Planner, StepTimeNeverGrowsWithBandwidth) {
  const plan::ModelSpec m = a2a_heavy_model();
  const plan::ClusterSpec c{8, 2, 0.0};
  plan::MachineSpec lo, hi;
  lo.set_bandwidth(true, 0.1e9);
  hi.set_bandwidth(true, 1e9);
  for (const auto& l : plan::enumerate_layouts(m, 8))
    EXPECT_LE(plan::estimate(m, c, hi, l).step_s, plan::estimate(m, c, lo, l).step_s)
        << l.to_string();
}

TEST(Planner, JsonParsesWithEveryKey) {
  const plan::ModelSpec m = plan::ModelSpec::from_train_config(TrainConfig());
  const auto ranked = plan::rank_layouts(m, plan::ClusterSpec{4, 0, 0.0}, plan::MachineSpec());
  const auto j = nlohmann::json::parse(plan::to_json(ranked));
  ASSERT_TRUE(j.contains("layouts"));
  ASSERT_EQ(j["layouts"].size(), ranked.size());
  double previous = 0;
  for (size_t i = 0; i < ranked.size(); ++i) {
    const auto& row = j["layouts"][i];
    for (const char* key : {"tp", "dp", "pp", "ep", "etp", "zero", "adaptive_r", "overlap",
                            "micro_batches", "predicted_step_ms", "peak_mem_mb"})
      ASSERT_TRUE(row.contains(key)) << key;
    EXPECT_EQ(row["tp"].get<int64_t>(), ranked[i].layout.par.tp);
    // The JSON writes the fixed experts as adaptive_r -1.
    EXPECT_EQ(row["adaptive_r"].get<int64_t>(),
              ranked[i].layout.is_adaptive() ? ranked[i].layout.adaptive_r : -1);
    EXPECT_EQ(row["micro_batches"].get<int64_t>(), ranked[i].layout.micro_batches);
    const double ms = row["predicted_step_ms"].get<double>();
    EXPECT_NEAR(ms, ranked[i].step_s * 1e3, 1e-5 * ms);
    EXPECT_GE(ms, previous);
    previous = ms;
  }
}

TEST(Planner, ApplyLayoutSetsTheTrainerKeys) {
  const plan::ModelSpec m = plan::ModelSpec::from_train_config(TrainConfig());
  const auto ranked = plan::rank_layouts(m, plan::ClusterSpec{4, 0, 0.0}, plan::MachineSpec());
  auto has_key = [](const std::string& name) {
    for (const auto& k : train_config_keys())
      if (k.name == name) return true;
    return false;
  };
  int64_t runnable = 0;
  for (const auto& e : ranked) {
    TrainConfig c;
    const std::string why = plan::apply_layout(c, e.layout);
    EXPECT_EQ(c.tp, e.layout.par.tp);
    EXPECT_EQ(c.ep, e.layout.par.ep);
    EXPECT_EQ(c.micro_batches, e.layout.micro_batches);
    EXPECT_EQ(c.nproc, 4);
    if (e.layout.zero == 1 && !has_key("zero_stage")) {
      EXPECT_NE(why.find("zero_stage"), std::string::npos);
    }
    if (e.layout.zero == 1 && has_key("zero_stage")) {
      EXPECT_EQ(get_config_value(c, "zero_stage"), "1");
    }
    if (!why.empty()) continue;
    ++runnable;
    EXPECT_EQ(check_config(c), "");
  }
  EXPECT_GT(runnable, 0);
}

TEST(Planner, LayoutOfInvertsApplyLayout) {
  const TrainConfig base;  // hmoe train's default layout
  const plan::Layout own = plan::layout_of(base);
  EXPECT_EQ(own.to_string(),
            "tp1.dp2.pp2.ep2.etp1.z0.r-.D1.M" + std::to_string(base.micro_batches));
  const plan::ModelSpec m = plan::ModelSpec::from_train_config(base);
  int64_t checked = 0;
  for (const auto& l : plan::enumerate_layouts(m, 4)) {
    TrainConfig c = base;
    plan::apply_layout(c, l);
    EXPECT_EQ(plan::layout_of(c).to_string(), l.to_string());
    ++checked;
  }
  EXPECT_GT(checked, 0);
  TrainConfig timed = base;
  timed.expert_layout = ExpertLayout::kAdaptive;
  timed.adaptive_r = AdaptiveR::automatic();
  EXPECT_TRUE(testing::throws_with([&] { plan::layout_of(timed); }, "adaptive_r = auto"));
}

TEST(Planner, AutoLayoutIsTheFirstRunnableLayoutOfTheRanking) {
  TrainConfig base;  // nproc 4
  base.layout_mode = LayoutMode::kAuto;
  const plan::ModelSpec m = plan::ModelSpec::from_train_config(base);
  for (double efficiency : {0.0, 1.0}) {
    plan::MachineSpec machine;
    machine.overlap_efficiency = efficiency;
    machine.set_latency(false, 20e-6);  // cheap chunks: D > 1 wins when overlap hides anything
    const auto ranked = plan::rank_layouts(m, plan::ClusterSpec{4, 0, 0.0}, machine);
    TrainConfig c = base;
    const plan::AutoLayout a = plan::apply_auto_layout(c, machine);
    ASSERT_EQ(a.ranked, ranked.size());
    ASSERT_LT(a.position, ranked.size());
    EXPECT_TRUE(a.estimate.layout == ranked[a.position].layout);
    for (size_t i = 0; i < a.position; ++i) {
      TrainConfig skipped = base;
      EXPECT_NE(plan::apply_layout(skipped, ranked[i].layout), "") << ranked[i].layout.to_string();
    }
    EXPECT_EQ(c.tp, a.estimate.layout.par.tp);
    EXPECT_EQ(c.dp, a.estimate.layout.par.dp);
    EXPECT_EQ(c.pp, a.estimate.layout.par.pp);
    EXPECT_EQ(c.ep, a.estimate.layout.par.ep);
    EXPECT_EQ(c.micro_batches, a.estimate.layout.micro_batches);
    EXPECT_EQ(c.a2a_overlap_degree, a.estimate.layout.overlap);
    EXPECT_EQ(check_config(c), "");
    // Without overlap efficiency chunking only adds latency, so the choice never chunks; with
    // full efficiency the best fixed layout with an all-to-all is predicted faster chunked.
    if (efficiency == 0.0) {
      EXPECT_EQ(a.estimate.layout.overlap, 1);
    }
    if (efficiency == 1.0) {
      const plan::Estimate* best_a2a = nullptr;
      for (const auto& e : ranked)
        if (e.layout.par.ep > 1 && !e.layout.is_adaptive() && !best_a2a) best_a2a = &e;
      ASSERT_NE(best_a2a, nullptr);
      EXPECT_GT(best_a2a->layout.overlap, 1) << best_a2a->layout.to_string();
    }
  }
  // No layout of 3 ranks can run this model: tp 3 and dp 3 divide neither the 4 heads nor the
  // batch of 32, and pp 3 exceeds the 2 blocks.
  TrainConfig three = base;
  three.nproc = 3;
  three.n_layers = 2;
  EXPECT_TRUE(testing::throws_with([&] { plan::apply_auto_layout(three, plan::MachineSpec()); },
                                   "none of the planner's 0 layouts on nproc = 3 ranks"));
}

TEST(Planner, SpearmanRankCorrelation) {
  EXPECT_DOUBLE_EQ(plan::spearman({1, 2, 3, 4}, {10, 20, 30, 40}), 1.0);
  EXPECT_DOUBLE_EQ(plan::spearman({1, 2, 3, 4}, {40, 30, 20, 10}), -1.0);
  // ranks (1, 2, 3, 4) and (2, 1, 4, 3): 1 - 6 * 4 / (4 * 15) = 0.6
  EXPECT_NEAR(plan::spearman({1, 2, 3, 4}, {5, 1, 9, 7}), 0.6, 1e-12);
  // ties get average ranks: (1.5, 1.5, 3) vs (1, 2, 3)
  EXPECT_NEAR(plan::spearman({1, 1, 2}, {1, 2, 3}), std::sqrt(0.75), 1e-12);
}

}  // namespace
}  // namespace hybridmoe
