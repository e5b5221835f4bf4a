// family_test.cpp — the five MoE family presets as whole models on one process: which blocks are
// MoE and which pieces each family has (from its options), the SwiGLU dense MLP against its
// formula, a one-expert top-1 MoE block equal to the dense SwiGLU MLP, and each family's tiny model
// learning the embedded corpus (the loss falls by a stated margin in a few dozen steps).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "hybridmoe/data.h"
#include "hybridmoe/model.h"
#include "hybridmoe/model_presets.h"
#include "model/gpt_fixtures.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

using testing::random_tokens;
using testing::rel_err;

class Family : public ::testing::TestWithParam<ModelFamily> {};

TEST_P(Family, BuildsTheFamilysPieces) {
  const auto o = model_preset(GetParam());
  torch::manual_seed(0);
  GPT model(o);
  // 1. MoE blocks where the options put them; dense SwiGLU MLPs elsewhere.
  for (int64_t i = 0; i < o.n_layers(); ++i) {
    const auto& b = model->block_list[i];
    EXPECT_EQ(static_cast<bool>(b->moe), o.is_moe_block(i)) << i;
    if (b->mlp) {
      EXPECT_TRUE(b->mlp->fc3) << "SwiGLU dense MLP has an up projection";
      EXPECT_FALSE(b->mlp->fc1->bias.defined());
    }
    EXPECT_EQ(static_cast<bool>(b->mla), o.attention() == AttentionType::kLatent);
    EXPECT_FALSE(b->ln1->bias.defined()) << "RMSNorm has no bias";
  }
  // 2. Untied head, no learned positions (RoPE).
  EXPECT_TRUE(model->lm_head);
  EXPECT_FALSE(model->pos_emb);
  // 3. The shared expert as the family has it.
  for (auto& layer : model->moe_layers()) {
    EXPECT_EQ(static_cast<bool>(layer->shared_expert), o.shared_expert_hidden() > 0);
    EXPECT_EQ(layer->shared_gate.defined(), o.shared_expert_gate());
  }
  // 4. A forward and backward reach every parameter.
  auto out = model(random_tokens(2, 16, 1));
  ASSERT_EQ(out.logits.sizes(), (std::vector<int64_t>{2, 16, o.vocab_size()}));
  (lm_loss(out.logits, random_tokens(2, 16, 2)) + out.aux_loss).backward();
  for (const auto& kv : model->named_parameters())
    EXPECT_TRUE(kv.value().grad().defined()) << kv.key();
}

TEST_P(Family, LearnsTheCorpus) {
  // The tiny preset at 2 blocks, 40 Adam steps of 8 windows of 32 bytes: the loss of the last 5
  // steps is below 75% of the first step's (ln 256 ≈ 5.55 at the start).
  auto o = model_preset(GetParam()).n_layers(2).context(32);
  torch::manual_seed(7);
  GPT model(o);
  const Corpus corpus = Corpus::synthetic(11, 2000, 2);
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(3e-3));
  double first = 0.0, last = 0.0;
  const int64_t steps = 40;
  for (int64_t step = 0; step < steps; ++step) {
    auto [x, y] = corpus.batch(5, step, 0, 8, 32);
    auto out = model(x);
    auto ce = lm_loss(out.logits, y);
    opt.zero_grad();
    (ce + out.aux_loss).backward();
    opt.step();
    model->after_step();
    if (step == 0) first = ce.item<double>();
    if (step >= steps - 5) last += ce.item<double>() / 5.0;
  }
  EXPECT_LT(last, 0.75 * first) << to_string(GetParam()) << ": " << first << " -> " << last;
}

INSTANTIATE_TEST_SUITE_P(Presets, Family, ::testing::ValuesIn(moe_families()),
                         [](const ::testing::TestParamInfo<ModelFamily>& info) {
                           return to_string(info.param);
                         });

TEST(FamilyPieces, SwiGLUMlpMatchesItsFormula) {
  auto o = model_preset(ModelFamily::kMixtral).mlp_bias(true);
  torch::manual_seed(3);
  MLP mlp(o, nullptr);
  mlp->to(torch::kFloat64);
  auto x = torch::randn({5, o.d_model()}, torch::kFloat64);
  auto lin = [&](const ColumnParallelLinear& l) { return x.matmul(l->weight.t()) + l->bias; };
  auto h = torch::silu(lin(mlp->fc1)) * lin(mlp->fc3);
  auto ref = h.matmul(mlp->fc2->weight.t()) + mlp->fc2->bias;
  EXPECT_LT(rel_err(mlp(x), ref), 1e-14);
}

TEST(FamilyPieces, OneExpertTop1EqualsTheDenseSwiGLUMlp) {
  // Mixtral's block with one expert, top-1, renormalized: the routed weight is 1, so the MoE
  // layer is its one SwiGLU expert, which holds the dense MLP's weights.
  auto o = model_preset(ModelFamily::kMixtral).num_experts(1).expert_hidden(128).d_mlp(128);
  o.gate(o.gate().top_k(1).aux_loss_coef(0.0));
  torch::manual_seed(4);
  MLP mlp(o, nullptr);
  MoE moe(o.moe_options());
  mlp->to(torch::kFloat64);
  moe->to(torch::kFloat64);
  {
    torch::NoGradGuard ng;
    auto p = moe->experts->named_parameters();
    p["w1"].copy_(mlp->fc1->weight.t().unsqueeze(0));
    p["w3"].copy_(mlp->fc3->weight.t().unsqueeze(0));
    p["w2"].copy_(mlp->fc2->weight.t().unsqueeze(0));
  }
  auto x = torch::randn({6, o.d_model()}, torch::kFloat64);
  EXPECT_LT(rel_err(moe(x).output, mlp(x)), 1e-13);
}

}  // namespace
}  // namespace hybridmoe
