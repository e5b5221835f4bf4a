// adaptive_dist_test.cpp — the adaptive expert layout (Tutel's adaptive_r) against the
// single-process grouped reference: for every valid degree r, on 2, 4 and 8 ranks, with fewer
// experts than ranks (hidden width sliced over shard groups) and with at least as many (whole
// experts per rank), changing r from one call to the next on the same layer; output, input
// gradient, gate gradients and every expert gradient (compared with the owning slice of the full
// gradient). Also: r outside {0} ∪ divisors(S) is refused with the valid values listed, and
// settings the adaptive layout does not support are refused.
#include <gtest/gtest.h>

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
using testing::throws_with;

struct Case {
  int64_t tp, dp, experts;
  Activation activation;
  bool bias;
  std::vector<int64_t> r_sequence;  // degrees of consecutive calls; empty: every valid r, twice
};

const std::vector<int64_t> kTokensPerDp = {5, 0, 7, 3, 4, 6, 2, 5};

void run_case(RankContext& ctx, const Case& c) {
  ParallelConfig L{c.tp, c.dp, 1, 1, 1};
  auto groups = std::make_shared<ParallelGroups>(ParallelGroups::build(L, ctx.world));
  const auto coords = groups->coords();
  const int64_t d = 6, h = 16;
  auto opts = MoEOptions(d, c.experts)
                  .d_hidden(h)
                  .top_k(std::min<int64_t>(2, c.experts))
                  .activation(c.activation)
                  .bias(c.bias);
  // 1. The full layer, this rank's adaptive shard, the global batch.
  torch::manual_seed(7);
  MoE full(opts);
  full->to(torch::kFloat64);
  auto adaptive_opts = opts;
  adaptive_opts.expert_layout(ExpertLayout::kAdaptive);
  MoE mine(adaptive_opts, groups);
  mine->to(torch::kFloat64);
  mine->load_shard_from(*full);
  GroupedDataParallel gdp(mine.ptr(), groups);  // broadcasts: must leave the slices alone
  for (const auto& [name, tag] : gdp.tags()) {
    if (name.rfind("experts.", 0) == 0) {
      EXPECT_FALSE(tag.has_value()) << name;
    }
  }
  const auto batch = testing::global_batch(kTokensPerDp, c.dp, c.tp, coords.dp);
  const int64_t total = batch.total, offset = batch.offset, my_tokens = batch.mine;
  const auto& sizes = batch.groups;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  auto X = torch::randn({total, d}, gen, torch::kFloat64).requires_grad_(true);
  auto dY = torch::randn({total, d}, gen, torch::kFloat64);
  // 2. Reference: one process, one GShard group per rank slice.
  auto ref = full->forward_grouped(X, sizes);
  ((ref.output * dY).sum() + ref.aux_loss).backward();
  // 3. The shard of the full gradients, cut like the weights.
  auto expect = testing::expert_grad_shard(*full, opts, adaptive_opts, groups);
  // 4. Calls with changing r on the same layer, each against the same reference.
  auto sequence = c.r_sequence;
  if (sequence.empty()) {
    for (auto r : mine->placement().valid_r) sequence.push_back(r);
    for (auto r : mine->placement().valid_r) sequence.insert(sequence.begin(), r);
  }
  const auto rows = dY.narrow(0, offset, my_tokens);
  for (size_t i = 0; i < sequence.size(); ++i) {
    const int64_t r = sequence[i];
    mine->zero_grad();
    auto x = X.detach().narrow(0, offset, my_tokens).clone().requires_grad_(true);
    MoEOutput out;
    if (i % 2 == 0) {
      out = mine->forward_with(x, MoECallOptions().adaptive_r(r));
    } else {
      mine->set_adaptive_r(r);
      out = mine(x);
    }
    ((out.output * rows).sum() + out.aux_loss / static_cast<double>(c.dp)).backward();
    gdp.reduce_gradients(1.0);
    const std::string what = L.to_string() + " E=" + std::to_string(c.experts) + " " +
                             to_string(c.activation) + (c.bias ? " bias" : "") +
                             " r=" + std::to_string(r) + " call " + std::to_string(i);
    EXPECT_TRUE(close(out.output, ref.output.narrow(0, offset, my_tokens), 1e-12)) << what;
    EXPECT_TRUE(close(x.grad(), X.grad().narrow(0, offset, my_tokens), 1e-12)) << what;
    auto gref = full->gate->named_parameters();
    for (auto& kv : mine->gate->named_parameters())
      EXPECT_TRUE(close(kv.value().grad(), gref[kv.key()].grad(), 1e-12)) << what << " gate";
    for (auto& kv : mine->experts->named_parameters())
      EXPECT_TRUE(close(kv.value().grad(), expect[kv.key()], 1e-12)) << what << " " << kv.key();
  }
  // 5. Gathered back, the expert parameters are the full layer's.
  auto gathered = mine->gather_full_expert_parameters();
  auto ref_params = full->experts->named_parameters();
  EXPECT_EQ(gathered.size(), ref_params.size());
  for (auto& [name, t] : gathered)
    EXPECT_TRUE(torch::equal(t, ref_params[name])) << L.to_string() << " gathered " << name;
}

TEST(AdaptiveMoE, EveryDegreeMatchesReferenceOnTwoRanks) {
  run_on_ranks(2, [](RankContext& ctx) {
    run_case(ctx, {1, 2, 1, Activation::kGelu, true, {}});   // S = 2: r in {0, 1, 2}
    run_case(ctx, {2, 1, 4, Activation::kRelu, false, {}});  // E >= W: 2 experts per rank
  });
}

TEST(AdaptiveMoE, EveryDegreeMatchesReferenceOnFourRanks) {
  run_on_ranks(4, [](RankContext& ctx) {
    run_case(ctx, {1, 4, 1, Activation::kGelu, true, {}});         // S = 4: r in {0, 1, 2, 4}
    run_case(ctx, {2, 2, 2, Activation::kSwiGLU, true, {}});       // S = 2
    run_case(ctx, {4, 1, 4, Activation::kGelu, true, {1, 0, 1}});  // E = W
    run_case(ctx, {1, 4, 8, Activation::kSwiGLU, false, {0, 1}});  // 2 experts per rank
  });
}

TEST(AdaptiveMoE, EveryDegreeMatchesReferenceOnEightRanks) {
  run_on_ranks(8, [](RankContext& ctx) {
    run_case(ctx, {2, 4, 2, Activation::kGelu, true, {4, 0, 2, 1, 4}});  // S = 4
    run_case(ctx, {1, 8, 4, Activation::kRelu, true, {0, 2, 1}});        // S = 2
  });
}

TEST(AdaptiveMoE, RefusesInvalidDegreesAndUnsupportedSettings) {
  run_on_ranks(4, [](RankContext& ctx) {
    auto groups = std::make_shared<ParallelGroups>(
        ParallelGroups::build(ParallelConfig{1, 4, 1, 1, 1}, ctx.world));
    auto opts = MoEOptions(4, 2).d_hidden(8).expert_layout(ExpertLayout::kAdaptive);
    MoE moe(opts, groups);
    EXPECT_EQ(moe->placement().shards, 2);
    EXPECT_EQ(moe->placement().valid_r, (std::vector<int64_t>{0, 1, 2}));
    EXPECT_TRUE(throws_with([&] { moe->set_adaptive_r(3); }, "valid values: 0, 1, 2"));
    EXPECT_TRUE(throws_with(
        [&] {
          moe->forward_with(torch::randn({3, 4}), MoECallOptions().adaptive_r(4));
        },
        "adaptive_r=4 is not valid"));
    EXPECT_TRUE(
        throws_with([&] { MoE(MoEOptions(opts).adaptive_r(3), groups); }, "valid values: 0, 1, 2"));
    EXPECT_TRUE(throws_with(
        [&] {
          MoE(MoEOptions(opts).expert(
                  [](int64_t) { return torch::nn::AnyModule(torch::nn::Linear(4, 4)); }),
              groups);
        },
        "user expert modules are not supported"));
    EXPECT_TRUE(throws_with([&] { MoE(MoEOptions(opts).d_hidden(9), groups); },
                            "d_hidden=9 is not divisible"));
    // An unknown layout name never reaches the layer: its parser refuses it by name.
    EXPECT_TRUE(throws_with(
        [&] { MoE(MoEOptions(opts).expert_layout(parse_expert_layout("tiled")), groups); },
        "expert_layout: expected one of \"fixed\", \"adaptive\", got \"tiled\""));
    // A fixed layer takes no per-call r.
    MoE fixed(MoEOptions(4, 4).d_hidden(8), groups);
    EXPECT_TRUE(throws_with(
        [&] {
          fixed->forward_with(torch::randn({3, 4}), MoECallOptions().adaptive_r(1));
        },
        "needs expert_layout=\"adaptive\""));
    auto ep2 = std::make_shared<ParallelGroups>(
        ParallelGroups::build(ParallelConfig{1, 4, 1, 2, 1}, ctx.world));
    EXPECT_TRUE(throws_with([&] { MoE(opts, ep2); }, "must have ep=1 and etp=1"));
  });
}

}  // namespace
}  // namespace hybridmoe
