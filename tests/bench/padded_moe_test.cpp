// padded_moe_test.cpp — the benchmark's padded-batched baseline (bench/padded_moe.h) computes what
// the MoE layer computes: the same output, auxiliary loss, input gradient and parameter gradients
// (float64, 1e-10), on a small shape where one expert receives no token and the others uneven
// counts, so that the padding and an empty expert are both exercised.
#include <gtest/gtest.h>

#include "hybridmoe/moe.h"
#include "padded_moe.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

using testing::close;

constexpr int64_t kTokens = 13, kDModel = 6, kHidden = 10, kExperts = 5, kTopK = 2;
constexpr int64_t kEmptyExpert = 3;

std::map<std::string, torch::Tensor> take_grads(torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> g;
  for (auto& kv : m.named_parameters()) {
    auto& p = kv.value();
    g[kv.key()] = p.grad().defined() ? p.grad().clone() : torch::zeros_like(p);
    p.mutable_grad() = torch::Tensor();
  }
  return g;
}

// A float64 layer whose gate never picks kEmptyExpert: every token has x[:, 0] = 4 and that
// expert's router row is (-10, 0, ...), so its logit (-40) is below every other expert's.
MoE make_layer(Activation act, torch::Tensor* x) {
  torch::manual_seed(7);
  MoE moe(MoEOptions(kDModel, kExperts).d_hidden(kHidden).top_k(kTopK).activation(act));
  moe->to(torch::kFloat64);
  {
    torch::NoGradGuard ng;
    auto w = moe->gate->named_parameters()["weight"];  // [E, d_model]
    w.normal_(0.0, 0.5);
    w.select(1, 0).zero_();
    w[kEmptyExpert].zero_();
    w[kEmptyExpert][0] = -10.0;
  }
  *x = torch::randn({kTokens, kDModel}, torch::kFloat64);
  x->select(1, 0).fill_(4.0);
  return moe;
}

void check_padded_equals_layer(Activation act) {
  const std::string what = to_string(act);
  torch::Tensor x0;
  MoE moe = make_layer(act, &x0);
  auto dy = torch::randn({kTokens, kDModel}, torch::kFloat64);

  auto x1 = x0.clone().requires_grad_(true);
  auto layer = moe->forward(x1);
  (layer.output * dy).sum().add(layer.aux_loss).backward();
  auto layer_grads = take_grads(*moe);

  auto x2 = x0.clone().requires_grad_(true);
  auto padded = bench::padded_moe_forward(*moe, x2);
  (padded.output * dy).sum().add(padded.aux_loss).backward();
  auto padded_grads = take_grads(*moe);

  // The shape exercises what it is meant to: an empty expert, and padding on the others.
  const auto counts = layer.stats.tokens_per_expert;
  ASSERT_EQ(counts[kEmptyExpert].item<int64_t>(), 0) << what << ": counts " << counts;
  EXPECT_EQ(padded.capacity, counts.max().item<int64_t>()) << what << ": counts " << counts;
  EXPECT_GT(padded.capacity * kExperts, kTokens * kTopK) << what << ": nothing padded";

  EXPECT_TRUE(close(padded.output, layer.output, 1e-10)) << what << ": output";
  EXPECT_TRUE(close(padded.aux_loss, layer.aux_loss, 1e-10)) << what << ": aux loss";
  EXPECT_TRUE(close(x2.grad(), x1.grad(), 1e-10)) << what << ": dx";
  ASSERT_EQ(padded_grads.size(), layer_grads.size()) << what;
  for (const auto& kv : layer_grads) {
    // The empty expert's weights get no gradient on either path (zeros here).
    EXPECT_TRUE(close(padded_grads[kv.first], kv.second, 1e-10)) << what << ": d" << kv.first;
    if (kv.first == "experts.w1") {
      EXPECT_EQ(kv.second[kEmptyExpert].abs().max().item<double>(), 0.0) << what;
    }
  }
  EXPECT_GT(layer_grads.at("gate.weight").abs().max().item<double>(), 0.0) << what;
}

TEST(PaddedMoETest, EqualsTheLayerGelu) {
  check_padded_equals_layer(Activation::kGelu);
}

TEST(PaddedMoETest, EqualsTheLayerSwiGLU) {
  check_padded_equals_layer(Activation::kSwiGLU);
}

TEST(PaddedMoETest, RefusesUserExpertModules) {
  MoE moe(MoEOptions(4, 2).top_k(1).expert(
      [](int64_t) { return torch::nn::AnyModule(torch::nn::Linear(4, 4)); }));
  EXPECT_TRUE(testing::throws_with(
      [&] {
        bench::padded_moe_forward(*moe, torch::randn({3, 4}));
      },
      "expected the built-in grouped experts"));
}

}  // namespace
}  // namespace hybridmoe
