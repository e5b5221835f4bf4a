// skew_test.cpp — the skewed router of `hmoe bench layer --skew ALPHA` (bench/bench_skew.h): the
// selection bias is -alpha * log(e + 1) times the Gumbel scale of the logits, exactly; it puts
// most first choices on the low experts; alpha 0 changes nothing; only the topk gate takes it; and
// max / mean of a load.
#include <gtest/gtest.h>

#include <cmath>

#include "bench_skew.h"
#include "support/compare.h"

namespace hybridmoe::bench {
namespace {

TEST(BenchSkew, ZipfBiasIsExactAndSkewsTheFirstChoices) {
  const int64_t E = 8, d = 16, T = 4000;
  torch::manual_seed(3);
  MoE layer(with_skew(MoEOptions(d, E).top_k(2).d_hidden(8), 2.0));
  layer->to(torch::kFloat64);
  auto x = torch::randn({T, d}, torch::kFloat64);
  set_zipf_bias(*layer, 2.0, x);
  // 1. The bias, worked out here from its definition.
  auto w = layer->gate->named_parameters()["weight"];
  const double s = torch::mm(x, w.t()).std().item<double>() * std::sqrt(6.0) / M_PI;
  auto bias = layer->gate->named_buffers()["expert_bias"];
  for (int64_t e = 0; e < E; ++e)
    EXPECT_NEAR(bias[e].item<double>(), -2.0 * std::log(static_cast<double>(e + 1)) * s, 1e-12);
  // 2. First choices: expert 0 most, far from even, the first half of the experts more than the
  //    second (the random gate weights give each expert its own spread, so the tail, whose
  //    biases differ little, need not be in order).
  auto choices = layer->forward(x).stats.choices;
  auto first = choices.expert.view({T, 2}).select(1, 0);
  auto counts = torch::bincount(first, {}, E).to(torch::kFloat64);
  EXPECT_EQ(counts.argmax().item<int64_t>(), 0);
  EXPECT_GT(counts[0].item<double>(), 2.0 * static_cast<double>(T) / static_cast<double>(E));
  EXPECT_GT(counts.narrow(0, 0, E / 2).sum().item<double>(),
            2.0 * counts.narrow(0, E / 2, E / 2).sum().item<double>());
  // 3. alpha 0: the options and the bias stay as they are.
  MoE plain(with_skew(MoEOptions(d, E), 0.0));
  EXPECT_FALSE(plain->options.gate().selection_bias());
  set_zipf_bias(*plain, 0.0, x.to(torch::kFloat32));
  EXPECT_EQ(plain->gate->named_buffers()["expert_bias"].abs().sum().item<double>(), 0.0);
}

TEST(BenchSkew, RefusesOtherGatesAndBadAlpha) {
  EXPECT_TRUE(testing::throws_with([] { with_skew(MoEOptions(4, 4).gate_type("switch"), 1.0); },
                                   "biases the \"topk\" gate's selection; got --gate switch"));
  EXPECT_TRUE(testing::throws_with([] { with_skew(MoEOptions(4, 4), -1.0); },
                                   "--skew must be >= 0, got -1"));
}

TEST(BenchSkew, MaxOverMean) {
  EXPECT_DOUBLE_EQ(max_over_mean({1, 1, 1, 1}), 1.0);
  EXPECT_DOUBLE_EQ(max_over_mean({4, 0, 0, 0}), 4.0);
  EXPECT_EQ(max_over_mean({}), 0.0);
  EXPECT_EQ(max_over_mean({0, 0}), 0.0);
}

}  // namespace
}  // namespace hybridmoe::bench
