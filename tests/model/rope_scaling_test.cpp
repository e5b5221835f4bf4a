// rope_scaling_test.cpp — RoPE's scalings (rope_frequencies, latent_softmax_mscale, apply_rope
// with frequencies) against the float64 formulas of rope_reference.h, written out from
// transformers' modeling_rope_utils.py and DeepSeek-V3's attention: linear and YaRN inverse
// frequencies for several factors, betas and theta, DeepSeek-V3's released rope_scaling (pairs
// 0..10 kept, 23..31 divided by 40, attention factor 1, softmax scale times mscale²), the
// attention factor's three sources, truncate; scaling none bit for bit the RoPE it replaced; the
// options refused by name. The attentions with scaling are in attention_test.cpp (against per-head
// loops) and attention_dist_test.cpp / model_dist_test.cpp (layouts against one process).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "hybridmoe/attention.h"
#include "hybridmoe/model_presets.h"
#include "model/attention_fixtures.h"
#include "model/rope_reference.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

using testing::close;
using testing::randn64;
using testing::reference_attention_factor;
using testing::reference_inv_freq;
using testing::reference_mscale;
using testing::reference_softmax_mscale;
using testing::throws_with;

GPTOptions rope() {
  return GPTOptions().position(PositionType::kRope);
}

// DeepSeek-V3's config.json: rope_theta 10000, qk_rope_head_dim 64, rope_scaling {type yarn,
// factor 40, original_max_position_embeddings 4096, beta_fast 32, beta_slow 1, mscale 1.0,
// mscale_all_dim 1.0}.
GPTOptions deepseek_v3_yarn() {
  return rope()
      .rope_theta(10000.0)
      .rope_scaling(RopeScaling::kYarn)
      .rope_factor(40.0)
      .rope_original_max_positions(4096)
      .yarn_beta_fast(32.0)
      .yarn_beta_slow(1.0)
      .yarn_mscale(1.0)
      .yarn_mscale_all_dim(1.0);
}

// rope_frequencies(o, dim) against the reference, element by element (float64, relative 1e-14).
void expect_frequencies_match(const GPTOptions& o, int64_t dim) {
  const RopeFrequencies f = rope_frequencies(o, dim);
  ASSERT_EQ(f.inv_freq.scalar_type(), torch::kFloat64);
  ASSERT_EQ(f.inv_freq.size(0), dim / 2);
  const std::vector<double> want = reference_inv_freq(o, dim);
  for (int64_t j = 0; j < dim / 2; ++j) {
    const double got = f.inv_freq[j].item<double>();
    EXPECT_NEAR(got, want[j], 1e-14 * want[j]) << "pair " << j;
  }
  EXPECT_NEAR(f.attention_factor, reference_attention_factor(o), 1e-15);
}

TEST(RopeScaling, NoneIsThePlainRopeBitForBit) {
  // The RoPE before scaling existed, as it computed: theta^(-2j / rot) in float64, angles
  // p · inv_freq, cos / sin cast to x's dtype, each pair rotated.
  auto old_rope = [](const torch::Tensor& x, double theta, int64_t rot, bool interleaved,
                     int64_t start) {
    const int64_t hd = x.size(-1), S = x.size(-2), half = rot / 2;
    auto f64 = torch::dtype(torch::kFloat64);
    auto inv_freq = torch::pow(theta, torch::arange(0, half, f64) * (-2.0 / rot));
    auto angles = torch::outer(torch::arange(start, start + S, f64), inv_freq);
    auto cos = angles.cos().to(x.scalar_type()), sin = angles.sin().to(x.scalar_type());
    auto r = x.narrow(-1, 0, rot);
    torch::Tensor a, b;
    if (interleaved) {
      a = r.unflatten(-1, {half, 2}).select(-1, 0);
      b = r.unflatten(-1, {half, 2}).select(-1, 1);
    } else {
      a = r.narrow(-1, 0, half);
      b = r.narrow(-1, half, half);
    }
    auto ra = a * cos - b * sin, rb = b * cos + a * sin;
    auto rotated = interleaved ? torch::stack({ra, rb}, -1).flatten(-2) : torch::cat({ra, rb}, -1);
    return rot == hd ? rotated : torch::cat({rotated, x.narrow(-1, rot, hd - rot)}, -1);
  };
  for (auto dtype : {torch::kFloat64, torch::kFloat32})
    for (bool interleaved : {false, true})
      for (int64_t rot : {4, 8}) {
        auto x = randn64({2, 3, 7, 8}, 5).to(dtype);
        const auto o = rope().rope_theta(500.0);
        auto want = old_rope(x, 500.0, rot, interleaved, 3);
        EXPECT_TRUE(
            testing::identical(apply_rope(x, rope_frequencies(o, rot), interleaved, 3), want));
        EXPECT_TRUE(testing::identical(apply_rope(x, 500.0, rot, interleaved, 3), want));
      }
  EXPECT_EQ(rope_frequencies(rope(), 8).attention_factor, 1.0);
  EXPECT_EQ(latent_softmax_mscale(model_preset(ModelFamily::kDeepSeekV3)), 1.0);
}

TEST(RopeScaling, LinearDividesEveryFrequencyByTheFactor) {
  for (double factor : {1.0, 2.0, 8.0, 40.0}) {
    SCOPED_TRACE(factor);
    const auto o = rope().rope_theta(1e6).rope_scaling(RopeScaling::kLinear).rope_factor(factor);
    expect_frequencies_match(o, 128);
    EXPECT_EQ(rope_frequencies(o, 128).attention_factor, 1.0);
  }
  // Position p of the scaled RoPE is position p / factor of the plain one: exact at p = 4 · k.
  const auto linear = rope().rope_theta(100.0).rope_scaling(RopeScaling::kLinear).rope_factor(4.0);
  auto x = randn64({1, 8}, 6);  // [S = 1, hd]
  for (int64_t k : {1, 3}) {
    EXPECT_TRUE(close(apply_rope(x, rope_frequencies(linear, 8), false, 4 * k),
                      apply_rope(x, 100.0, 8, false, k), 1e-14));
  }
}

TEST(RopeScaling, YarnFrequenciesFollowTransformers) {
  struct Setting {
    std::string name;
    GPTOptions options;
    int64_t dim;
  };
  const std::vector<Setting> settings = {
      {"deepseek_v3", deepseek_v3_yarn(), 64},
      {"qwen_factor4",
       rope()
           .rope_theta(1e6)
           .rope_scaling(RopeScaling::kYarn)
           .rope_factor(4.0)
           .rope_original_max_positions(32768),
       128},
      {"betas_16_2_no_truncate",
       rope()
           .rope_scaling(RopeScaling::kYarn)
           .rope_factor(8.0)
           .rope_original_max_positions(2048)
           .yarn_beta_fast(16.0)
           .yarn_beta_slow(2.0)
           .yarn_truncate(false),
       32},
      {"betas_16_2_truncate",
       rope()
           .rope_scaling(RopeScaling::kYarn)
           .rope_factor(8.0)
           .rope_original_max_positions(2048)
           .yarn_beta_fast(16.0)
           .yarn_beta_slow(2.0),
       32},
      // Equal betas: a ramp of width 0.001 at one pair.
      {"equal_betas",
       rope()
           .rope_scaling(RopeScaling::kYarn)
           .rope_factor(2.0)
           .rope_original_max_positions(4096)
           .yarn_beta_fast(4.0)
           .yarn_beta_slow(4.0)
           .yarn_truncate(false),
       16},
      // An original context so long that the range starts past the last pair (its end clamped
      // to dim - 1): every pair keeps its frequency.
      {"long_original_context",
       rope()
           .rope_theta(100.0)
           .rope_scaling(RopeScaling::kYarn)
           .rope_factor(16.0)
           .rope_original_max_positions(63500),
       8},
      // A short one: pair 0 kept, the others interpolated.
      {"short_original_context",
       rope()
           .rope_theta(100.0)
           .rope_scaling(RopeScaling::kYarn)
           .rope_factor(16.0)
           .rope_original_max_positions(16),
       8},
  };
  for (const auto& s : settings) {
    SCOPED_TRACE(s.name);
    expect_frequencies_match(s.options, s.dim);
  }
}

TEST(RopeScaling, DeepSeekV3ReleasedRopeScaling) {
  const auto o = deepseek_v3_yarn();
  const RopeFrequencies f = rope_frequencies(o, 64);
  // The correction range: 64 ln(4096 / (2π · 32)) / (2 ln 10^4) = 10.47 → 10, and
  // 64 ln(4096 / 2π) / (2 ln 10^4) = 22.51 → 23. Pairs up to 10 keep theta^(-2j/64), pairs from
  // 23 are divided by 40, pair 16 is (16 - 10) / 13 of the way.
  for (int64_t j = 0; j < 32; ++j) {
    const double plain = std::pow(10000.0, -2.0 * static_cast<double>(j) / 64.0);
    const double ramp = j <= 10 ? 0.0 : j >= 23 ? 1.0 : (static_cast<double>(j) - 10.0) / 13.0;
    const double want = plain * (1.0 - ramp) + plain / 40.0 * ramp;
    EXPECT_NEAR(f.inv_freq[j].item<double>(), want, 1e-14 * want) << "pair " << j;
  }
  // mscale = mscale_all_dim: cos and sin unscaled; the softmax scale times
  // (0.1 ln 40 + 1)² = 1.8738542...
  EXPECT_NEAR(f.attention_factor, 1.0, 1e-15);
  const double m = 0.1 * std::log(40.0) + 1.0;
  EXPECT_NEAR(latent_softmax_mscale(o), m * m, 1e-15);
  EXPECT_NEAR(latent_softmax_mscale(o), 1.8738542070926265, 1e-14);
  // The DeepSeek-V3 preset with this scaling builds and checks.
  EXPECT_NO_THROW(model_preset(ModelFamily::kDeepSeekV3)
                      .rope_scaling(RopeScaling::kYarn)
                      .rope_factor(40.0)
                      .rope_original_max_positions(4096)
                      .yarn_mscale_all_dim(1.0)
                      .check());
}

TEST(RopeScaling, YarnAttentionFactorSources) {
  // A fresh copy each time (the options' setters change the object they are called on).
  auto base = [] {
    return rope().rope_scaling(RopeScaling::kYarn).rope_original_max_positions(4096);
  };
  auto factor_of = [](const GPTOptions& o) { return rope_frequencies(o, 16).attention_factor; };
  // Without mscale_all_dim: 0.1 ln(factor) + 1 (mscale alone is not read, as transformers).
  EXPECT_NEAR(factor_of(base().rope_factor(4.0)), 0.1 * std::log(4.0) + 1.0, 1e-15);
  EXPECT_NEAR(factor_of(base().rope_factor(4.0).yarn_mscale(0.5)), 0.1 * std::log(4.0) + 1.0,
              1e-15);
  // Both mscales: their ratio.
  const double ratio = (0.1 * 2.0 * std::log(16.0) + 1.0) / (0.1 * 0.5 * std::log(16.0) + 1.0);
  EXPECT_NEAR(factor_of(base().rope_factor(16.0).yarn_mscale(2.0).yarn_mscale_all_dim(0.5)), ratio,
              1e-15);
  // DeepSeek-V2-Lite's 0.707 / 0.707: 1.
  EXPECT_NEAR(factor_of(base().rope_factor(40.0).yarn_mscale(0.707).yarn_mscale_all_dim(0.707)),
              1.0, 1e-15);
  // Given explicitly: as given; factor 1: mscale 1.
  EXPECT_EQ(factor_of(base().rope_factor(8.0).yarn_attention_factor(0.75)), 0.75);
  EXPECT_EQ(factor_of(base().rope_factor(1.0)), 1.0);
  EXPECT_EQ(reference_mscale(1.0, 5.0), 1.0);
  // The softmax mscale: only with mscale_all_dim, for any scaling but none.
  EXPECT_EQ(latent_softmax_mscale(base().rope_factor(40.0)), 1.0);
  EXPECT_NEAR(
      latent_softmax_mscale(
          rope().rope_scaling(RopeScaling::kLinear).rope_factor(4.0).yarn_mscale_all_dim(0.5)),
      std::pow(0.05 * std::log(4.0) + 1.0, 2), 1e-15);
  for (const auto& o : {base().rope_factor(40.0).yarn_mscale_all_dim(0.707), deepseek_v3_yarn()})
    EXPECT_NEAR(latent_softmax_mscale(o), reference_softmax_mscale(o), 1e-15);
}

TEST(RopeScaling, YarnScalesTheRotatedPairsOnly) {
  const auto o = rope()
                     .rope_theta(100.0)
                     .rope_scaling(RopeScaling::kYarn)
                     .rope_factor(8.0)
                     .rope_original_max_positions(1000)
                     .yarn_attention_factor(1.3);
  auto x = randn64({2, 9, 10}, 7);  // [B, S, hd], 6 of 10 dims rotated
  for (bool interleaved : {false, true}) {
    auto y = apply_rope(x, rope_frequencies(o, 6), interleaved, 2);
    auto want =
        testing::rope_reference(x.narrow(-1, 0, 6), reference_inv_freq(o, 6), interleaved, 2, 1.3);
    EXPECT_TRUE(close(y.narrow(-1, 0, 6), want, 1e-13));
    EXPECT_TRUE(testing::identical(y.narrow(-1, 6, 4), x.narrow(-1, 6, 4)));
  }
}

TEST(RopeScaling, RefusesNonsenseByName) {
  auto yarn = [] {
    return rope()
        .rope_scaling(RopeScaling::kYarn)
        .rope_factor(4.0)
        .rope_original_max_positions(4096);
  };
  EXPECT_NO_THROW(yarn().check());
  EXPECT_TRUE(throws_with([&] { rope().rope_factor(4.0).check(); },
                          "rope_factor=4 has no effect with rope_scaling none"));
  EXPECT_TRUE(throws_with(
      [&] { rope().rope_scaling(RopeScaling::kLinear).rope_factor(0.5).check(); },
      "rope_factor must be >= 1 with rope_scaling linear (it stretches the context), got 0.5"));
  EXPECT_TRUE(throws_with([&] { GPTOptions().rope_scaling(RopeScaling::kLinear).check(); },
                          "rope_scaling=linear scales RoPE; position must be rope, got learned"));
  EXPECT_TRUE(throws_with([&] { yarn().rope_original_max_positions(0).check(); },
                          "rope_scaling yarn needs rope_original_max_positions > 0"));
  EXPECT_TRUE(throws_with([&] { yarn().yarn_beta_fast(1.0).yarn_beta_slow(32.0).check(); },
                          "yarn needs 0 < yarn_beta_slow <= yarn_beta_fast, got yarn_beta_fast=1, "
                          "yarn_beta_slow=32"));
  EXPECT_TRUE(
      throws_with([&] { yarn().yarn_beta_slow(0.0).check(); }, "yarn needs 0 < yarn_beta_slow"));
  EXPECT_TRUE(throws_with([&] { yarn().yarn_attention_factor(-1.0).check(); },
                          "yarn_attention_factor must be >= 0 (0: from the mscales), got -1"));
  EXPECT_TRUE(
      throws_with([&] { yarn().yarn_mscale(-0.5).check(); }, "yarn_mscale must be >= 0, got -0.5"));
  EXPECT_TRUE(throws_with([&] { yarn().yarn_mscale_all_dim(-1.0).check(); },
                          "yarn_mscale_all_dim must be >= 0 (0: off), got -1"));
  EXPECT_TRUE(
      throws_with([&] { yarn().rope_factor(std::nan("")).check(); }, "rope_factor must be finite"));
  EXPECT_TRUE(throws_with([] { rope_frequencies(GPTOptions(), 5); },
                          "expected an even, positive rotary_dim, got 5"));
  // The names.
  EXPECT_EQ(parse_rope_scaling("yarn"), RopeScaling::kYarn);
  EXPECT_EQ(to_string(RopeScaling::kLinear), "linear");
  EXPECT_TRUE(throws_with([] { parse_rope_scaling("dynamic"); },
                          "rope_scaling: expected one of \"none\", \"linear\", \"yarn\", got "
                          "\"dynamic\""));
}

}  // namespace
}  // namespace hybridmoe
