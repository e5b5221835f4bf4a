// model_dist_test.cpp — the GPT model on several ranks: every tested layout against the
// single-process model on the same global batch (loss and every gradient), DeepSeek-V3 and
// Qwen3-MoE with YaRN RoPE scaling on tp / dp / ep / etp layouts, and upcycling under tensor
// parallelism reproducing the dense model.
#include <gtest/gtest.h>

#include <cmath>

#include "hybridmoe/collectives.h"
#include "hybridmoe/grouped_dp.h"
#include "hybridmoe/model.h"
#include "hybridmoe/model_presets.h"
#include "model/gpt_fixtures.h"
#include "support/compare.h"
#include "support/multirank.h"

namespace hybridmoe {
namespace {

using testing::random_tokens;
using testing::rel_err;
using testing::tiny_gpt_options;

// One layout against the single-process model on the same global batch: loss and gradients.
void check_layout(dist::World& world, const ParallelConfig& layout, int64_t run_id,
                  const GPTOptions& o = tiny_gpt_options(2)) {
  const std::string tag = "model" + std::to_string(run_id);
  std::vector<int64_t> members(layout.world_size());
  for (int64_t r = 0; r < layout.world_size(); ++r) members[r] = r;
  auto sub = world.new_group(tag, members);
  auto groups = std::make_shared<ParallelGroups>(
      ParallelGroups::build(layout, sub, world.store(), false, tag));
  const int64_t b = 2, S = 8, dp = layout.dp, tp = layout.tp;
  // 1. Reference and distributed model from the same weights.
  torch::manual_seed(11);
  GPT ref(o);
  ref->to(torch::kFloat64);
  GPT net(o, groups);
  net->to(torch::kFloat64);
  net->load_shard_from(*ref);
  GroupedDataParallel gdp(net.ptr(), groups);
  // 2. The reference on the global batch, each MoE group one rank's slice.
  auto tokens = random_tokens(dp * b, S, 21), targets = random_tokens(dp * b, S, 22);
  auto r = ref(tokens, moe_group_sizes(layout, b * S));
  auto ref_loss = lm_loss(r.logits, targets) + r.aux_loss;
  ref_loss.backward();
  // 3. The layout on this rank's share of the batch.
  const auto c = groups->coords();
  auto mine = tokens.narrow(0, c.dp * b, b), mine_t = targets.narrow(0, c.dp * b, b);
  auto out = net(mine);
  auto ce = lm_loss(out.logits, mine_t);
  (ce + out.aux_loss).backward();
  gdp.reduce_gradients(1.0 / static_cast<double>(dp));
  auto share =
      (ce.detach() / static_cast<double>(tp * dp) + out.aux_loss.detach() / dp).view({1, 1});
  const double loss = dist::all_gather_rows(share, groups->world).sum().item<double>();
  EXPECT_NEAR(loss, ref_loss.item<double>(), 1e-10 * std::abs(ref_loss.item<double>()))
      << layout.to_string();
  // 4. Gradients: shard the reference's gradients like the parameters, then compare by name.
  torch::manual_seed(11);
  GPT grads_full(o);
  grads_full->to(torch::kFloat64);
  {
    torch::NoGradGuard ng;
    auto src = ref->named_parameters();
    for (auto& kv : grads_full->named_parameters()) kv.value().copy_(src[kv.key()].grad());
  }
  GPT grads_shard(o, groups);
  grads_shard->to(torch::kFloat64);
  grads_shard->load_shard_from(*grads_full);
  auto expected = grads_shard->named_parameters();
  for (auto& kv : net->named_parameters()) {
    ASSERT_TRUE(kv.value().grad().defined()) << kv.key();
    EXPECT_LT(rel_err(kv.value().grad(), expected[kv.key()]), 1e-9)
        << layout.to_string() << " " << kv.key();
  }
}

TEST(ModelMultiRank, LayoutsEqualOneProcessOnTwoRanks) {
  testing::run_on_ranks(2, [](testing::RankContext& ctx) {
    at::set_num_threads(1);
    check_layout(ctx.world, ParallelConfig{2, 1, 1, 1, 1}, 0);
    check_layout(ctx.world, ParallelConfig{1, 2, 1, 2, 1}, 1);
    check_layout(ctx.world, ParallelConfig{2, 1, 1, 1, 2}, 2);
  });
}

TEST(ModelMultiRank, LayoutsEqualOneProcessOnFourRanks) {
  testing::run_on_ranks(4, [](testing::RankContext& ctx) {
    at::set_num_threads(1);
    check_layout(ctx.world, ParallelConfig{2, 2, 1, 2, 1}, 0);
    check_layout(ctx.world, ParallelConfig{2, 2, 1, 2, 2}, 1);
    check_layout(ctx.world, ParallelConfig{1, 4, 1, 4, 1}, 2);
  });
}

// A family's model at test size with YaRN over an original context of 4 positions (so that the
// 8 positions of the batch reach past it).
GPTOptions yarn_family(ModelFamily family) {
  return model_preset(family)
      .context(8)
      .n_layers(2)
      .rope_scaling(RopeScaling::kYarn)
      .rope_factor(4.0)
      .rope_original_max_positions(4)
      .yarn_beta_fast(8.0)
      .yarn_mscale_all_dim(family == ModelFamily::kDeepSeekV3 ? 1.0 : 0.0);
}

TEST(ModelMultiRank, YarnFamiliesEqualOneProcessOnFourRanks) {
  testing::run_on_ranks(4, [](testing::RankContext& ctx) {
    at::set_num_threads(1);
    int64_t run = 0;
    for (auto family : {ModelFamily::kDeepSeekV3, ModelFamily::kQwen3MoE}) {
      SCOPED_TRACE(to_string(family));
      const auto o = yarn_family(family);
      check_layout(ctx.world, ParallelConfig{2, 2, 1, 2, 1}, run++, o);
      check_layout(ctx.world, ParallelConfig{4, 1, 1, 1, 4}, run++, o);
      check_layout(ctx.world, ParallelConfig{1, 4, 1, 4, 1}, run++, o);
    }
  });
}

TEST(ModelMultiRank, UpcyclingUnderTensorParallelReproducesDense) {
  testing::run_on_ranks(2, [](testing::RankContext& ctx) {
    at::set_num_threads(1);
    ParallelConfig layout{2, 1, 1, 1, 2};
    auto groups = std::make_shared<ParallelGroups>(ParallelGroups::build(layout, ctx.world));
    auto o = tiny_gpt_options(0);
    torch::manual_seed(4);
    GPT dense(o);
    dense->to(torch::kFloat64);
    GPT net(o, groups);
    net->to(torch::kFloat64);
    net->load_shard_from(*dense);
    moefy(*net, MoEOptions(16, 4).top_k(2).normalize_top_k_weights(true), true);
    auto tokens = random_tokens(2, 8, 9);
    torch::NoGradGuard ng;
    EXPECT_LT(rel_err(net(tokens).logits, dense(tokens).logits), 1e-12);
  });
}

}  // namespace
}  // namespace hybridmoe
