// moe_layer_dist_test.cpp — the distributed MoE layer against the single-process grouped reference
// on the same global batch: output, input gradient, gate and expert gradients (shards compared with
// the slices of the full gradients), for several layouts, with tokens per rank that differ (one
// rank has none), highly skewed routing (every token to experts 0 and 1), capacity, and a shared
// expert (gated or not) split over tp (its slices' gradients against the reference's slices, and
// gathered back whole). Also: a rank that fails makes its peers fail within the timeout.
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

enum class Shared { kNone, kUngated, kGated };

struct Case {
  ParallelConfig layout;
  bool skew;
  double capacity_factor;
  Shared shared;  ///< a shared expert (DeepSeek's ungated, Qwen2-MoE's gated) or none
  ExpertLayout expert_layout = ExpertLayout::kFixed;
};

constexpr int64_t kSharedHidden = 8;  // divisible by tp = 1, 2, 4

// The shared expert's gradients expected on this rank: the reference's, cut to this tp rank's
// hidden slice [q * h / tp, (q + 1) * h / tp) (w1/w3 columns, b1/b3 entries, w2 rows); b2 whole.
torch::Tensor shared_grad_slice(MoEImpl& full, const std::string& name, int64_t tp, int64_t q) {
  auto g = full.shared_expert->named_parameters()[name].grad();
  const int64_t hs = kSharedHidden / tp;
  if (name == "w1" || name == "w3") return g.narrow(2, q * hs, hs);
  if (name == "b1" || name == "b3" || name == "w2") return g.narrow(1, q * hs, hs);
  return g;
}

// The shared expert as this layer holds it: slices on tp ranks, b2 on tp rank 0, every split
// parameter declared for the gradient norm, and gathered back it is the reference's.
void check_shared_storage(MoEImpl& mine, MoEImpl& full, const MoEOptions& opts,
                          const ParallelGroups& groups, const std::string& what) {
  const int64_t tp = groups.tp.size();
  EXPECT_EQ(mine.shared_expert_tp(), tp) << what;
  EXPECT_EQ(mine.shared_expert->w1.size(2), kSharedHidden / tp) << what;
  EXPECT_EQ(mine.shared_expert->w2.size(1), kSharedHidden / tp) << what;
  EXPECT_EQ(mine.shared_expert->b2.defined(), groups.tp.rank == 0) << what;
  std::vector<std::string> held;
  for (auto& kv : mine.shared_expert->named_parameters()) held.push_back(kv.key());
  const auto declared = mine.shared_expert->tp_shard_names();
  if (tp > 1) {
    EXPECT_EQ(declared, held) << what;
  } else {
    EXPECT_TRUE(declared.empty()) << what;
  }
  MoE whole(opts);
  whole->to(torch::kFloat64);
  mine.gather_full_shared_expert(*whole);
  auto src = full.shared_expert->named_parameters();
  for (auto& kv : whole->shared_expert->named_parameters())
    EXPECT_TRUE(torch::equal(kv.value(), src[kv.key()])) << what << " gathered " << kv.key();
  if (full.shared_gate.defined()) {
    EXPECT_TRUE(torch::equal(whole->shared_gate, full.shared_gate)) << what;
  }
}

const std::vector<int64_t> kTokensPerDp = {5, 0, 7, 3};

void run_case(RankContext& ctx, const Case& c) {
  const auto& L = c.layout;
  auto groups = std::make_shared<ParallelGroups>(ParallelGroups::build(L, ctx.world));
  const auto coords = groups->coords();
  const int64_t d = 6, E = 4;
  auto opts = MoEOptions(d, E).d_hidden(8).top_k(2).capacity_factor(c.capacity_factor);
  if (c.shared != Shared::kNone)
    opts.shared_expert_hidden(kSharedHidden).shared_expert_gate(c.shared == Shared::kGated);
  auto shard_opts = opts;
  shard_opts.expert_layout(c.expert_layout);
  // 1. The full layer, its shard, the global batch.
  auto [full, mine] = testing::full_and_shard(opts, shard_opts, groups, c.skew, 99);
  const std::string what = L.to_string() + (c.skew ? " skew" : "") +
                           (c.shared == Shared::kGated     ? " gated shared"
                            : c.shared == Shared::kUngated ? " shared"
                                                           : "") +
                           (c.expert_layout == ExpertLayout::kAdaptive ? " adaptive" : "") +
                           " cf " + std::to_string(c.capacity_factor);
  if (c.shared != Shared::kNone) check_shared_storage(*mine, *full, opts, *groups, what);
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
  EXPECT_TRUE(close(out.output, ref.output.narrow(0, offset, my_tokens), 1e-12)) << what;
  EXPECT_TRUE(close(x.grad(), X.grad().narrow(0, offset, my_tokens), 1e-12)) << what;
  auto gref = full->gate->named_parameters();
  for (auto& kv : mine->gate->named_parameters())
    EXPECT_TRUE(close(kv.value().grad(), gref[kv.key()].grad(), 1e-12)) << what << " gate";
  // 4. The shared expert is split over tp: its gradients, summed over dp, are this tp rank's
  //    slice of the full ones; its gate is whole.
  if (c.shared != Shared::kNone) {
    for (auto& kv : mine->shared_expert->named_parameters())
      EXPECT_TRUE(close(kv.value().grad(),
                        shared_grad_slice(*full, kv.key(), L.tp, groups->tp.rank), 1e-12))
          << what << " shared " << kv.key();
    if (c.shared == Shared::kGated) {
      EXPECT_TRUE(close(mine->shared_gate.grad(), full->shared_gate.grad(), 1e-12)) << what;
    }
  }
  // 5. Expert gradients: the shard of the full gradients, cut by the same rule as the weights.
  auto expect = testing::expert_grad_shard(*full, opts, shard_opts, groups);
  for (auto& kv : mine->experts->named_parameters())
    EXPECT_TRUE(close(kv.value().grad(), expect[kv.key()], 1e-12)) << what << " " << kv.key();
}

TEST(DistributedMoE, MatchesGroupedReferenceOnFourRanks) {
  const std::vector<Case> cases = {
      {{1, 4, 1, 4, 1}, false, 0.0, Shared::kNone}, {{1, 4, 1, 2, 1}, true, 0.0, Shared::kNone},
      {{2, 2, 1, 2, 2}, false, 0.0, Shared::kNone}, {{2, 2, 1, 2, 1}, true, 1.0, Shared::kNone},
      {{2, 2, 1, 4, 1}, false, 1.0, Shared::kNone}, {{4, 1, 1, 1, 4}, true, 0.0, Shared::kNone},
      {{1, 4, 1, 1, 1}, true, 1.0, Shared::kNone},
  };
  run_on_ranks(4, [&](RankContext& ctx) {
    for (const auto& c : cases) run_case(ctx, c);
  });
}

// A shared expert, gated and ungated, split over tp = 2 and 4 (with ep, etp and the adaptive
// layout varied; tp = 1 keeps it whole), equals one process.
TEST(DistributedMoE, SharedExpertSplitOverTpMatchesGroupedReference) {
  const std::vector<Case> cases = {
      {{2, 2, 1, 2, 1}, false, 0.0, Shared::kGated},
      {{2, 2, 1, 2, 1}, true, 1.0, Shared::kUngated},
      {{2, 2, 1, 2, 2}, false, 0.0, Shared::kGated},
      {{2, 2, 1, 4, 1}, true, 0.0, Shared::kUngated},
      {{2, 2, 1, 1, 1}, false, 0.0, Shared::kGated, ExpertLayout::kAdaptive},
      {{4, 1, 1, 1, 4}, false, 1.0, Shared::kGated},
      {{4, 1, 1, 1, 4}, true, 0.0, Shared::kUngated},
      {{4, 1, 1, 4, 1}, false, 0.0, Shared::kGated},
      {{4, 1, 1, 2, 1}, true, 1.0, Shared::kUngated},
      {{1, 4, 1, 4, 1}, true, 1.0, Shared::kGated},
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
    auto tp2 = std::make_shared<ParallelGroups>(
        ParallelGroups::build(ParallelConfig{2, 1, 1, 1, 1}, ctx.world));
    EXPECT_TRUE(testing::throws_with([&] { MoE(MoEOptions(4, 2).shared_expert_hidden(5), tp2); },
                                     "shared_expert_hidden=5 must be divisible by tp=2"));
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
