// model_test.cpp — the GPT model on one process: forward and backward against a plain reference
// (per-head loops, explicit causal mask, the MoE layer's sequential oracle), moefy with one expert
// and top-1 reproducing the dense model, and upcycling with any number of experts. The layouts on
// several ranks are in model_dist_test.cpp.
#include <gtest/gtest.h>

#include <cmath>

#include "hybridmoe/model.h"
#include "model/gpt_fixtures.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

using testing::random_tokens;
using testing::rel_err;
using testing::tiny_gpt_options;

// The model's computation written out with plain ops: per-head loops, an explicit causal mask,
// the MoE layer through its sequential oracle.
torch::Tensor plain_forward(GPTImpl& m, const torch::Tensor& tokens, torch::Tensor& aux) {
  namespace F = torch::nn::functional;
  const auto& o = m.options;
  const int64_t B = tokens.size(0), S = tokens.size(1), H = o.n_heads(), hd = o.d_model() / H;
  auto x = m.tok_emb->weight.index_select(0, tokens.reshape({-1})).view({B, S, -1}) +
           m.pos_emb->weight.narrow(0, 0, S).unsqueeze(0);
  auto ln = [&](const torch::Tensor& t, Norm& l) {
    auto mu = t.mean(-1, true);
    auto var = (t - mu).pow(2).mean(-1, true);
    return (t - mu) / torch::sqrt(var + 1e-5) * l->weight + l->bias;
  };
  aux = torch::zeros({}, x.options());
  auto causal = torch::ones({S, S}, x.options()).tril();
  for (auto& b : m.block_list) {
    auto n = ln(x, b->ln1);
    auto project = [&](ColumnParallelLinear& l) {
      auto y = torch::matmul(n, l->weight.t());
      return l->bias.defined() ? y + l->bias : y;  // no key bias without RoPE (attention.h)
    };
    auto qs = project(b->attn->q_proj), ks = project(b->attn->k_proj),
         vs = project(b->attn->v_proj);
    std::vector<torch::Tensor> outs;
    for (int64_t h = 0; h < H; ++h) {
      auto q = qs.narrow(-1, h * hd, hd), k = ks.narrow(-1, h * hd, hd),
           v = vs.narrow(-1, h * hd, hd);
      auto s = torch::bmm(q, k.transpose(1, 2)) / std::sqrt(static_cast<double>(hd));
      s = s * causal - 1e30 * (1 - causal);
      outs.push_back(torch::bmm(torch::softmax(s, -1), v));
    }
    x = x + torch::matmul(torch::cat(outs, -1), b->attn->o_proj->weight.t()) +
        b->attn->o_proj->bias;
    n = ln(x, b->ln2);
    if (b->moe) {
      auto r = b->moe->forward_reference(n.reshape({-1, o.d_model()}));
      x = x + r.output.view(n.sizes());
      aux = aux + r.aux_loss;
    } else {
      auto h = torch::gelu(torch::matmul(n, b->mlp->fc1->weight.t()) + b->mlp->fc1->bias);
      x = x + torch::matmul(h, b->mlp->fc2->weight.t()) + b->mlp->fc2->bias;
    }
  }
  return torch::matmul(ln(x, m.ln_f), m.tok_emb->weight.t());
}

TEST(Model, ForwardBackwardMatchPlainReference) {
  torch::manual_seed(1);
  GPT model(tiny_gpt_options());
  model->to(torch::kFloat64);
  auto tokens = random_tokens(3, 8, 5), targets = random_tokens(3, 8, 6);
  auto out = model(tokens);
  ASSERT_EQ(out.logits.sizes(), (std::vector<int64_t>{3, 8, 256}));
  ASSERT_EQ(out.moe_stats.size(), 1u);
  auto loss = lm_loss(out.logits, targets) + out.aux_loss;
  auto params = model->parameters();
  auto grads = torch::autograd::grad({loss}, params);

  torch::Tensor aux;
  auto logits = plain_forward(*model, tokens, aux);
  auto ref_loss =
      torch::nn::functional::cross_entropy(logits.view({-1, 256}), targets.view({-1})) + aux;
  auto ref_grads = torch::autograd::grad({ref_loss}, params);
  EXPECT_LT(rel_err(out.logits, logits), 1e-10);
  EXPECT_LT(rel_err(out.aux_loss, aux), 1e-10);
  for (size_t i = 0; i < params.size(); ++i) EXPECT_LT(rel_err(grads[i], ref_grads[i]), 1e-9) << i;
}

TEST(Model, MoefyOneExpertTop1ReproducesDense) {
  auto o = tiny_gpt_options(0);
  torch::manual_seed(2);
  GPT dense(o);
  torch::manual_seed(2);
  GPT moe(o);
  dense->to(torch::kFloat64);
  moe->to(torch::kFloat64);
  moefy(*moe, MoEOptions(16, 1).top_k(1), /*upcycle=*/true);
  EXPECT_EQ(moe->moe_layers().size(), 2u);
  EXPECT_EQ(moe->options.moe_every(), 1);
  auto tokens = random_tokens(2, 8, 7);
  torch::NoGradGuard ng;
  EXPECT_LT(rel_err(moe(tokens).logits, dense(tokens).logits), 1e-12);
  EXPECT_EQ(moe->named_parameters().contains("blocks.0.mlp.fc1.weight"), false);
}

TEST(Model, UpcyclingReproducesDenseWithAnyExperts) {
  auto o = tiny_gpt_options(0);
  for (auto [E, k] : std::vector<std::pair<int64_t, int64_t>>{{2, 1}, {4, 2}, {3, 3}, {8, 2}}) {
    torch::manual_seed(3);
    GPT dense(o);
    torch::manual_seed(3);
    GPT moe(o);
    dense->to(torch::kFloat64);
    moe->to(torch::kFloat64);
    moefy(*moe, MoEOptions(16, E).top_k(k).normalize_top_k_weights(true), true, /*every=*/2);
    EXPECT_EQ(moe->moe_layers().size(), 1u);
    auto tokens = random_tokens(2, 8, 8);
    torch::NoGradGuard ng;
    EXPECT_LT(rel_err(moe(tokens).logits, dense(tokens).logits), 1e-12) << E << " experts, k " << k;
  }
  // Without upcycling the experts are fresh: the output changes.
  torch::manual_seed(3);
  GPT dense(o);
  torch::manual_seed(3);
  GPT fresh(o);
  moefy(*fresh, MoEOptions(16, 4), false);
  auto tokens = random_tokens(2, 8, 8);
  torch::NoGradGuard ng;
  EXPECT_GT(rel_err(fresh(tokens).logits, dense(tokens).logits), 1e-6);
}

}  // namespace
}  // namespace hybridmoe
