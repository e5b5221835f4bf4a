// shared_expert_test.cpp — the MoE layer's shared expert (DeepSeek's ungated, Qwen2-MoE's behind a
// sigmoid gate): the layer's output equals the routed layer's plus the shared MLP written out
// here, in every forward path (forward, forward_grouped, forward_reference); gradients reach the
// shared parameters; on one process it is whole (nothing split over tp) and gathers as a copy; bad
// options are refused by name.
#include <gtest/gtest.h>

#include "hybridmoe/moe.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

MoEOptions base_options(Activation act) {
  return MoEOptions(8, 4).d_hidden(12).top_k(2).activation(act);
}

/// The shared MLP by its formula. x: [T, d] → [T, d].
torch::Tensor shared_by_formula(const MoEImpl& m, const torch::Tensor& x) {
  const auto& s = *m.shared_expert;
  auto h = torch::mm(x, s.w1[0]) + s.b1[0];
  h = s.options.activation() == Activation::kSwiGLU
          ? torch::silu(h) * (torch::mm(x, s.w3[0]) + s.b3[0])
          : torch::gelu(h);
  auto y = torch::mm(h, s.w2[0]) + s.b2[0];
  if (m.shared_gate.defined()) y = y * torch::sigmoid(torch::mm(x, m.shared_gate.t()));
  return y;
}

TEST(SharedExpert, AddsTheSharedMlpToTheRoutedOutputInEveryPath) {
  for (auto act : {Activation::kGelu, Activation::kSwiGLU})
    for (bool gated : {false, true}) {
      SCOPED_TRACE(std::string(act == Activation::kGelu ? "gelu" : "swiglu") +
                   (gated ? " gated" : " ungated"));
      torch::manual_seed(3);
      MoE with(base_options(act).shared_expert_hidden(10).shared_expert_gate(gated));
      MoE without(base_options(act));
      with->to(torch::kFloat64);
      without->to(torch::kFloat64);
      {
        torch::NoGradGuard no_grad;
        auto src = with->named_parameters();
        for (auto& kv : without->named_parameters()) kv.value().copy_(src[kv.key()]);
      }
      auto x = torch::randn({2, 5, 8}, torch::kFloat64);
      auto expected =
          without(x).output + shared_by_formula(*with, x.reshape({-1, 8})).view(x.sizes());
      EXPECT_TRUE(testing::close(with(x).output, expected, 1e-13));
      EXPECT_TRUE(testing::close(with->forward_reference(x).output, expected, 1e-13));
      auto grouped = with->forward_grouped(x, {10});
      EXPECT_TRUE(testing::close(grouped.output, expected, 1e-13));
      // Gradients reach the shared parameters (and the gate).
      with(x).output.pow(2).sum().backward();
      EXPECT_GT(with->shared_expert->w1.grad().abs().sum().item<double>(), 0.0);
      if (gated) {
        EXPECT_GT(with->shared_gate.grad().abs().sum().item<double>(), 0.0);
      }
      EXPECT_EQ(with->shared_expert->gradient_group(), GroupKind::kDp);
      // One process: whole, nothing declared split over tp (the routed experts neither).
      EXPECT_EQ(with->shared_expert_tp(), 1);
      EXPECT_TRUE(with->shared_expert->tp_shard_names().empty());
      EXPECT_TRUE(with->experts->tp_shard_names().empty());
    }
}

TEST(SharedExpert, GatherOnOneProcessCopiesTheWholeSharedExpert) {
  for (bool gated : {false, true}) {
    const auto opts =
        base_options(Activation::kSwiGLU).shared_expert_hidden(10).shared_expert_gate(gated);
    torch::manual_seed(1);
    MoE src(opts);
    torch::manual_seed(2);
    MoE dst(opts);
    src->gather_full_shared_expert(*dst);
    auto expected = src->shared_expert->named_parameters();
    for (auto& kv : dst->shared_expert->named_parameters())
      EXPECT_TRUE(torch::equal(kv.value(), expected[kv.key()])) << kv.key();
    if (gated) {
      EXPECT_TRUE(torch::equal(dst->shared_gate, src->shared_gate));
    }
    MoE plain(base_options(Activation::kSwiGLU));
    EXPECT_TRUE(testing::throws_with([&] { src->gather_full_shared_expert(*plain); },
                                     "the target layer's shared expert differs"));
  }
}

TEST(SharedExpert, RefusesBadOptionsByName) {
  EXPECT_TRUE(
      testing::throws_with([] { MoE m(base_options(Activation::kGelu).shared_expert_hidden(-1)); },
                           "shared_expert_hidden must be >= 0, got -1"));
  EXPECT_TRUE(
      testing::throws_with([] { MoE m(base_options(Activation::kGelu).shared_expert_gate(true)); },
                           "shared_expert_gate needs shared_expert_hidden > 0"));
}

}  // namespace
}  // namespace hybridmoe
