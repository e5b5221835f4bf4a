// convention_layer_test.cpp — each peer convention through the MoE layer: the grouped-GEMM
// forward against the sequential reference (forward_reference), output, auxiliary loss and every
// gradient in float64 (relative 1e-12), with capacities that drop; the choice table in
// MoEOutput (every choice, kept or dropped) against the layer's own counts; MoEOptions::gate()
// refusing to overwrite a forwarded setting; the trainer key `convention`. Includes the umbrella
// header, so that it is compiled with every public header.
#include <gtest/gtest.h>

#include "hybridmoe/distributed.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

using testing::close;
using testing::identical;
using testing::throws_with;

constexpr double kTol = 1e-12;  // float64, relative to the largest entry

struct Preset {
  std::string gate;
  Convention convention;
  int64_t k;
};

const std::vector<Preset> kPresets = {
    {"topk", Convention::kDeepSpeed, 1}, {"topk", Convention::kDeepSpeed, 2},
    {"topk", Convention::kDeepSpeed, 3}, {"topk", Convention::kTutel, 1},
    {"topk", Convention::kTutel, 2},     {"topk", Convention::kMegatron, 2},
    {"topk", Convention::kMegatron, 3},  {"topk", Convention::kGShard, 2},
    {"gshard", Convention::kGShard, 2},  {"cosine", Convention::kTutel, 2},
};

// Gradients of every parameter, cloned (zeros where none).
std::map<std::string, torch::Tensor> grads_of(torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> out;
  for (auto& kv : m.named_parameters())
    out[kv.key()] =
        kv.value().grad().defined() ? kv.value().grad().clone() : torch::zeros_like(kv.value());
  return out;
}

TEST(ConventionLayer, EveryPresetMatchesTheSequentialReferenceForwardAndBackward) {
  const int64_t T = 37, d = 8, E = 6;
  int64_t drops = 0;
  for (const auto& p : kPresets)
    for (double cf : {0.0, 0.5, 1.0}) {
      const std::string what = p.gate + "+" + to_string(p.convention) +
                               " k=" + std::to_string(p.k) + " cf=" + std::to_string(cf);
      SCOPED_TRACE(what);
      torch::manual_seed(3);
      auto g = GateOptions()
                   .type(p.gate)
                   .top_k(p.k)
                   .capacity_factor(cf)
                   .convention(p.convention)
                   .aux_loss_coef(0.1)
                   .z_loss_coef(1e-3);
      MoE moe(MoEOptions(d, E).d_hidden(12).gate(g));
      moe->to(torch::kFloat64);
      auto x = torch::randn({T, d}, torch::kFloat64);
      auto dy = torch::randn({T, d}, torch::kFloat64);
      // 1. The layer.
      auto xa = x.clone().requires_grad_(true);
      auto a = moe->forward(xa);
      ((a.output * dy).sum() + a.aux_loss).backward();
      auto ga = grads_of(*moe);
      // 2. The sequential reference.
      moe->zero_grad();
      auto xb = x.clone().requires_grad_(true);
      auto b = moe->forward_reference(xb);
      ((b.output * dy).sum() + b.aux_loss).backward();
      auto gb = grads_of(*moe);
      EXPECT_TRUE(close(a.output, b.output, kTol));
      EXPECT_TRUE(close(a.aux_loss, b.aux_loss, kTol));
      EXPECT_TRUE(close(xa.grad(), xb.grad(), kTol));
      for (const auto& kv : gb) EXPECT_TRUE(close(ga[kv.first], kv.second, kTol)) << kv.first;
      // 3. The choice table: every choice of every token, consistent with the counts.
      const auto& c = a.stats.choices;
      ASSERT_TRUE(c.kept.defined());
      EXPECT_EQ(c.token.numel(), T * p.k);
      EXPECT_TRUE(identical(c.token, torch::arange(T).repeat_interleave(p.k)));
      EXPECT_EQ(c.kept.sum().item<int64_t>(), a.stats.tokens_per_expert.sum().item<int64_t>());
      EXPECT_EQ(c.kept.logical_not().sum().item<int64_t>(), a.stats.tokens_dropped);
      auto kept_experts = c.expert.masked_select(c.kept);
      EXPECT_TRUE(identical(torch::bincount(kept_experts, {}, E), a.stats.tokens_per_expert));
      EXPECT_EQ(c.weight.masked_select(c.kept.logical_not()).abs().sum().item<double>(), 0.0);
      if (cf > 0) {
        EXPECT_LT(c.slot.max().item<int64_t>(), a.stats.capacity);
        // Slots are distinct within each expert.
        auto key = kept_experts * a.stats.capacity + c.slot.masked_select(c.kept);
        EXPECT_EQ(std::get<0>(at::_unique(key)).numel(), key.numel());
      } else {
        EXPECT_TRUE(c.kept.all().item<bool>());
        EXPECT_TRUE(identical(c.slot, torch::full_like(c.slot, -1)));
      }
      // The kept choices carry the combine weights of the layer's routing.
      auto r = moe->gate->route(x);
      EXPECT_TRUE(close(c.weight.masked_select(c.kept), r.weight.detach(), kTol));
      drops += a.stats.tokens_dropped;
    }
  EXPECT_GT(drops, 0) << "the capacities drop choices";
}

TEST(ConventionLayer, GroupedForwardConcatenatesTheChoiceTables) {
  MoE moe(MoEOptions(8, 4).d_hidden(12).top_k(2).capacity_factor(0.5).convention(
      Convention::kDeepSpeed));
  moe->to(torch::kFloat64);
  auto x = torch::randn({20, 8}, torch::kFloat64);
  auto out = moe->forward_grouped(x, {7, 13});
  const auto& c = out.stats.choices;
  EXPECT_TRUE(identical(c.token, torch::arange(20).repeat_interleave(2)));
  auto second = moe->gate->route(x.narrow(0, 7, 13));
  EXPECT_TRUE(identical(c.kept.narrow(0, 14, 26), second.choices.kept));
  EXPECT_TRUE(identical(c.slot.narrow(0, 14, 26), second.choices.slot));
}

TEST(ConventionLayer, GateOptionsDoNotSilentlyOverwriteForwardedSettings) {
  EXPECT_TRUE(throws_with([] { MoEOptions(8, 4).top_k(3).gate(GateOptions()); },
                          "gate(...) has top_k=2 but top_k(3) was set before"));
  EXPECT_TRUE(throws_with([] { MoEOptions(8, 4).capacity_factor(1.25).gate(GateOptions()); },
                          "gate(...) has capacity_factor=0 but capacity_factor(1.25)"));
  EXPECT_TRUE(
      throws_with([] { MoEOptions(8, 4).convention(Convention::kTutel).gate(GateOptions()); },
                  "gate(...) has convention \"none\" but convention(\"tutel\")"));
  EXPECT_TRUE(throws_with([] { MoEOptions(8, 4).gate_type("switch").gate(GateOptions()); },
                          "gate(...) has type \"topk\" but gate_type(\"switch\")"));
  // Agreeing options, or gate(...) first and forwarded settings after, are fine.
  auto o = MoEOptions(8, 4).top_k(3).gate(GateOptions().top_k(3).aux_loss_coef(0.5));
  EXPECT_EQ(o.top_k(), 3);
  EXPECT_EQ(o.gate().aux_loss_coef(), 0.5);
  auto later = MoEOptions(8, 4).gate(GateOptions().aux_loss_coef(0.5)).top_k(4);
  EXPECT_EQ(later.gate().top_k(), 4);
  EXPECT_EQ(later.gate().aux_loss_coef(), 0.5);
}

TEST(ConventionLayer, TrainerKeyConventionReachesTheGates) {
  TrainConfig c;
  set_config_value(c, "convention", "deepspeed");
  set_config_value(c, "top_k", "3");
  EXPECT_EQ(c.model_options().gate().convention(), Convention::kDeepSpeed);
  EXPECT_EQ(c.model_options().moe_options().gate().convention(), Convention::kDeepSpeed);
  EXPECT_EQ(check_config(c), "");
  c.convention = "fairseq";
  EXPECT_NE(check_config(c).find("convention: expected one of"), std::string::npos)
      << check_config(c);
  c.convention = "megatron";
  c.gate = "sinkhorn";
  EXPECT_NE(check_config(c).find("sinkhorn gate: routing rule convention=megatron"),
            std::string::npos)
      << check_config(c);
}

TEST(ConventionLayer, VerifyGateSpecsNameThePresets) {
  auto ds = GateSpec::parse("deepspeed:3@1.0");
  EXPECT_EQ(ds.name, "topk");
  EXPECT_EQ(ds.convention, Convention::kDeepSpeed);
  EXPECT_EQ(ds.top_k, 3);
  EXPECT_EQ(ds.capacity_factor, 1.0);
  EXPECT_EQ(ds.to_string(), "topk+deepspeed:3@1");
  auto gate = GateSpec::parse("gshard@1.0");  // the gshard gate, not the convention
  EXPECT_EQ(gate.name, "gshard");
  EXPECT_EQ(gate.convention, Convention::kNone);
  auto cos = GateSpec::parse("cosine+tutel@1.25");
  EXPECT_EQ(cos.name, "cosine");
  EXPECT_EQ(cos.convention, Convention::kTutel);
  EXPECT_TRUE(throws_with([] { GateSpec::parse("switch:1+deepspeed@1.0"); },
                          "the k of \"switch:1+deepspeed@1.0\" is not an integer"));
  EXPECT_TRUE(throws_with([] { GateSpec::parse("topk+fairseq"); }, "convention: expected one of"));
  EXPECT_TRUE(throws_with([] { GateSpec::parse("tutel@1.0x"); },
                          "the capacity factor of \"tutel@1.0x\" is not a number"));
}

}  // namespace
}  // namespace hybridmoe
