// core_sharing_test.cpp — ranks sharing a node's cores in the planner's cost model (plan.h,
// src/plan/core_sharing.cpp): the share factor and the pipeline's slots on hand-computed cases,
// today's predictions wherever a node has as many cores as ranks, no pipeline bubble charged
// where the busy ranks of a fill slot fill the cores, and the cores this process may run on.
#include <gtest/gtest.h>
#include <sched.h>

#include <thread>
#include <tuple>
#include <vector>

#include "hybridmoe/plan.h"
#include "plan/tiny_model.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

using testing::tiny_model;

plan::MachineSpec with_cores(int64_t cores) {
  plan::MachineSpec m;
  m.cores = cores;
  return m;
}

// Today's step (every rank on a core of its own): M + pp - 1 slots of the micro-batch's compute
// and communication, plus the gradient sync and the optimizer.
double unshared_step_s(const plan::Estimate& e) {
  const auto& l = e.layout;
  const double M = static_cast<double>(l.micro_batches);
  return (M + l.par.pp - 1) * (e.compute_s + e.comm_s) / M + e.grad_sync_s + e.optimizer_s;
}

TEST(CoreSharing, ShareFactorByHand) {
  // (busy, ranks, cores) -> min(1, cores / ranks) / min(1, cores / busy).
  for (const auto& [busy, ranks, cores, want] : std::vector<std::tuple<int, int, int, double>>{
           {4, 4, 2, 1.0},     // everyone busy: the figures as measured
           {2, 4, 2, 0.5},     // half idle: the busy ones get a core each, twice as fast
           {1, 4, 2, 0.5},     // one thread cannot use the second idle core
           {3, 4, 2, 0.75},    // 3 ranks on 2 cores
           {0, 4, 2, 0.0},     // nothing to do on this node
           {1, 4, 4, 1.0},     // a core each already
           {2, 2, 8, 1.0},     // more cores than ranks
           {1, 8, 2, 0.25},    // 8 ranks on 2 cores: a rank alone runs 4x its share
           {8, 8, 1, 1.0}}) {  // one core, all busy
    EXPECT_DOUBLE_EQ(plan::core_share_factor(busy, ranks, cores), want)
        << busy << " of " << ranks << " on " << cores;
  }
  EXPECT_TRUE(
      testing::throws_with([] { plan::core_share_factor(1, 4, 0); }, "cores must be >= 1, got 0"));
  EXPECT_TRUE(testing::throws_with([] { plan::core_share_factor(5, 4, 2); }, "busy 5 of 4"));
}

TEST(CoreSharing, EnoughCoresKeepMPlusPpMinusOneSlots) {
  for (int64_t world : {4, 8}) {
    for (const auto& par : valid_parallel_configs(world)) {
      for (int64_t rpn : {int64_t{0}, int64_t{2}, world}) {
        const int64_t per_node = rpn > 0 ? rpn : world;
        for (int64_t cores : {per_node, 2 * per_node, int64_t{64}}) {
          for (int64_t M : {1, 2, 4, 8}) {
            EXPECT_EQ(plan::pipeline_slots(par, M, rpn, cores), M + par.pp - 1)
                << par.to_string() << " M " << M << " cores " << cores << " rpn " << rpn;
          }
        }
      }
    }
  }
}

TEST(CoreSharing, SharedCoresPipelineSlotsByHand) {
  const ParallelConfig pp2{1, 2, 2, 2, 1}, pp4{1, 1, 4, 1, 1};
  for (int64_t M : {1, 2, 4}) {
    // Stages of 2 ranks on 2 cores: a fill or drain slot's 2 busy ranks take a core each and run
    // twice their all-busy speed, so the pipeline costs M slots, no bubble.
    EXPECT_DOUBLE_EQ(plan::pipeline_slots(pp2, M, 0, 2), static_cast<double>(M)) << M;
    // One core: every slot's time is its busy ranks' work, busy / 4; the busy ranks over the
    // slots add up to 4 M.
    EXPECT_DOUBLE_EQ(plan::pipeline_slots(pp4, M, 0, 1), static_cast<double>(M)) << M;
  }
  // pp 4 of one rank on 2 cores: slots with 1 or 2 busy ranks take 0.5, 3 busy 0.75, 4 busy 1.
  EXPECT_DOUBLE_EQ(plan::pipeline_slots(pp4, 1, 0, 2), 4 * 0.5);  // busy 1 1 1 1
  EXPECT_DOUBLE_EQ(plan::pipeline_slots(pp4, 2, 0, 2), 5 * 0.5);  // busy 1 2 2 2 1
  // busy 1 2 3 4 3 2 1
  EXPECT_DOUBLE_EQ(plan::pipeline_slots(pp4, 4, 0, 2), 0.5 + 0.5 + 0.75 + 1 + 0.75 + 0.5 + 0.5);
  // 3 cores: a rank alone runs 4/3 of its all-busy speed.
  EXPECT_DOUBLE_EQ(plan::pipeline_slots(pp4, 1, 0, 3), 4 * 0.75);
  // Two nodes of 2 ranks and 1 core each, a stage per node (pp is the outermost rank
  // coordinate): a node's idle core cannot serve the other node's stage, so the bubble stays.
  for (int64_t M : {1, 2, 4}) EXPECT_DOUBLE_EQ(plan::pipeline_slots(pp2, M, 2, 1), M + 1.0) << M;
  EXPECT_TRUE(testing::throws_with([&] { plan::pipeline_slots(pp2, 2, 0, 0); },
                                   "cores must be >= 1, got 0"));
}

TEST(CoreSharing, CoresAtLeastRanksPredictAsBefore) {
  const plan::ModelSpec m = tiny_model();
  for (int64_t world : {4, 8}) {
    for (const auto& l : plan::enumerate_layouts(m, world)) {
      for (int64_t rpn : {int64_t{0}, int64_t{2}}) {
        const plan::ClusterSpec c{world, rpn, 0.0};
        const int64_t per_node = rpn > 0 ? rpn : world;
        for (int64_t cores : {per_node, int64_t{64}}) {
          const plan::Estimate e = plan::estimate(m, c, with_cores(cores), l);
          const double want = unshared_step_s(e);
          EXPECT_NEAR(e.step_s, want, 1e-12 * want) << l.to_string() << " cores " << cores;
          const double M = static_cast<double>(l.micro_batches);
          EXPECT_NEAR(e.bubble_s, (l.par.pp - 1) * (e.compute_s + e.comm_s) / M, 1e-12 * want);
        }
      }
    }
  }
}

TEST(CoreSharing, SharedCoresChargeNoBubbleWhenAStageFillsThem) {
  // 4 ranks on 2 cores, pp 2 of 2 ranks: the same compute, communication and gradient sync as
  // with 4 cores, but the pp - 1 bubble slots cost nothing.
  const plan::ModelSpec m = tiny_model();
  const plan::ClusterSpec c{4, 0, 0.0};
  for (int64_t M : {1, 2, 4}) {
    plan::Layout l;
    l.par = ParallelConfig{1, 2, 2, 2, 1};
    l.micro_batches = M;
    const plan::Estimate own = plan::estimate(m, c, with_cores(4), l);
    const plan::Estimate shared = plan::estimate(m, c, with_cores(2), l);
    EXPECT_DOUBLE_EQ(shared.compute_s, own.compute_s);
    EXPECT_DOUBLE_EQ(shared.comm_s, own.comm_s);
    EXPECT_DOUBLE_EQ(shared.grad_sync_s, own.grad_sync_s);
    EXPECT_GT(own.bubble_s, 0.0);
    EXPECT_NEAR(shared.bubble_s, 0.0, 1e-15);
    EXPECT_NEAR(shared.step_s, own.step_s - own.bubble_s, 1e-12 * own.step_s) << "M " << M;
    EXPECT_NEAR(shared.step_s,
                shared.compute_s + shared.comm_s + shared.grad_sync_s + shared.optimizer_s,
                1e-12 * own.step_s);
  }
}

TEST(CoreSharing, LayoutsWithoutPipelineIgnoreTheCores) {
  // pp 1: every rank is busy in every slot, at the speed the figures were measured at.
  const plan::ModelSpec m = tiny_model();
  const plan::ClusterSpec c{4, 0, 0.0};
  int64_t checked = 0;
  for (const auto& l : plan::enumerate_layouts(m, 4)) {
    if (l.par.pp != 1) continue;
    const double four = plan::estimate(m, c, with_cores(4), l).step_s;
    for (int64_t cores : {1, 2, 3})
      EXPECT_EQ(plan::estimate(m, c, with_cores(cores), l).step_s, four) << l.to_string();
    ++checked;
  }
  EXPECT_GT(checked, 0);
  EXPECT_TRUE(testing::throws_with(
      [&] { plan::estimate(m, c, with_cores(0), plan::enumerate_layouts(m, 4).front()); },
      "cores must be >= 1, got 0"));
}

TEST(CoreSharing, LocalCoresFollowTheAffinityMask) {
  const int64_t all = plan::local_cores();
  EXPECT_GE(all, 1);
  const unsigned hw = std::thread::hardware_concurrency();
  if (hw > 0) {
    EXPECT_LE(all, static_cast<int64_t>(hw));
  }
  // Pinned to one CPU of its mask, this thread may run on 1 core.
  cpu_set_t before;
  CPU_ZERO(&before);
  ASSERT_EQ(sched_getaffinity(0, sizeof(before), &before), 0);
  int first = 0;
  while (!CPU_ISSET(first, &before)) ++first;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(first, &one);
  ASSERT_EQ(sched_setaffinity(0, sizeof(one), &one), 0);
  const int64_t pinned = plan::local_cores();
  ASSERT_EQ(sched_setaffinity(0, sizeof(before), &before), 0);
  EXPECT_EQ(pinned, 1);
  EXPECT_EQ(plan::local_cores(), all);
}

}  // namespace
}  // namespace hybridmoe
