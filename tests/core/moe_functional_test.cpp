// moe_functional_test.cpp — moe_forward (moe_functional.h): the layer's forward on tensors the
// caller owns equals the layer on its own tensors (output, aux loss, every gradient, bit for
// bit), gradients reach the caller's tensors, buffer updates land in the caller's buffers, and
// binding refuses a missing, unknown or misshapen tensor.
#include <gtest/gtest.h>

#include "hybridmoe/moe_functional.h"

namespace hybridmoe {
namespace {

std::map<std::string, torch::Tensor> owned_copy(MoEImpl& layer) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& kv : layer.named_parameters())
    out[kv.key()] = kv.value().detach().clone().requires_grad_();
  for (const auto& kv : layer.named_buffers()) out[kv.key()] = kv.value().detach().clone();
  return out;
}

TEST(MoEFunctional, EqualsTheLayerBitForBit) {
  for (bool shared : {false, true}) {
    torch::manual_seed(0);
    auto opts = MoEOptions(8, 4).top_k(2).d_hidden(6).capacity_factor(0.75);
    opts.activation(Activation::kSwiGLU).gate().z_loss_coef(1e-2);
    if (shared) opts.shared_expert_hidden(5).shared_expert_gate(true);
    MoE own(opts);
    own->to(torch::kFloat64);
    MoE bound(opts);
    auto mine = owned_copy(*own);
    auto x = torch::randn({10, 8}, torch::kFloat64);
    auto g = torch::randn({10, 8}, torch::kFloat64);
    MoEOutput a = own->forward(x);
    ((a.output * g).sum() + a.aux_loss).backward();
    MoEOutput b = moe_forward(*bound, mine, x);
    ((b.output * g).sum() + b.aux_loss).backward();
    EXPECT_TRUE(torch::equal(a.output, b.output));
    EXPECT_TRUE(torch::equal(a.aux_loss, b.aux_loss));
    EXPECT_EQ(a.stats.tokens_dropped, b.stats.tokens_dropped);
    for (const auto& kv : own->named_parameters()) {
      ASSERT_TRUE(mine.at(kv.key()).grad().defined()) << kv.key();
      EXPECT_TRUE(torch::equal(kv.value().grad(), mine.at(kv.key()).grad())) << kv.key();
      // The bound layer computes with the caller's tensor itself.
      EXPECT_EQ(bound->named_parameters()[kv.key()].unsafeGetTensorImpl(),
                mine.at(kv.key()).unsafeGetTensorImpl());
    }
  }
}

TEST(MoEFunctional, BufferUpdatesLandInTheCallersBuffers) {
  auto opts = MoEOptions(8, 4).top_k(2).d_hidden(4);
  opts.gate().bias_update_rate(0.1);
  MoE layer(opts);
  auto mine = owned_copy(*layer);
  moe_forward(*layer, mine, torch::randn({6, 8}));
  EXPECT_EQ(mine.at("gate.step_load").sum().item<int64_t>(), 12);
  layer->gate->after_step();
  EXPECT_GT(mine.at("gate.expert_bias").abs().sum().item<double>(), 0.0);
}

TEST(MoEFunctional, RefusesMissingUnknownAndMisshapenTensors) {
  MoE layer(MoEOptions(8, 4).top_k(2).d_hidden(4));
  auto x = torch::randn({3, 8});
  auto missing = owned_copy(*layer);
  missing.erase("experts.w1");
  EXPECT_THROW(moe_forward(*layer, missing, x), c10::Error);
  auto unknown = owned_copy(*layer);
  unknown["experts.w9"] = torch::zeros({1});
  EXPECT_THROW(moe_forward(*layer, unknown, x), c10::Error);
  auto misshapen = owned_copy(*layer);
  misshapen["gate.weight"] = torch::zeros({4, 7});
  try {
    moe_forward(*layer, misshapen, x);
    FAIL() << "no error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find("\"gate.weight\" has shape [4, 7]"),
              std::string::npos)
        << e.what_without_backtrace();
  }
}

}  // namespace
}  // namespace hybridmoe
