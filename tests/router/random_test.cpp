// random_test.cpp — seeded determinism of the noisy and random gates, statistical checks of
// the jitter range and of GShard's random-routing keep rate, Sinkhorn balance and convergence,
// capacity bounds and drop order, the loss-free bias update, and routing statistics.
#include <gtest/gtest.h>

#include "hybridmoe/gates.h"
#include "router/reference.h"

namespace hybridmoe {
namespace {

using testing::gaussian;
using testing::to_ivec;
using testing::z_loss;

bool same_routing(const RouterOutput& a, const RouterOutput& b) {
  return torch::equal(a.token_index, b.token_index) &&
         torch::equal(a.expert_index, b.expert_index) && torch::equal(a.weight, b.weight);
}

GateOptions random_options(const std::string& type) {
  auto o = GateOptions().type(type).seed(11).capacity_factor(1.0);
  if (type == "switch") o.top_k(1).jitter_eps(0.2).random_token_selection(true);
  if (type == "gshard") o.gumbel_second_expert(true).random_routing(true);
  return o;
}

TEST(GateRandom, SeededGatesAreDeterministic) {
  auto x = gaussian(64, 16, 1.0, 1).to(torch::kFloat32);
  for (std::string type : {"switch", "gshard", "noisy"}) {
    SCOPED_TRACE(type);
    torch::manual_seed(0);
    auto a = make_gate(16, 8, random_options(type));
    torch::manual_seed(0);
    auto b = make_gate(16, 8, random_options(type));
    auto ra = a->route(x), rb = b->route(x);
    EXPECT_TRUE(same_routing(ra, rb));
    // A second draw differs from the first; reseeding replays it.
    auto ra2 = a->route(x);
    EXPECT_FALSE(same_routing(ra, ra2));
    a->reseed(11);
    EXPECT_TRUE(same_routing(a->route(x), ra));
    // No noise in evaluation: two calls agree without reseeding.
    a->eval();
    EXPECT_TRUE(same_routing(a->route(x), a->route(x)));
  }
}

TEST(GateRandom, SwitchJitterStaysInRangeAndCoversIt) {
  const double eps = 0.05;
  auto gate =
      std::make_shared<SwitchGateImpl>(32, 4, GateOptions().top_k(1).jitter_eps(eps).seed(2));
  auto x = torch::ones({256, 32});
  gate->route(x);
  auto j = gate->last_jitter;
  ASSERT_EQ(j.sizes(), (std::vector<int64_t>{256, 32}));
  EXPECT_GE(j.min().item<double>(), 1 - eps);
  EXPECT_LE(j.max().item<double>(), 1 + eps);
  // 8192 uniform draws: the extremes come within 1% of the ends, the mean is 1, the variance
  // (2 eps)^2 / 12, each within a few standard errors.
  EXPECT_LT(j.min().item<double>(), 1 - 0.99 * eps);
  EXPECT_GT(j.max().item<double>(), 1 + 0.99 * eps);
  const double n = j.numel(), var = (2 * eps) * (2 * eps) / 12;
  EXPECT_NEAR(j.mean().item<double>(), 1.0, 5 * std::sqrt(var / n));
  EXPECT_NEAR(j.var().item<double>(), var, 0.05 * var);
  // No jitter in evaluation.
  gate->eval();
  gate->route(x);
  EXPECT_FALSE(gate->last_jitter.defined());
}

TEST(GateRandom, GShardSecondExpertKeepRateMatchesItsProbability) {
  // Tokens with a known p2 / (p1 + p2): logits (a, b, -inf-ish...) via a fixed router.
  const int64_t T = 2000;
  auto gate = std::make_shared<GShardGateImpl>(2, 3, GateOptions().random_routing(true).seed(4));
  {
    torch::NoGradGuard ng;
    gate->weight.copy_(torch::tensor({{1.0, 0.0}, {0.0, 1.0}, {-5.0, -5.0}}));
  }
  for (double gap : {0.0, 0.5, 1.5}) {
    // logits: expert 0 = gap, expert 1 = 0 → w2 = 1 / (1 + e^gap); keep rate 2 w2.
    auto x = torch::zeros({T, 2});
    x.select(1, 0).fill_(gap);
    int64_t kept = 0;
    const int draws = 5;
    for (int i = 0; i < draws; ++i) {
      auto r = gate->route(x);
      kept += r.token_index.numel() - T;
      EXPECT_EQ(r.dropped, 0);
    }
    const double p = std::min(1.0, 2.0 / (1.0 + std::exp(gap)));
    const double n = static_cast<double>(T * draws);
    const double rate = kept / n;
    EXPECT_NEAR(rate, p, 5 * std::sqrt(p * (1 - p) / n) + 1e-12) << "gap " << gap;
  }
}

TEST(GateRandom, SwitchRandomTokenSelectionIsUniformAmongOverflow) {
  // All tokens pick expert 0; capacity 8 of 64: each token kept with probability 1/8.
  const int64_t T = 64, E = 4;
  auto gate = std::make_shared<SwitchGateImpl>(
      2, E, GateOptions().top_k(1).capacity_factor(0.5).random_token_selection(true).seed(9));
  {
    torch::NoGradGuard ng;
    gate->weight.zero_();
    gate->weight[0][0] = 1.0;
  }
  auto x = torch::ones({T, 2});
  std::vector<int64_t> hits(T, 0);
  const int draws = 400;
  for (int i = 0; i < draws; ++i) {
    auto r = gate->route(x);
    ASSERT_EQ(r.capacity, 8);
    ASSERT_EQ(r.token_index.numel(), 8);
    EXPECT_EQ(r.dropped, T - 8);
    for (auto t : to_ivec(r.token_index)) ++hits[t];
  }
  // Plain "position" keeps tokens 0..7 only; RTS spreads: every token kept sometimes, and
  // the first 8 tokens together get about 1/8 of the slots.
  int64_t first8 = 0;
  for (int64_t t = 0; t < T; ++t) {
    EXPECT_GT(hits[t], 0) << t;
    if (t < 8) first8 += hits[t];
  }
  EXPECT_NEAR(first8 / (8.0 * draws), 0.125, 0.04);
}

TEST(GateRandom, NoExpertExceedsCapacityAndDropOrderIsDocumented) {
  auto x = gaussian(97, 12, 1.0, 3).to(torch::kFloat32);
  for (std::string type : {"topk", "gshard", "switch", "noisy", "sinkhorn", "expert_choice"})
    for (double f : {0.3, 0.8, 1.25})
      for (auto policy : {DropPolicy::kPosition, DropPolicy::kProbs}) {
        SCOPED_TRACE(type + " f=" + std::to_string(f) + " " + to_string(policy));
        auto o = GateOptions().type(type).capacity_factor(f).drop_policy(policy).seed(1).top_k(
            type == "switch" ? 1 : 2);
        auto g = make_gate(12, 6, o);
        auto r = g->route(x);
        auto counts = torch::bincount(r.expert_index, {}, 6);
        EXPECT_LE(counts.max().item<int64_t>(), r.capacity);
        ASSERT_TRUE(r.position.defined());
        EXPECT_LT(r.position.max().item<int64_t>(), r.capacity);
        // Slots are distinct within an expert.
        auto key = std::get<0>((r.expert_index * 1000 + r.position).sort());
        EXPECT_TRUE((key.slice(0, 1) != key.slice(0, 0, -1)).all().item<bool>());
      }
  // Drop order by hand: 4 tokens all preferring expert 0 (first) and 1 (second), capacity 2.
  auto gate = std::make_shared<TopKGateImpl>(2, 2, GateOptions().top_k(2).capacity_factor(0.5));
  {
    torch::NoGradGuard ng;
    gate->weight.copy_(torch::tensor({{1.0, 0.0}, {0.0, 1.0}}));
  }
  // Token t: logits (a_t, 0) with a = 1, 3, 2, 0.5: all pick expert 0 first.
  auto xs = torch::tensor({{1.0, 0.0}, {3.0, 0.0}, {2.0, 0.0}, {0.5, 0.0}});
  auto r = gate->route(xs);
  // position: expert 0 keeps tokens 0, 1 (arrival order); expert 1 keeps 0, 1.
  EXPECT_EQ(to_ivec(r.token_index), (std::vector<int64_t>{0, 0, 1, 1}));
  gate = std::make_shared<TopKGateImpl>(
      2, 2, GateOptions().top_k(2).capacity_factor(0.5).drop_policy(DropPolicy::kProbs));
  {
    torch::NoGradGuard ng;
    gate->weight.copy_(torch::tensor({{1.0, 0.0}, {0.0, 1.0}}));
  }
  r = gate->route(xs);
  // probs: expert 0 keeps the two largest p0 (tokens 1, 2); expert 1 the two largest p1
  // (tokens 3, 0).
  EXPECT_EQ(to_ivec(r.token_index), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(to_ivec(r.expert_index), (std::vector<int64_t>{1, 0, 0, 1}));
  EXPECT_EQ(to_ivec(r.position), (std::vector<int64_t>{1, 0, 1, 0}));
  EXPECT_EQ(r.dropped, 4);
}

// max / mean of the tokens per expert.
double imbalance(const torch::Tensor& expert_index, int64_t E) {
  auto c = torch::bincount(expert_index, {}, E).to(torch::kFloat64);
  return (c.max() / c.mean()).item<double>();
}

TEST(GateRandom, SinkhornIsMoreBalancedThanTopKAndConverges) {
  const int64_t T = 512, E = 8, d = 16;
  auto x = gaussian(T, d, 1.0, 5).to(torch::kFloat32);
  // Skewed router: a shared direction pushes most tokens to experts 0 and 1.
  auto w = gaussian(E, d, 0.3, 6).to(torch::kFloat32);
  w.select(0, 0).add_(0.1);
  w.select(0, 1).add_(0.07);
  auto x_shift = x + 0.5;  // top-1 imbalance (max / mean load) about 3.2
  for (int64_t k : {1, 2}) {
    auto o = GateOptions().top_k(k).sinkhorn_tolerance(1e-5).sinkhorn_max_iterations(2000);
    auto sk = std::make_shared<SinkhornGateImpl>(d, E, o);
    auto tk = std::make_shared<TopKGateImpl>(d, E, o);
    {
      torch::NoGradGuard ng;
      sk->weight.copy_(w);
      tk->weight.copy_(w);
    }
    const double ib_topk = imbalance(tk->route(x_shift).expert_index, E);
    const double ib_sk = imbalance(sk->route(x_shift).expert_index, E);
    EXPECT_GT(ib_topk, 2.0) << "the logits are meant to be skewed";
    EXPECT_LT(ib_sk, 1.35) << "k=" << k;
    EXPECT_LT(ib_sk, ib_topk / 2);
    // Converged within tolerance before the iteration limit; the scores' column sums are
    // 1/E and row sums 1/T.
    EXPECT_LE(sk->last_error, 1e-5);
    EXPECT_LT(sk->last_iterations, 2000);
    auto s = sinkhorn(x_shift.mm(w.t()), 1e-6, 5000);
    EXPECT_LE(s.error, 1e-6);
    EXPECT_LT(s.iterations, 5000);
    auto cols = s.scores.sum(0), rows = s.scores.sum(1);
    EXPECT_TRUE(torch::allclose(cols, torch::full_like(cols, 1.0 / E), 1e-3, 1e-5));
    EXPECT_TRUE(torch::allclose(rows, torch::full_like(rows, 1.0 / T), 1e-3, 1e-6));
  }
  // The iteration limit is honoured.
  auto s = sinkhorn(x.mm(w.t()) * 5, 1e-12, 3);
  EXPECT_EQ(s.iterations, 3);
}

TEST(GateRandom, LossFreeBiasMovesTowardBalance) {
  const int64_t T = 256, E = 4, d = 8;
  auto o = GateOptions().top_k(1).bias_update_rate(0.01);
  auto g = std::make_shared<TopKGateImpl>(d, E, o);
  auto x = gaussian(T, d, 1.0, 8).to(torch::kFloat32) + 0.5;
  {
    torch::NoGradGuard ng;
    g->weight.copy_(gaussian(E, d, 0.2, 9).to(torch::kFloat32));
    g->weight.select(0, 0).add_(0.5);
  }
  auto r = g->route(x);
  auto load = torch::bincount(r.expert_index, {}, E).to(torch::kFloat64);
  EXPECT_TRUE(torch::equal(g->step_load, load.to(torch::kInt64)));
  g->after_step();
  // bias_e = rate * sign(mean - load_e); counters reset.
  auto want = (load.mean() - load).sign() * 0.01;
  EXPECT_TRUE(torch::allclose(g->expert_bias.to(torch::kFloat64), want, 0, 1e-9));
  EXPECT_EQ(g->step_load.sum().item<int64_t>(), 0);
  // Weights stay the unbiased probabilities.
  auto r2 = g->route(x);
  auto p = r2.probs.index({r2.token_index, r2.expert_index});
  EXPECT_TRUE(torch::allclose(r2.weight, p));
  // Many steps: the imbalance falls.
  const double before = imbalance(r.expert_index, E);
  for (int i = 0; i < 300; ++i) {
    g->route(x);
    g->after_step();
  }
  EXPECT_LT(imbalance(g->route(x).expert_index, E), std::min(1.2, before));
  // Evaluation forwards do not count.
  g->after_step();
  g->eval();
  g->route(x);
  EXPECT_EQ(g->step_load.sum().item<int64_t>(), 0);
}

TEST(GateRandom, EveryGateReportsStatistics) {
  auto x = gaussian(40, 8, 1.0, 12).to(torch::kFloat32);
  std::map<std::string, std::vector<std::string>> terms = {
      {"topk", {"balance", "z"}},   {"gshard", {"balance", "z"}},
      {"switch", {"balance", "z"}}, {"noisy", {"importance", "load", "balance", "z"}},
      {"sinkhorn", {"z"}},          {"expert_choice", {"z"}}};
  for (const auto& kv : terms) {
    SCOPED_TRACE(kv.first);
    auto o = GateOptions().type(kv.first).z_loss_coef(1e-3).capacity_factor(1.0).seed(0).top_k(
        kv.first == "switch" ? 1 : 2);
    auto r = make_gate(8, 4, o)->route(x);
    for (const auto& name : kv.second) EXPECT_TRUE(r.loss_terms.count(name)) << name;
    ASSERT_TRUE(r.probs.defined());
    EXPECT_EQ(r.probs.sizes(), (std::vector<int64_t>{40, 4}));
    EXPECT_TRUE(torch::allclose(r.probs.sum(1), torch::ones({40})));
    EXPECT_GT(mean_entropy(r.probs), 0.0);
    EXPECT_EQ(r.aux_loss.dim(), 0);
    EXPECT_EQ(r.z_loss.dim(), 0);
    EXPECT_NEAR(r.z_loss.item<double>(), 1e-3 * r.loss_terms.at("z"), 1e-9);
  }
}

TEST(GateRandom, RouterRunsInFloat32ForLowPrecisionInputs) {
  auto x = gaussian(16, 8, 1.0, 2).to(torch::kBFloat16);
  for (std::string type : {"topk", "gshard", "switch", "noisy", "sinkhorn", "expert_choice"}) {
    auto o = GateOptions().type(type).capacity_factor(1.0).top_k(type == "switch" ? 1 : 2);
    auto r = make_gate(8, 4, o)->route(x);
    EXPECT_EQ(r.weight.scalar_type(), torch::kFloat32) << type;
    EXPECT_EQ(r.probs.scalar_type(), torch::kFloat32) << type;
  }
}

}  // namespace
}  // namespace hybridmoe
