// attention_test.cpp — the decoder's norms, RoPE and attentions on one process (float64), each
// against a reference written out here: RMSNorm / LayerNorm against their formulas; RoPE (both
// layouts, partial, offset) against a rotation by complex numbers; grouped-query attention against
// multi-head attention with repeated kv heads; CausalSelfAttention against per-head loops (head
// size, biases, Qwen3's and OLMoE's q/k norms, clipping, RoPE) and MultiHeadLatentAttention
// against DeepSeek-V3's formulas, forward and every gradient; and the options refused by name.
// The tensor-parallel attentions are in attention_dist_test.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "hybridmoe/attention.h"
#include "model/attention_fixtures.h"
#include "model/rope_reference.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

using testing::close;
using testing::close_at_scale;
using testing::grads_of;
using testing::largest;
using testing::randn64;
using testing::randomize;
using testing::throws_with;

// x / sqrt(mean(x²) + eps) · w over the last dim. x: [..., n], w: [n].
torch::Tensor rms_formula(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  return x / torch::sqrt(x.pow(2).mean(-1, true) + eps) * w;
}

// Unscaled RoPE of the first `rot` dims with base theta, as complex numbers (rope_reference.h).
// x: [..., S, n] with positions start .. start + S - 1.
torch::Tensor rope_reference(const torch::Tensor& x, double theta, int64_t rot, bool interleaved,
                             int64_t start) {
  return testing::rope_reference(
      x, testing::reference_inv_freq(GPTOptions().rope_theta(theta), rot), interleaved, start);
}

// x W^T (+ b). x: [..., in] → [..., out].
torch::Tensor affine(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  auto y = x.matmul(w.t());
  return b.defined() ? y + b : y;
}

// One head's causal softmax attention with an explicit mask (-inf where the key is in the
// future). scores: [S, S] (q kᵀ scaled), v: [S, f] → [S, f].
torch::Tensor head_attention(const torch::Tensor& scores, const torch::Tensor& v) {
  const int64_t S = scores.size(0);
  auto future = torch::ones({S, S}, torch::kBool).triu(1);
  auto masked = scores.masked_fill(future, -std::numeric_limits<double>::infinity());
  return torch::softmax(masked, -1).matmul(v);
}

// CausalSelfAttention written out: per-batch and per-head loops, q head h reading kv head
// h / (H / KV), norms → clip → RoPE in that order. x: [B, S, d] → [B, S, d].
torch::Tensor plain_attention(CausalSelfAttentionImpl& m, const GPTOptions& o,
                              const torch::Tensor& x) {
  const int64_t B = x.size(0), H = o.n_heads(), KV = o.kv_heads(), hd = o.head_size();
  const double clip = o.clip_qkv(), eps = o.norm_eps();
  auto q = affine(x, m.q_proj->weight, m.q_proj->bias);  // [B, S, H·hd]
  auto k = affine(x, m.k_proj->weight, m.k_proj->bias);  // [B, S, KV·hd]
  auto v = affine(x, m.v_proj->weight, m.v_proj->bias);  // [B, S, KV·hd]
  if (o.qk_norm() == QKNorm::kWhole) {
    q = rms_formula(q, m.q_norm->weight, eps);
    k = rms_formula(k, m.k_norm->weight, eps);
  }
  const int64_t rot = o.rotary_dim() > 0 ? o.rotary_dim() : hd;
  auto prepare = [&](torch::Tensor t, Norm& norm) {  // t: [S, hd] of q or k
    if (o.qk_norm() == QKNorm::kPerHead) t = rms_formula(t, norm->weight, eps);
    if (clip > 0.0) t = t.clamp(-clip, clip);
    if (o.position() == PositionType::kRope) t = testing::options_rope_reference(t, o, rot);
    return t;
  };
  std::vector<torch::Tensor> rows;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<torch::Tensor> heads;
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / KV);
      auto qh = prepare(q[b].narrow(-1, h * hd, hd), m.q_norm);
      auto kh = prepare(k[b].narrow(-1, g * hd, hd), m.k_norm);
      auto vh = v[b].narrow(-1, g * hd, hd);
      if (clip > 0.0) vh = vh.clamp(-clip, clip);
      auto scores = qh.matmul(kh.t()) / std::sqrt(static_cast<double>(hd));
      heads.push_back(head_attention(scores, vh));
    }
    rows.push_back(torch::cat(heads, -1));
  }
  return affine(torch::stack(rows), m.o_proj->weight, m.o_proj->bias);
}

// MultiHeadLatentAttention written out from DeepSeek-V3's formulas, per batch and per head; the
// score is the unrotated part plus the rotated part. x: [B, S, d] → [B, S, d].
torch::Tensor plain_latent(MultiHeadLatentAttentionImpl& m, const GPTOptions& o,
                           const torch::Tensor& x) {
  const int64_t B = x.size(0), H = o.n_heads(), r = o.kv_lora_rank();
  const int64_t nope = o.qk_nope_head_dim(), rope = o.qk_rope_head_dim(), vd = o.v_head_dim();
  const double eps = o.latent_norm_eps();
  auto q = o.q_lora_rank() > 0 ? affine(rms_formula(affine(x, m.q_a_proj->weight, m.q_a_proj->bias),
                                                    m.q_a_norm->weight, eps),
                                        m.q_b_proj->weight, {})
                               : affine(x, m.q_proj->weight, {});  // [B, S, H·(nope + rope)]
  auto kv = affine(x, m.kv_a_proj->weight, m.kv_a_proj->bias);     // [B, S, r + rope]
  auto per_head = affine(rms_formula(kv.narrow(-1, 0, r), m.kv_a_norm->weight, eps),
                         m.kv_b_proj->weight, {});  // [B, S, H·(nope + vd)]
  std::vector<torch::Tensor> rows;
  for (int64_t b = 0; b < B; ++b) {
    auto k_rope = testing::options_rope_reference(kv[b].narrow(-1, r, rope), o,
                                                  rope);  // [S, rope], one for every head
    std::vector<torch::Tensor> heads;
    for (int64_t h = 0; h < H; ++h) {
      auto qh = q[b].narrow(-1, h * (nope + rope), nope + rope);
      auto q_rope = testing::options_rope_reference(qh.narrow(-1, nope, rope), o, rope);
      auto kvh = per_head[b].narrow(-1, h * (nope + vd), nope + vd);
      auto scores =
          (qh.narrow(-1, 0, nope).matmul(kvh.narrow(-1, 0, nope).t()) + q_rope.matmul(k_rope.t())) *
          testing::reference_softmax_mscale(o) / std::sqrt(static_cast<double>(nope + rope));
      heads.push_back(head_attention(scores, kvh.narrow(-1, nope, vd)));
    }
    rows.push_back(torch::cat(heads, -1));
  }
  return affine(torch::stack(rows), m.o_proj->weight, m.o_proj->bias);
}

// Forward, input gradient and every parameter gradient of `m` against `plain` on the same
// weights; the loss is <y, w> for a fixed random w. Returns the module's gradients.
template <typename Module, typename Plain>
std::map<std::string, torch::Tensor> expect_matches_plain(Module& m, const GPTOptions& o,
                                                          Plain plain) {
  auto x = randn64({2, 6, o.d_model()}, 3).requires_grad_();
  auto w = randn64({2, 6, o.d_model()}, 4);
  auto y = m(x);
  (y * w).sum().backward();
  auto grads = grads_of(*m);
  m->zero_grad();
  auto x_ref = x.detach().clone().requires_grad_();
  auto y_ref = plain(*m, o, x_ref);
  (y_ref * w).sum().backward();
  auto ref = grads_of(*m);
  EXPECT_TRUE(close(y, y_ref, 1e-12));
  EXPECT_TRUE(close(x.grad(), x_ref.grad(), 1e-11));
  const double scale = largest(ref);
  for (const auto& kv : ref) {
    EXPECT_TRUE(close_at_scale(grads[kv.first], kv.second, scale, 1e-11)) << kv.first;
  }
  return grads;
}

GPTOptions mha_base() {
  return GPTOptions().d_model(16).n_layers(1).n_heads(4).context(8);
}

GPTOptions mla_base() {
  return GPTOptions()
      .attention(AttentionType::kLatent)
      .position(PositionType::kRope)
      .d_model(16)
      .n_layers(1)
      .n_heads(4)
      .kv_lora_rank(6)
      .qk_nope_head_dim(4)
      .qk_rope_head_dim(4)
      .v_head_dim(3);
}

TEST(AttentionNorm, RMSNormFollowsItsFormula) {
  Norm n(NormType::kRMSNorm, 8, 1e-5);
  n->to(torch::kFloat64);
  torch::NoGradGuard no_grad;
  n->weight.copy_(1.0 + 0.3 * randn64({8}, 1));
  auto x = 2.0 * randn64({3, 5, 8}, 2);  // [3, 5, 8]
  EXPECT_TRUE(close(n(x), rms_formula(x, n->weight, 1e-5), 1e-14));
  EXPECT_EQ(n->parameters().size(), 1u);  // weight only
}

TEST(AttentionNorm, LayerNormEqualsTorchLayerNormAndItsFormula) {
  Norm n(NormType::kLayerNorm, 8, 1e-5);
  n->to(torch::kFloat64);
  torch::NoGradGuard no_grad;
  n->weight.copy_(1.0 + 0.3 * randn64({8}, 1));
  n->bias.copy_(0.3 * randn64({8}, 2));
  auto x = 2.0 * randn64({3, 5, 8}, 3) + 1.0;  // [3, 5, 8]
  auto y = n(x);
  EXPECT_TRUE(close(y, torch::layer_norm(x, {8}, n->weight, n->bias, 1e-5), 1e-14));
  auto mu = x.mean(-1, true), var = (x - mu).pow(2).mean(-1, true);
  EXPECT_TRUE(close(y, (x - mu) / torch::sqrt(var + 1e-5) * n->weight + n->bias, 1e-13));
}

TEST(AttentionNorm, RMSNormComputesInFloat32AtLeast) {
  auto x64 = 3.0 * randn64({4, 16}, 5), w64 = 1.0 + 0.3 * randn64({16}, 6);
  auto x = x64.to(torch::kFloat32), w = w64.to(torch::kFloat32);
  auto y = rms_norm(x, w, 1e-6);
  EXPECT_EQ(y.scalar_type(), torch::kFloat32);
  auto expected = rms_formula(x.to(torch::kFloat64), w.to(torch::kFloat64), 1e-6);
  EXPECT_TRUE(close(y.to(torch::kFloat64), expected, 2e-6));
  // A float16 input whose squares overflow float16 (300² > 65504) is normalized in float32.
  auto xh = (100.0 * x).to(torch::kFloat16), wh = w.to(torch::kFloat16);
  auto yh = rms_norm(xh, wh, 1e-6);
  EXPECT_EQ(yh.scalar_type(), torch::kFloat16);
  auto expected_h = rms_formula(xh.to(torch::kFloat64), wh.to(torch::kFloat64), 1e-6);
  EXPECT_TRUE(close(yh.to(torch::kFloat64), expected_h, 5e-3));
}

TEST(AttentionRope, BothLayoutsEqualAComplexRotation) {
  auto x = randn64({2, 3, 6, 8}, 7);  // [B, H, S, hd]
  for (bool interleaved : {false, true})
    for (int64_t start : {0, 5}) {
      auto y = apply_rope(x, 500.0, 0, interleaved, start);
      EXPECT_TRUE(close(y, rope_reference(x, 500.0, 8, interleaved, start), 1e-13))
          << "interleaved " << interleaved << " start " << start;
    }
  // The two layouts pair different dimensions.
  EXPECT_GT(testing::rel_err(apply_rope(x, 500.0, 0, true), apply_rope(x, 500.0, 0, false)), 0.1);
}

TEST(AttentionRope, PartialRotaryDimLeavesTheRestUnchanged) {
  auto x = randn64({2, 6, 10}, 8);  // [B, S, hd]
  for (bool interleaved : {false, true}) {
    auto y = apply_rope(x, 100.0, 4, interleaved, 2);
    EXPECT_TRUE(testing::identical(y.narrow(-1, 4, 6), x.narrow(-1, 4, 6)));
    EXPECT_TRUE(close(y.narrow(-1, 0, 4),
                      rope_reference(x.narrow(-1, 0, 4), 100.0, 4, interleaved, 2), 1e-13));
  }
}

TEST(AttentionRope, ScoresDependOnlyOnThePositionDifference) {
  auto q = randn64({1, 8}, 9), k = randn64({1, 8}, 10);  // [S = 1, hd]
  for (bool interleaved : {false, true}) {
    auto score = [&](int64_t m, int64_t n) {
      return (apply_rope(q, 10000.0, 0, interleaved, m) * apply_rope(k, 10000.0, 0, interleaved, n))
          .sum()
          .item<double>();
    };
    const double s = score(7, 3);
    EXPECT_NEAR(score(4, 0), s, 1e-12 * std::abs(s));
    EXPECT_NEAR(score(19, 15), s, 1e-12 * std::abs(s));
    EXPECT_GT(std::abs(score(7, 4) - s), 1e-6);  // a different distance scores differently
  }
}

TEST(Attention, GroupedQueryEqualsMultiHeadWithRepeatedKvHeads) {
  auto gqa_o =
      mha_base().n_kv_heads(2).head_dim(6).qk_norm(QKNorm::kPerHead).position(PositionType::kRope);
  auto mha_o = gqa_o;
  mha_o.n_kv_heads(4);
  CausalSelfAttention gqa(gqa_o), mha(mha_o);
  gqa->to(torch::kFloat64);
  mha->to(torch::kFloat64);
  randomize(*gqa, 11);
  {
    torch::NoGradGuard no_grad;
    auto mine = gqa->named_parameters();
    for (auto& kv : mha->named_parameters()) {
      auto src = mine[kv.key()];
      const bool kv_proj = kv.key().rfind("k_proj", 0) == 0 || kv.key().rfind("v_proj", 0) == 0;
      // [KV·hd, ...] → every kv head twice, in head order: [H·hd, ...].
      kv.value().copy_(kv_proj ? src.unflatten(0, {2, 6}).repeat_interleave(2, 0).flatten(0, 1)
                               : src);
    }
  }
  auto x = randn64({2, 6, 16}, 12), w = randn64({2, 6, 16}, 13);
  auto y_gqa = gqa(x), y_mha = mha(x);
  EXPECT_TRUE(close(y_gqa, y_mha, 1e-12));
  (y_gqa * w).sum().backward();
  (y_mha * w).sum().backward();
  // A kv head's gradient is the sum over the q heads of its group.
  auto g = mha->named_parameters();
  EXPECT_TRUE(close(gqa->k_proj->weight.grad(),
                    g["k_proj.weight"].grad().unflatten(0, {2, 2, 6}).sum(1).flatten(0, 1), 1e-12));
  EXPECT_TRUE(close(gqa->v_proj->bias.grad(),
                    g["v_proj.bias"].grad().unflatten(0, {2, 2, 6}).sum(1).flatten(0, 1), 1e-12));
}

struct Case {
  std::string name;
  GPTOptions options;
};

TEST(Attention, MatchesPerHeadLoops) {
  const std::vector<Case> cases = {
      {"mha_learned_bias", mha_base()},
      {"gqa_head_dim_no_bias_rope",
       mha_base().n_kv_heads(2).head_dim(6).qkv_bias(false).attn_out_bias(false).position(
           PositionType::kRope)},
      {"qwen3_head_norm_partial_rope", mha_base()
                                           .n_kv_heads(2)
                                           .head_dim(6)
                                           .qkv_bias(false)
                                           .qk_norm(QKNorm::kPerHead)
                                           .position(PositionType::kRope)
                                           .rotary_dim(4)
                                           .rope_theta(100.0)},
      {"olmoe_whole_norm_clip",
       mha_base().qk_norm(QKNorm::kWhole).clip_qkv(0.9).position(PositionType::kRope)},
      {"whole_norm_gqa_interleaved", mha_base()
                                         .n_kv_heads(1)
                                         .head_dim(6)
                                         .qk_norm(QKNorm::kWhole)
                                         .position(PositionType::kRope)
                                         .rope_interleaved(true)},
      {"clip_no_norm_odd_head_dim", mha_base().n_heads(2).head_dim(5).clip_qkv(0.5)},
      {"head_norm_clip_interleaved", mha_base()
                                         .n_kv_heads(2)
                                         .qk_norm(QKNorm::kPerHead)
                                         .clip_qkv(0.8)
                                         .position(PositionType::kRope)
                                         .rope_interleaved(true)
                                         .rotary_dim(2)},
      // Qwen / Mixtral with YaRN (a ramp over pairs 1..5 of 4) and with linear scaling.
      {"gqa_yarn_partial", mha_base()
                               .n_kv_heads(2)
                               .head_dim(10)
                               .qkv_bias(false)
                               .position(PositionType::kRope)
                               .rotary_dim(8)
                               .rope_theta(100.0)
                               .rope_scaling(RopeScaling::kYarn)
                               .rope_factor(8.0)
                               .rope_original_max_positions(1000)},
      {"yarn_attention_factor_interleaved", mha_base()
                                                .position(PositionType::kRope)
                                                .rope_interleaved(true)
                                                .rope_theta(100.0)
                                                .rope_scaling(RopeScaling::kYarn)
                                                .rope_factor(4.0)
                                                .rope_original_max_positions(200)
                                                .yarn_truncate(false)
                                                .yarn_attention_factor(1.7)},
      {"linear_head_norm", mha_base()
                               .qk_norm(QKNorm::kPerHead)
                               .position(PositionType::kRope)
                               .rope_scaling(RopeScaling::kLinear)
                               .rope_factor(3.0)},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    CausalSelfAttention m(c.options);
    m->to(torch::kFloat64);
    randomize(*m, 21);
    auto grads = expect_matches_plain(m, c.options, plain_attention);
    const auto& o = c.options;
    if (o.clip_qkv() > 0.0) {  // the clamp bites: the reference without it differs
      auto x = randn64({2, 6, o.d_model()}, 3);
      auto unclipped = o;
      unclipped.clip_qkv(0.0);
      torch::NoGradGuard no_grad;
      EXPECT_GT(testing::rel_err(plain_attention(*m, unclipped, x), plain_attention(*m, o, x)),
                1e-3);
    }
    if (o.qkv_bias() && o.qk_norm() == QKNorm::kNone && o.clip_qkv() == 0.0 &&
        o.position() == PositionType::kLearned) {
      // Softmax ignores a score added to a whole row: q·b_k is one, so there is no k bias.
      EXPECT_FALSE(m->k_proj->bias.defined());
      EXPECT_TRUE(m->q_proj->bias.defined() && m->v_proj->bias.defined());
    } else if (o.qkv_bias()) {
      EXPECT_TRUE(m->k_proj->bias.defined());
    }
  }
}

TEST(Attention, LatentMatchesDeepSeekFormulas) {
  const std::vector<Case> cases = {
      {"q_lora_interleaved", mla_base().q_lora_rank(8).rope_interleaved(true)},
      {"direct_q_half_rope_no_bias",
       mla_base().qkv_bias(false).attn_out_bias(false).rope_theta(50.0)},
      // DeepSeek-V3's YaRN: cos / sin times mscale(f, 1) / mscale(f, 0.8) and the softmax scale
      // times mscale(f, 0.8)².
      {"yarn_mscale_all_dim", mla_base()
                                  .q_lora_rank(8)
                                  .rope_interleaved(true)
                                  .rope_theta(100.0)
                                  .rope_scaling(RopeScaling::kYarn)
                                  .rope_factor(40.0)
                                  .rope_original_max_positions(200)
                                  .yarn_mscale_all_dim(0.8)},
      {"linear_mscale_all_dim",
       mla_base().rope_scaling(RopeScaling::kLinear).rope_factor(2.0).yarn_mscale_all_dim(1.0)},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    MultiHeadLatentAttention m(c.options);
    m->to(torch::kFloat64);
    randomize(*m, 31);
    expect_matches_plain(m, c.options, plain_latent);
  }
}

TEST(Attention, RefusesBadOptionsByName) {
  auto mha = [](const GPTOptions& o) { CausalSelfAttention a(o); };
  auto mla = [](const GPTOptions& o) { MultiHeadLatentAttention a(o); };
  EXPECT_TRUE(throws_with([&] { mha(mha_base().n_heads(6).n_kv_heads(4).d_model(12)); },
                          "n_heads=6 must be divisible by n_kv_heads=4"));
  EXPECT_TRUE(throws_with([] { mha_base().n_heads(12).n_kv_heads(6).d_model(24).check(4); },
                          "tp=4 must divide n_kv_heads=6"));
  EXPECT_NO_THROW(mha_base().n_heads(12).n_kv_heads(6).d_model(24).check(3));
  EXPECT_NO_THROW(mha_base().n_heads(12).n_kv_heads(2).d_model(24).check(4));
  EXPECT_TRUE(throws_with([&] { mha(mha_base().d_model(10)); },
                          "d_model=10 must be divisible by n_heads=4 unless head_dim is given"));
  EXPECT_NO_THROW(mha(mha_base().d_model(10).head_dim(4)));
  EXPECT_TRUE(throws_with([&] { mha(mha_base().position(PositionType::kRope).rotary_dim(3)); },
                          "rotary_dim=3 must be even"));
  EXPECT_TRUE(throws_with([&] { mha(mha_base().position(PositionType::kRope).head_dim(5)); },
                          "rotary_dim=5 must be even"));
  EXPECT_TRUE(throws_with(
      [] {
        apply_rope(torch::zeros({2, 6}), 1e4, 3, false);
      },
      "rotary_dim must be even"));
  EXPECT_TRUE(
      throws_with([&] { mla(mla_base().qk_norm(QKNorm::kPerHead)); }, "qk_norm must be none"));
  EXPECT_TRUE(throws_with([&] { mla(mla_base().position(PositionType::kLearned)); },
                          "position must be rope"));
  EXPECT_TRUE(
      throws_with([&] { mla(mla_base().kv_lora_rank(0)); }, "latent attention needs kv_lora_rank"));
}

}  // namespace
}  // namespace hybridmoe
