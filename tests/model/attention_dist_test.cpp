// attention_dist_test.cpp — the attentions tensor parallel over tp = 2 and 4 ranks (float64)
// against the same attention on one process from the same weights: gather_full gives the weights
// back, the forward and the input gradient are equal, and every parameter's gradient equals its
// shard of the one-process gradient. The cases cover multi-head attention, grouped-query attention
// with kv heads split over tp and held whole, both q/k norms, clipping, interleaved RoPE, latent
// attention with and without a q latent, and RoPE scaling (YaRN, linear) on both attentions.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "hybridmoe/attention.h"
#include "model/attention_fixtures.h"
#include "support/compare.h"
#include "support/multirank.h"

namespace hybridmoe {
namespace {

using testing::close;
using testing::close_at_scale;
using testing::grads_of;
using testing::largest;
using testing::randn64;
using testing::randomize;

struct Case {
  std::string name;
  std::vector<int64_t> tps;  // the tp degrees it runs on
  GPTOptions options;
};

GPTOptions mha(int64_t heads, int64_t kv) {
  return GPTOptions().d_model(16).n_layers(1).n_heads(heads).n_kv_heads(kv).head_dim(4).position(
      PositionType::kRope);
}

GPTOptions mla(int64_t q_lora_rank) {
  return GPTOptions()
      .attention(AttentionType::kLatent)
      .position(PositionType::kRope)
      .d_model(16)
      .n_layers(1)
      .n_heads(4)
      .q_lora_rank(q_lora_rank)
      .kv_lora_rank(6)
      .qk_nope_head_dim(2)
      .qk_rope_head_dim(4)
      .v_head_dim(3)
      .rope_interleaved(true);
}

const std::vector<Case>& cases() {
  static const std::vector<Case> all = {
      {"mha", {2, 4}, mha(4, 0).position(PositionType::kLearned)},
      {"gqa_kv_split", {2, 4}, mha(8, 4)},
      {"gqa_kv1_whole", {2, 4}, mha(4, 1)},
      {"gqa_kv2_whole", {4}, mha(4, 2)},
      {"qk_head_kv_split_no_bias", {2, 4}, mha(8, 4).qk_norm(QKNorm::kPerHead).qkv_bias(false)},
      {"qk_head_kv_whole", {4}, mha(4, 2).qk_norm(QKNorm::kPerHead)},
      {"qk_whole_kv_split", {2, 4}, mha(8, 4).qk_norm(QKNorm::kWhole)},
      {"qk_whole_kv_whole", {2, 4}, mha(4, 1).qk_norm(QKNorm::kWhole)},
      {"olmoe_clip", {2, 4}, mha(8, 4).qk_norm(QKNorm::kWhole).clip_qkv(0.9)},
      {"clip_kv_whole", {4}, mha(4, 2).clip_qkv(0.6)},
      {"rope_interleaved_partial", {2, 4}, mha(8, 2).rope_interleaved(true).rotary_dim(2)},
      {"mla_q_lora", {2, 4}, mla(8)},
      {"mla_direct_q", {2, 4}, mla(0).rope_interleaved(false).attn_out_bias(false)},
      // RoPE scaling: YaRN on grouped-query attention (kv heads split and whole), DeepSeek-V3's
      // YaRN on latent attention (cos / sin and softmax mscales), linear.
      {"gqa_yarn",
       {2, 4},
       mha(8, 4)
           .rope_theta(100.0)
           .rope_scaling(RopeScaling::kYarn)
           .rope_factor(8.0)
           .rope_original_max_positions(1000)},
      {"gqa_kv1_yarn_attention_factor",
       {2, 4},
       mha(4, 1)
           .rope_scaling(RopeScaling::kYarn)
           .rope_factor(4.0)
           .rope_original_max_positions(64)
           .yarn_attention_factor(1.2)},
      {"mla_yarn_mscale",
       {2, 4},
       mla(8)
           .rope_theta(100.0)
           .rope_scaling(RopeScaling::kYarn)
           .rope_factor(40.0)
           .rope_original_max_positions(200)
           .yarn_mscale_all_dim(1.0)},
      {"mla_linear", {2}, mla(0).rope_scaling(RopeScaling::kLinear).rope_factor(2.0)},
  };
  return all;
}

// One case: a one-process attention and its tp shards from the same weights.
template <typename Module>
void check_case(const Case& c, const std::shared_ptr<const ParallelGroups>& groups) {
  SCOPED_TRACE(c.name + " tp" + std::to_string(groups->tp.size()));
  const auto& o = c.options;
  Module ref(o), net(o, groups);
  ref->to(torch::kFloat64);
  net->to(torch::kFloat64);
  randomize(*ref, 17);
  net->load_shard_from(*ref);
  // 1. gather_full gives the one-process weights back.
  {
    Module back(o);
    back->to(torch::kFloat64);
    net->gather_full(*back);
    auto want = ref->named_parameters();
    for (auto& kv : back->named_parameters()) {
      EXPECT_TRUE(testing::identical(kv.value(), want[kv.key()])) << kv.key();
    }
  }
  // 2. Forward and backward of both on the same input (the same on every rank).
  auto x = randn64({2, 5, o.d_model()}, 3).requires_grad_();
  auto x_net = x.detach().clone().requires_grad_();
  auto w = randn64({2, 5, o.d_model()}, 4);
  auto y = ref(x), y_net = net(x_net);
  (y * w).sum().backward();
  (y_net * w).sum().backward();
  EXPECT_TRUE(close(y_net, y, 1e-12));
  EXPECT_TRUE(close(x_net.grad(), x.grad(), 1e-12));
  // 3. Gradients: the one-process gradients sharded like the parameters, compared by name.
  auto ref_grads = grads_of(*ref);
  Module grads_full(o), grads_shard(o, groups);
  grads_full->to(torch::kFloat64);
  grads_shard->to(torch::kFloat64);
  {
    torch::NoGradGuard no_grad;
    for (auto& kv : grads_full->named_parameters()) kv.value().copy_(ref_grads[kv.key()]);
  }
  grads_shard->load_shard_from(*grads_full);
  auto expected = grads_shard->named_parameters();
  const double scale = largest(ref_grads);
  size_t checked = 0;
  for (auto& kv : net->named_parameters()) {
    EXPECT_TRUE(close_at_scale(kv.value().grad(), expected[kv.key()], scale, 1e-12)) << kv.key();
    ++checked;
  }
  EXPECT_EQ(checked, ref_grads.size());
}

void run_cases(testing::RankContext& ctx) {
  at::set_num_threads(1);
  const int64_t tp = ctx.size();
  auto groups = std::make_shared<const ParallelGroups>(
      ParallelGroups::build(ParallelConfig{tp, 1, 1, 1, 1}, ctx.world));
  for (const auto& c : cases()) {
    if (std::find(c.tps.begin(), c.tps.end(), tp) == c.tps.end()) continue;
    if (c.options.attention() == AttentionType::kLatent) {
      check_case<MultiHeadLatentAttention>(c, groups);
    } else {
      check_case<CausalSelfAttention>(c, groups);
    }
  }
}

TEST(AttentionMultiRank, TensorParallelEqualsOneProcessOnTwoRanks) {
  testing::run_on_ranks(2, run_cases);
}

TEST(AttentionMultiRank, TensorParallelEqualsOneProcessOnFourRanks) {
  testing::run_on_ranks(4, run_cases);
}

}  // namespace
}  // namespace hybridmoe
