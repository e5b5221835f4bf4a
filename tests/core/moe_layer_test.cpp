// moe_layer_test.cpp — the single-process MoE layer against its oracle (sequential_moe_reference):
// forward and every gradient over a table of shapes, dtypes and capacity settings; one expert with
// top-1 equals the dense MLP; capacity drops exactly the documented assignments; user expert
// modules; errors on bad input.
#include <gtest/gtest.h>

#include "hybridmoe/gates.h"
#include "hybridmoe/moe.h"
#include "hybridmoe/testing/references.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

using testing::close;
using testing::identical;
using testing::throws_with;

struct Shape {
  int64_t tokens, d_model, d_hidden, experts, top_k;
};

// From tiny to large; includes tokens = 1 and experts that receive no token (experts > tokens*k).
const std::vector<Shape> kShapes = {
    {1, 4, 8, 1, 1},    {1, 4, 8, 4, 2},     {3, 6, 10, 16, 1},    {8, 8, 16, 4, 4},
    {33, 16, 24, 8, 2}, {128, 32, 64, 8, 2}, {256, 64, 96, 64, 2}, {1024, 64, 128, 16, 4},
};

// A user expert: Linear → GELU → Linear, registered as "0" and "2" like a Sequential.
struct TinyMLPImpl : torch::nn::Module {
  TinyMLPImpl(int64_t d, int64_t h)
      : fc1(register_module("0", torch::nn::Linear(d, h))),
        fc2(register_module("2", torch::nn::Linear(h, d))) {}
  torch::Tensor forward(torch::Tensor x) { return fc2(torch::gelu(fc1(x))); }
  torch::nn::Linear fc1, fc2;
};
TORCH_MODULE(TinyMLP);

std::map<std::string, torch::Tensor> grads_of(torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> g;
  for (const auto& kv : m.named_parameters())
    g[kv.key()] =
        kv.value().grad().defined() ? kv.value().grad().clone() : torch::zeros_like(kv.value());
  return g;
}

void zero_grads(torch::nn::Module& m) {
  for (auto& p : m.parameters())
    if (p.grad().defined()) p.mutable_grad() = torch::Tensor();
}

// Runs forward+backward through the layer and through the reference and compares everything.
void check_against_reference(MoE& moe, const torch::Tensor& x_in, const std::string& what) {
  const auto dtype = x_in.scalar_type();
  auto x1 = x_in.clone().requires_grad_(true);
  auto x2 = x_in.clone().requires_grad_(true);
  auto dy = torch::randn(x_in.sizes(), torch::dtype(dtype));
  auto out = moe->forward(x1);
  (out.output * dy).sum().add(out.aux_loss).backward();
  auto g1 = grads_of(*moe);
  zero_grads(*moe);
  auto ref = moe->forward_reference(x2);
  (ref.output * dy).sum().add(ref.aux_loss).backward();
  auto g2 = grads_of(*moe);
  zero_grads(*moe);
  ASSERT_TRUE(close(out.output, ref.output)) << what << ": output";
  EXPECT_TRUE(close(out.aux_loss, ref.aux_loss)) << what << ": aux loss";
  EXPECT_TRUE(identical(out.stats.tokens_per_expert, ref.stats.tokens_per_expert)) << what;
  EXPECT_EQ(out.stats.tokens_dropped, ref.stats.tokens_dropped) << what;
  EXPECT_TRUE(close(x1.grad(), x2.grad())) << what << ": dx";
  for (const auto& kv : g2)
    EXPECT_TRUE(close(g1[kv.first], kv.second)) << what << ": d" << kv.first;
}

class MoELayerTest
    : public ::testing::TestWithParam<std::tuple<torch::ScalarType, double, Activation>> {};

TEST_P(MoELayerTest, MatchesSequentialReference) {
  auto [dtype, capacity_factor, act] = GetParam();
  for (const auto& s : kShapes) {
    torch::manual_seed(7 * s.tokens + s.experts);
    MoE moe(MoEOptions(s.d_model, s.experts)
                .d_hidden(s.d_hidden)
                .top_k(s.top_k)
                .capacity_factor(capacity_factor)
                .activation(act));
    moe->to(dtype);
    auto x = torch::randn({s.tokens, s.d_model}, torch::dtype(dtype));
    check_against_reference(moe, x,
                            "T=" + std::to_string(s.tokens) + " E=" + std::to_string(s.experts) +
                                " k=" + std::to_string(s.top_k));
  }
}

INSTANTIATE_TEST_SUITE_P(All, MoELayerTest,
                         ::testing::Combine(::testing::Values(torch::kFloat64, torch::kFloat32),
                                            ::testing::Values(0.0, 1.0, 0.5),
                                            ::testing::Values(Activation::kGelu,
                                                              Activation::kSwiGLU)),
                         [](const auto& info) {
                           auto cf = std::get<1>(info.param);
                           return std::string(std::get<0>(info.param) == torch::kFloat64 ? "f64"
                                                                                         : "f32") +
                                  (cf <= 0  ? "_dropless"
                                   : cf < 1 ? "_cap05"
                                            : "_cap1") +
                                  "_" + to_string(std::get<2>(info.param));
                         });

TEST(MoELayer, BatchedInputEqualsFlattened) {
  torch::manual_seed(11);
  MoE moe(MoEOptions(8, 4).d_hidden(16).top_k(2));
  moe->to(torch::kFloat64);
  auto x = torch::randn({3, 5, 8}, torch::kFloat64);
  auto out3 = moe->forward(x);
  auto out2 = moe->forward(x.reshape({15, 8}));
  EXPECT_EQ(out3.output.sizes(), x.sizes());
  EXPECT_TRUE(identical(out3.output.reshape({15, 8}), out2.output));
}

TEST(MoELayer, OneExpertTopOneEqualsDenseMLP) {
  for (auto act : {Activation::kGelu, Activation::kRelu, Activation::kSwiGLU}) {
    torch::manual_seed(5);
    const int64_t d = 12, h = 20, T = 17;
    MoE moe(MoEOptions(d, 1).d_hidden(h).top_k(1).activation(act));
    moe->to(torch::kFloat64);
    auto& ex = *moe->grouped;
    auto x = torch::randn({T, d}, torch::kFloat64);
    // The dense MLP with the same weights, written with torch::nn::Linear.
    auto fc1 = torch::nn::Linear(d, h), fc2 = torch::nn::Linear(h, d),
         fc3 = torch::nn::Linear(d, h);
    fc1->to(torch::kFloat64);
    fc2->to(torch::kFloat64);
    fc3->to(torch::kFloat64);
    {
      torch::NoGradGuard ng;
      fc1->weight.copy_(ex.w1[0].t());
      fc1->bias.copy_(ex.b1[0]);
      fc2->weight.copy_(ex.w2[0].t());
      fc2->bias.copy_(ex.b2[0]);
      if (act == Activation::kSwiGLU) {
        fc3->weight.copy_(ex.w3[0].t());
        fc3->bias.copy_(ex.b3[0]);
      }
    }
    auto a = fc1(x);
    auto hdn = act == Activation::kGelu   ? torch::gelu(a)
               : act == Activation::kRelu ? torch::relu(a)
                                          : torch::silu(a) * fc3(x);
    auto dense = fc2(hdn);
    EXPECT_TRUE(close(moe->forward(x).output, dense, 1e-13)) << to_string(act);
  }
}

TEST(MoELayer, CapacityDropsExactlyTheDocumentedAssignments) {
  // A loop reference of both drop policies on the topk gate's own choices.
  for (auto policy : {DropPolicy::kPosition, DropPolicy::kProbs}) {
    for (double cf : {0.25, 0.5, 1.0}) {
      torch::manual_seed(21);
      const int64_t T = 50, E = 4, k = 2, d = 6;
      GateOptions go;
      go.top_k(k).capacity_factor(cf).drop_policy(policy);
      TopKGateImpl gate(d, E, go);
      gate.to(torch::kFloat64);
      // Skew the router so that some experts overflow.
      auto x = torch::randn({T, d}, torch::kFloat64) + 0.8;
      auto r = gate.route(x);
      const int64_t cap = compute_capacity(T, E, k, cf, 0);
      EXPECT_EQ(r.capacity, cap);
      auto probs = torch::softmax(x.mm(gate.weight.detach().t()), -1);
      auto [w, idx] = stable_topk(probs, k);
      // Priority list: slot-major, then token.
      struct Item {
        int64_t t, j, e;
        double w;
      };
      std::vector<Item> items;
      for (int64_t j = 0; j < k; ++j)
        for (int64_t t = 0; t < T; ++t)
          items.push_back({t, j, idx[t][j].item<int64_t>(), w[t][j].item<double>()});
      if (policy == DropPolicy::kProbs)
        std::stable_sort(items.begin(), items.end(),
                         [](const Item& a, const Item& b) { return a.w > b.w; });
      std::vector<int64_t> used(E, 0);
      std::set<std::pair<int64_t, int64_t>> kept;  // (token, slot)
      for (const auto& it : items)
        if (used[it.e] < cap) {
          ++used[it.e];
          kept.insert({it.t, it.j});
        }
      std::vector<int64_t> tok, exp;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t j = 0; j < k; ++j)
          if (kept.count({t, j})) {
            tok.push_back(t);
            exp.push_back(idx[t][j].item<int64_t>());
          }
      EXPECT_TRUE(identical(r.token_index, torch::tensor(tok, torch::kInt64))) << to_string(policy);
      EXPECT_TRUE(identical(r.expert_index, torch::tensor(exp, torch::kInt64)))
          << to_string(policy);
      EXPECT_EQ(r.dropped, T * k - static_cast<int64_t>(tok.size()));
      auto counts = torch::bincount(r.expert_index, {}, E);
      EXPECT_LE(counts.max().item<int64_t>(), cap);
    }
  }
}

TEST(MoELayer, FullyDroppedTokenOutputsZero) {
  torch::manual_seed(2);
  const int64_t T = 40, d = 8;
  MoE moe(MoEOptions(d, 2).d_hidden(8).top_k(1).capacity_factor(0.25));
  moe->to(torch::kFloat64);
  auto x = torch::randn({T, d}, torch::kFloat64);
  auto out = moe->forward(x);
  auto r = moe->gate->route(x);
  auto routed = torch::zeros({T}, torch::kBool).index_fill_(0, r.token_index, true);
  ASSERT_GT(out.stats.tokens_dropped, 0);
  auto dropped_rows = out.output.index({~routed});
  EXPECT_TRUE(identical(dropped_rows, torch::zeros_like(dropped_rows)));
  EXPECT_LE(out.stats.tokens_per_expert.max().item<int64_t>(), out.stats.capacity);
}

TEST(MoELayer, UserExpertModules) {
  // FastMoE's expert=: a user module per expert; equals the grouped experts with the same weights.
  torch::manual_seed(8);
  const int64_t d = 6, h = 10, E = 3;
  auto factory = [&](int64_t) { return torch::nn::AnyModule(TinyMLP(d, h)); };
  MoE user(MoEOptions(d, E).top_k(2).expert(factory));
  MoE grouped(MoEOptions(d, E).top_k(2).d_hidden(h));
  user->to(torch::kFloat64);
  grouped->to(torch::kFloat64);
  {
    torch::NoGradGuard ng;
    grouped->gate->parameters()[0].copy_(user->gate->parameters()[0]);
    auto up = user->experts->named_parameters();
    auto& g = *grouped->grouped;
    for (int64_t e = 0; e < E; ++e) {
      auto p = "expert" + std::to_string(e) + ".";
      g.w1[e].copy_(up[p + "0.weight"].t());
      g.b1[e].copy_(up[p + "0.bias"]);
      g.w2[e].copy_(up[p + "2.weight"].t());
      g.b2[e].copy_(up[p + "2.bias"]);
    }
  }
  auto x = torch::randn({19, d}, torch::kFloat64);
  check_against_reference(user, x, "user modules");
  EXPECT_TRUE(close(user->forward(x).output, grouped->forward(x).output, 1e-12));
}

TEST(MoELayer, RejectsBadInput) {
  MoE moe(MoEOptions(8, 4).d_hidden(16).top_k(2));
  EXPECT_TRUE(throws_with([&] { moe->forward(torch::randn({8})); },
                          "input must be [tokens, d_model] or [batch, seq, d_model], got [8]"));
  EXPECT_TRUE(throws_with([&] { moe->forward(torch::randn({2, 2, 2, 8})); }, "got [2, 2, 2, 8]"));
  EXPECT_TRUE(throws_with(
      [&] {
        moe->forward(torch::randn({5, 7}));
      },
      "input width must be d_model=8, got 7"));
  EXPECT_TRUE(throws_with(
      [&] {
        moe->forward(torch::ones({5, 8}, torch::kInt64));
      },
      "must be a floating-point tensor, got Long"));
  auto nan_x = torch::randn({5, 8});
  nan_x[2][3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(throws_with([&] { moe->forward(nan_x); }, "router logits must be finite"));
  EXPECT_TRUE(throws_with([&] { MoE(MoEOptions(8, 4).top_k(5)); },
                          "top_k must be in [1, num_experts=4], got 5"));
  EXPECT_TRUE(throws_with([&] { MoE(MoEOptions(8, 4).top_k(0)); },
                          "top_k must be in [1, num_experts=4], got 0"));
  EXPECT_TRUE(throws_with([&] { MoE(MoEOptions(8, 4).gate_type("nope")); },
                          "unknown gate \"nope\"; known gates: "));
  EXPECT_TRUE(throws_with([&] { MoE(MoEOptions(0, 4)); }, "d_model must be positive, got 0"));
}

TEST(MoELayer, StatsReportLoadAndEntropy) {
  torch::manual_seed(4);
  MoE moe(MoEOptions(8, 4).d_hidden(16).top_k(2));
  auto out = moe->forward(torch::randn({30, 8}));
  EXPECT_EQ(out.stats.tokens_per_expert.sum().item<int64_t>(), 60);
  EXPECT_EQ(out.stats.tokens_dropped, 0);
  EXPECT_EQ(out.stats.capacity, -1);
  EXPECT_GT(out.stats.router_entropy, 0.0);
  EXPECT_LE(out.stats.router_entropy, std::log(4.0) + 1e-9);
  EXPECT_EQ(out.stats.loss_terms.count("balance"), 1u);
}

}  // namespace
}  // namespace hybridmoe
