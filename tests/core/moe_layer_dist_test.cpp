// moe_layer_dist_test.cpp — the distributed MoE layer against the single-process grouped reference
// on the same global batch: output, input gradient, gate and expert gradients (shards compared with
// the slices of the full gradients), for several layouts, with tokens per rank that differ (one
// rank has none), highly skewed routing (every token to experts 0 and 1), and capacity. Also: a
// rank that fails makes its peers fail within the timeout.
#include <gtest/gtest.h>

#include <chrono>

#include "core/expected_grads.h"
#include "hybridmoe/collectives.h"
#include "hybridmoe/grouped_dp.h"
#include "hybridmoe/moe.h"
#include "support/compare.h"
#include "support/multirank.h"

namespace hybridmoe {
namespace {

using testing::close;
using testing::RankContext;
using testing::run_on_ranks;

struct Case {
  ParallelConfig layout;
  bool skew;
  double capacity_factor;
  bool shared;  ///< with a gated shared expert
};

const std::vector<int64_t> kTokensPerDp = {5, 0, 7, 3};

void run_case(RankContext& ctx, const Case& c) {
  const auto& L = c.layout;
  auto groups = std::make_shared<ParallelGroups>(ParallelGroups::build(L, ctx.world));
  const auto coords = groups->coords();
  const int64_t d = 6, E = 4;
  auto opts = MoEOptions(d, E).d_hidden(8).top_k(2).capacity_factor(c.capacity_factor);
  if (c.shared) opts.shared_expert_hidden(5).shared_expert_gate(true);
  // 1. The full layer, its shard, the global batch.
  torch::manual_seed(99);
  MoE full(opts);
  full->to(torch::kFloat64);
  if (c.skew) {
    torch::NoGradGuard ng;
    auto w = full->gate->named_parameters()["weight"];
    w.zero_();
    w[0].fill_(5.0);
  }
  MoE mine(opts, groups);
  mine->to(torch::kFloat64);
  mine->load_shard_from(*full);
  const auto batch = testing::global_batch(kTokensPerDp, L.dp, L.tp, coords.dp);
  const int64_t total = batch.total, offset = batch.offset, my_tokens = batch.mine;
  const auto& sizes = batch.groups;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  auto X = torch::randn({total, d}, gen, torch::kFloat64).abs().requires_grad_(true);
  auto dY = torch::randn({total, d}, gen, torch::kFloat64);
  // 2. Reference: one process, one GShard group per rank slice.
  auto ref = full->forward_grouped(X, sizes);
  ((ref.output * dY).sum() + ref.aux_loss).backward();
  // 3. The layout: each rank's loss adds its aux share / dp; gradients summed per tag group.
  auto x = X.detach().narrow(0, offset, my_tokens).clone().requires_grad_(true);
  auto out = mine(x);
  ((out.output * dY.narrow(0, offset, my_tokens)).sum() + out.aux_loss / static_cast<double>(L.dp))
      .backward();
  GroupedDataParallel gdp(mine.ptr(), groups,
                          GroupedDataParallelOptions().broadcast_at_start(false));
  gdp.reduce_gradients(1.0);
  const std::string what = L.to_string() + (c.skew ? " skew" : "") + (c.shared ? " shared" : "") +
                           " cf " + std::to_string(c.capacity_factor);
  EXPECT_TRUE(close(out.output, ref.output.narrow(0, offset, my_tokens), 1e-12)) << what;
  EXPECT_TRUE(close(x.grad(), X.grad().narrow(0, offset, my_tokens), 1e-12)) << what;
  auto gref = full->gate->named_parameters();
  for (auto& kv : mine->gate->named_parameters())
    EXPECT_TRUE(close(kv.value().grad(), gref[kv.key()].grad(), 1e-12)) << what << " gate";
  // 4. The shared expert is replicated: its gradients, summed over dp, are the full ones.
  if (c.shared) {
    auto sref = full->shared_expert->named_parameters();
    for (auto& kv : mine->shared_expert->named_parameters())
      EXPECT_TRUE(close(kv.value().grad(), sref[kv.key()].grad(), 1e-12)) << what << " shared";
    EXPECT_TRUE(close(mine->shared_gate.grad(), full->shared_gate.grad(), 1e-12)) << what;
  }
  // 5. Expert gradients: the shard of the full gradients, cut by the same rule as the weights.
  auto expect = testing::expert_grad_shard(*full, opts, opts, groups);
  for (auto& kv : mine->experts->named_parameters())
    EXPECT_TRUE(close(kv.value().grad(), expect[kv.key()], 1e-12)) << what << " " << kv.key();
}

TEST(DistributedMoE, MatchesGroupedReferenceOnFourRanks) {
  const std::vector<Case> cases = {
      {{1, 4, 1, 4, 1}, false, 0.0, false}, {{1, 4, 1, 2, 1}, true, 0.0, false},
      {{2, 2, 1, 2, 2}, false, 0.0, false}, {{2, 2, 1, 2, 1}, true, 1.0, false},
      {{2, 2, 1, 4, 1}, false, 1.0, false}, {{4, 1, 1, 1, 4}, true, 0.0, false},
      {{1, 4, 1, 1, 1}, true, 1.0, false},  {{2, 2, 1, 2, 1}, false, 0.0, true},
      {{1, 4, 1, 4, 1}, true, 1.0, true},
  };
  run_on_ranks(4, [&](RankContext& ctx) {
    for (const auto& c : cases) run_case(ctx, c);
  });
}

TEST(DistributedMoE, RejectsLayoutsThatDoNotFit) {
  run_on_ranks(2, [](RankContext& ctx) {
    auto groups = std::make_shared<ParallelGroups>(
        ParallelGroups::build(ParallelConfig{1, 2, 1, 2, 1}, ctx.world));
    EXPECT_TRUE(testing::throws_with([&] { MoE(MoEOptions(4, 3), groups); },
                                     "num_experts=3 must be divisible by ep=2"));
  });
}

TEST(DistributedMoE, FailedRankMakesPeersFailWithinTimeout) {
  testing::MultiRankOptions o;
  o.timeout_s = 3.0;
  o.max_time_s = 60;
  o.kill_on_failure = false;
  o.expect_success = false;
  auto r = run_on_ranks(
      2,
      [](RankContext& ctx) {
        ctx.finalize = false;
        auto groups = std::make_shared<ParallelGroups>(
            ParallelGroups::build(ParallelConfig{1, 2, 1, 2, 1}, ctx.world));
        MoE moe(MoEOptions(4, 2).top_k(1), groups);
        if (ctx.rank() == 1) throw std::runtime_error("rank 1 fails on purpose");
        const auto start = std::chrono::steady_clock::now();
        std::string message;
        try {
          moe(torch::randn({5, 4}));
        } catch (const c10::Error& e) {
          message = e.what_without_backtrace();
        }
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        EXPECT_FALSE(message.empty()) << "the forward should have failed";
        EXPECT_LT(s, 3.0 + 5.0) << message;
      },
      o);
  if (!testing::is_worker()) {
    ASSERT_EQ(r.rank_codes.size(), 2u);
    EXPECT_EQ(r.rank_codes[0], 0);
    EXPECT_NE(r.rank_codes[1], 0);
  }
}

}  // namespace
}  // namespace hybridmoe
