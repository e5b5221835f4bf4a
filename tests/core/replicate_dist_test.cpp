// replicate_dist_test.cpp — hot-expert replication (replicate.h) against one process: the
// distributed layer with replicate = 1, 2, every expert, and auto (the CPU defaults, and a machine
// whose all-to-all is slow, so that auto replicates) equals the single-process grouped reference on
// the same global batch — output, aux loss, input, gate and expert gradients within 1e-12
// (float64) — on 2, 4 and 8 ranks (ep over the whole stage, with tp slices, with edp > 1, and with
// etp = 2: each etp rank gathers its slice of the replicas), with balanced routing and with a skew
// where every token's first choice is expert 0 (with top_k 1: its only one), under the chunked
// overlap (a2a_overlap_degree 2), with the replicas' rows on their source rank and spread evenly
// over the ep ranks (which rank computes how many rows is checked exactly). The choice
// of the N hottest is checked against the reference's counts; every ep rank makes the same
// choice. Dynamic capacity (capacity_factor < 0) is checked under every layout too.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

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

constexpr int64_t kD = 6, kE = 8;
const std::vector<int64_t> kTokensPerDp = {5, 0, 7, 3, 4, 6, 2, 9};

// A machine whose all-to-all is slow and whose weight gather is free: auto replicates.
ReplicateOptions slow_exchange() {
  return ReplicateOptions()
      .mode(ReplicateMode::kAuto)
      .figures(
          ReplicateFigures().a2a_bytes_per_s(1e3).gather_latency_s(0.0).gather_bytes_per_s(1e18));
}

// The N experts with the most kept assignments in `counts` ([E]), ties to the lower index.
std::vector<int64_t> hottest(const torch::Tensor& counts, int64_t n) {
  auto c = counts.to(torch::kInt64).contiguous();
  std::vector<int64_t> order(kE);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return c[a].item<int64_t>() > c[b].item<int64_t>();
  });
  std::vector<int64_t> out(order.begin(), order.begin() + n);
  std::sort(out.begin(), out.end());
  return out;
}

// One layout, one routing, one replicate setting (top_k 2; capacity factor cf).
// The shard's expert layout and overlap degree vary for the dynamic capacity cases.
void run_case(const std::shared_ptr<ParallelGroups>& groups, bool skew,
              const ReplicateOptions& replicate, double cf, int64_t top_k = 2,
              ExpertLayout expert_layout = ExpertLayout::kFixed, int64_t overlap = 1) {
  const auto& L = groups->config;
  const auto coords = groups->coords();
  auto opts = MoEOptions(kD, kE).d_hidden(8).top_k(top_k).capacity_factor(cf);
  auto shard_opts = opts;
  shard_opts.replicate(replicate).expert_layout(expert_layout).a2a_overlap_degree(overlap);
  auto [full, mine] = testing::full_and_shard(opts, shard_opts, groups, skew, 7);
  const std::string what = L.to_string() + (skew ? " skew" : "") + " " + to_string(expert_layout) +
                           " D" + std::to_string(overlap) + " replicate " + to_string(replicate) +
                           " cf " + std::to_string(cf) + " k " + std::to_string(top_k);
  const auto batch = testing::global_batch(kTokensPerDp, L.dp, L.tp, coords.dp);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  auto X = torch::randn({batch.total, kD}, gen, torch::kFloat64).abs().requires_grad_(true);
  auto dY = torch::randn({batch.total, kD}, gen, torch::kFloat64);
  // 1. One process, one GShard group per rank slice.
  auto ref = full->forward_grouped(X, batch.groups);
  ((ref.output * dY).sum() + ref.aux_loss).backward();
  // 2. The layout.
  auto x = X.detach().narrow(0, batch.offset, batch.mine).clone().requires_grad_(true);
  auto out = mine(x);
  ((out.output * dY.narrow(0, batch.offset, batch.mine)).sum() +
   out.aux_loss / static_cast<double>(L.dp))
      .backward();
  GroupedDataParallel gdp(mine.ptr(), groups,
                          GroupedDataParallelOptions().broadcast_at_start(false));
  gdp.reduce_gradients(1.0);
  EXPECT_TRUE(close(out.output, ref.output.narrow(0, batch.offset, batch.mine), 1e-12)) << what;
  EXPECT_TRUE(close(x.grad(), X.grad().narrow(0, batch.offset, batch.mine), 1e-12)) << what;
  // The aux loss: the ranks' shares summed over the stage, over dp, are the groups' mean.
  const double aux = dist::sum_over_ranks(out.aux_loss.item<double>(), groups->stage);
  EXPECT_NEAR(aux / static_cast<double>(L.dp), ref.aux_loss.item<double>(), 1e-12) << what;
  auto gref = full->gate->named_parameters();
  for (auto& kv : mine->gate->named_parameters())
    EXPECT_TRUE(close(kv.value().grad(), gref[kv.key()].grad(), 1e-12)) << what << " gate";
  auto expect = testing::expert_grad_shard(*full, opts, shard_opts, groups);
  for (auto& kv : mine->experts->named_parameters())
    EXPECT_TRUE(close(kv.value().grad(), expect[kv.key()], 1e-12)) << what << " " << kv.key();
  // 3. The choice: the same on every ep rank; the N hottest of the reference's counts when the
  //    ep group is the whole stage (it then sees every group's rows).
  const auto& rep = out.stats.replicated;
  std::vector<int64_t> padded(kE + 1, -1);
  std::copy(rep.begin(), rep.end(), padded.begin());
  const auto all = dist::all_gather_counts(padded, groups->ep);
  for (const auto& other : all) EXPECT_EQ(other, all[0]) << what;
  if (replicate.mode() == ReplicateMode::kHottest && L.ep == L.stage_size()) {
    EXPECT_EQ(rep, hottest(ref.stats.tokens_per_expert, replicate.hottest())) << what;
  }
  if (replicate.mode() == ReplicateMode::kOff) {
    EXPECT_TRUE(rep.empty()) << what;
  }
}

std::vector<ReplicateOptions> settings(ReplicatePlacement p = ReplicatePlacement::kSource) {
  return {ReplicateOptions().mode(ReplicateMode::kHottest).hottest(1).placement(p),
          ReplicateOptions().mode(ReplicateMode::kHottest).hottest(2).placement(p),
          ReplicateOptions().mode(ReplicateMode::kHottest).hottest(kE).placement(p),
          ReplicateOptions().mode(ReplicateMode::kAuto).placement(p), slow_exchange().placement(p)};
}

using Placements = std::vector<ReplicatePlacement>;
const Placements kBoth = {ReplicatePlacement::kSource, ReplicatePlacement::kSpread};

void run_layout(RankContext& ctx, const ParallelConfig& layout, double cf = 0.0,
                const Placements& placements = {ReplicatePlacement::kSource}) {
  auto groups = std::make_shared<ParallelGroups>(ParallelGroups::build(layout, ctx.world));
  for (auto p : placements) {
    for (bool skew : {false, true})
      for (const auto& r : settings(p)) run_case(groups, skew, r, cf);
    run_case(groups, true, settings(p)[0], cf, /*top_k=*/1);  // one expert gets every token
    // The chunked overlap: the rows in 2 chunks, the replicas' among them.
    for (const auto& r : {settings(p)[1], slow_exchange().placement(p)})
      run_case(groups, true, r, cf, 2, ExpertLayout::kFixed, /*overlap=*/2);
  }
}

TEST(Replicate, EqualsOneProcessOnTwoRanks) {
  run_on_ranks(2, [](RankContext& ctx) {
    run_layout(ctx, {1, 2, 1, 2, 1}, 0.0, kBoth);
    run_layout(ctx, {2, 1, 1, 2, 1}, 1.0);
  });
}

TEST(Replicate, EqualsOneProcessOnFourRanks) {
  run_on_ranks(4, [](RankContext& ctx) {
    run_layout(ctx, {1, 4, 1, 4, 1}, 0.0, kBoth);
    run_layout(ctx, {2, 2, 1, 4, 1});                                      // tp slices
    run_layout(ctx, {1, 4, 1, 2, 1}, 1.0, {ReplicatePlacement::kSpread});  // edp = 2, capacity
  });
}

TEST(Replicate, EqualsOneProcessOnEightRanks) {
  run_on_ranks(8, [](RankContext& ctx) {
    run_layout(ctx, {1, 8, 1, 8, 1});
    run_layout(ctx, {2, 4, 1, 4, 1}, 0.0, {ReplicatePlacement::kSpread});
  });
}

// etp = 2: an expert's hidden width over two ranks; the replicas' slices over each ep group.
TEST(Replicate, EqualsOneProcessWithEtpOnFourRanks) {
  run_on_ranks(4, [](RankContext& ctx) {
    run_layout(ctx, {2, 2, 1, 2, 2}, 0.0, kBoth);  // ep2 x etp2
    run_layout(ctx, {2, 2, 1, 2, 2}, 1.0);         // with a capacity
  });
}

TEST(Replicate, EqualsOneProcessWithEtpOnEightRanks) {
  run_on_ranks(8, [](RankContext& ctx) {
    run_layout(ctx, {2, 4, 1, 4, 2}, 0.0, kBoth);                          // ep4 x etp2
    run_layout(ctx, {2, 4, 1, 2, 2}, 0.0, {ReplicatePlacement::kSpread});  // edp = 2
  });
}

// Where the replicas' rows are computed: 4 ranks route 8, 4, 0 and 0 tokens all to expert 3
// (owned by rank 3). kSource: each rank computes its own; kSpread: 3 rows each.
TEST(Replicate, PlacementDecidesWhichRankComputesTheRows) {
  run_on_ranks(4, [](RankContext& ctx) {
    auto groups = std::make_shared<ParallelGroups>(
        ParallelGroups::build(ParallelConfig{1, 4, 1, 4, 1}, ctx.world));
    const std::vector<int64_t> tokens = {8, 4, 0, 0};
    for (auto p : kBoth) {
      auto r = ReplicateOptions().mode(ReplicateMode::kHottest).hottest(1).placement(p);
      MoE moe(MoEOptions(kD, kE).d_hidden(8).top_k(1).replicate(r), groups);
      {
        torch::NoGradGuard ng;
        auto w = moe->gate->named_parameters()["weight"];
        w.zero_();
        w[3].fill_(5.0);
      }
      auto out = moe(torch::rand({tokens[groups->ep.rank], kD}) + 0.1);
      EXPECT_EQ(out.stats.replicated, (std::vector<int64_t>{3}));
      const int64_t expect = p == ReplicatePlacement::kSource ? tokens[groups->ep.rank] : 3;
      EXPECT_EQ(out.stats.expert_rows, expect) << to_string(p);
    }
  });
}

// A machine with a slow all-to-all makes auto replicate the hot expert of a skewed routing.
TEST(Replicate, AutoReplicatesTheHotExpertWhenTheExchangeIsSlow) {
  run_on_ranks(4, [](RankContext& ctx) {
    auto groups = std::make_shared<ParallelGroups>(
        ParallelGroups::build(ParallelConfig{1, 4, 1, 4, 1}, ctx.world));
    MoE moe(MoEOptions(kD, kE).d_hidden(8).top_k(1).replicate(slow_exchange()), groups);
    {
      torch::NoGradGuard ng;
      auto w = moe->gate->named_parameters()["weight"];
      w.zero_();
      w[3].fill_(5.0);
    }
    auto out = moe(torch::rand({6, kD}) + 0.1);
    ASSERT_FALSE(out.stats.replicated.empty());
    EXPECT_EQ(out.stats.replicated[0], 3);
    EXPECT_EQ(out.stats.expert_rows, 6);  // every row computed where it was routed
  });
}

TEST(Replicate, RefusesLayoutsItCannotRun) {
  run_on_ranks(4, [](RankContext& ctx) {
    auto r = ReplicateOptions().mode(ReplicateMode::kAuto);
    auto no_ep = std::make_shared<ParallelGroups>(
        ParallelGroups::build(ParallelConfig{2, 2, 1, 1, 2}, ctx.world));
    EXPECT_TRUE(testing::throws_with([&] { MoE(MoEOptions(4, 4).replicate(r), no_ep); },
                                     "replicate=auto replicates experts over the ep group"));
    auto ep = std::make_shared<ParallelGroups>(
        ParallelGroups::build(ParallelConfig{1, 4, 1, 4, 1}, ctx.world));
    auto stage = std::make_shared<ParallelGroups>(
        ParallelGroups::build(ParallelConfig{1, 4, 1, 1, 1}, ctx.world));
    EXPECT_TRUE(testing::throws_with(
        [&] { MoE(MoEOptions(4, 4).replicate(r).expert_layout(ExpertLayout::kAdaptive), stage); },
        "expert_layout=adaptive"));
    const auto five = ReplicateOptions().mode(ReplicateMode::kHottest).hottest(5);
    EXPECT_TRUE(testing::throws_with([&] { MoE(MoEOptions(4, 4).replicate(five), ep); },
                                     "replicate=5 must be in [1, num_experts=4]"));
  });
  EXPECT_TRUE(testing::throws_with(
      [] { MoE(MoEOptions(4, 4).replicate(ReplicateOptions().mode(ReplicateMode::kAuto))); },
      "a single process"));
}

// Dynamic capacity (capacity_factor < 0) under every layout kind: ep, tp slices with etp, edp,
// the adaptive layout, the chunked overlap.
TEST(DynamicCapacity, EqualsOneProcessUnderEveryLayout) {
  run_on_ranks(4, [](RankContext& ctx) {
    for (const auto& layout : std::vector<ParallelConfig>{
             {1, 4, 1, 4, 1}, {2, 2, 1, 2, 2}, {1, 4, 1, 2, 1}, {4, 1, 1, 1, 4}}) {
      auto groups = std::make_shared<ParallelGroups>(ParallelGroups::build(layout, ctx.world));
      for (bool skew : {false, true})
        for (double cf : {-1.0, -0.5}) run_case(groups, skew, ReplicateOptions(), cf);
      if (layout.ep > 1)
        run_case(groups, true, ReplicateOptions(), -1.0, 2, ExpertLayout::kFixed, 2);
      if (layout.ep > 1)
        run_case(groups, true, ReplicateOptions().mode(ReplicateMode::kHottest).hottest(2), -1.0);
    }
    auto adaptive = std::make_shared<ParallelGroups>(
        ParallelGroups::build(ParallelConfig{2, 2, 1, 1, 1}, ctx.world));
    for (bool skew : {false, true})
      run_case(adaptive, skew, ReplicateOptions(), -1.0, 2, ExpertLayout::kAdaptive);
  });
}

}  // namespace
}  // namespace hybridmoe
