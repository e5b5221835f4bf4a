// reference_test.cpp — every gate's outputs (experts, weights, capacity slots, drops, loss terms)
// against a plain float64 loop reference of its formula, over several sizes, with and without
// ties in the logits, dropless and with both drop policies.
#include <gtest/gtest.h>

#include "hybridmoe/gates.h"
#include "router/reference.h"

namespace hybridmoe {
namespace {

using testing::assign_slots;
using testing::assign_slots_in_order;
using testing::balance_loss;
using testing::capacity_for;
using testing::capacity_of;
using testing::cases;
using testing::Choice;
using testing::expect_matches;
using testing::gaussian;
using testing::kCaseWidth;
using testing::list_choices;
using testing::Mat;
using testing::matmul_t;
using testing::RefOut;
using testing::softmax;
using testing::softmax_rows;
using testing::sweep_sizes;
using testing::to_mat;
using testing::to_vec;
using testing::topk_indices;
using testing::z_loss;

constexpr int64_t kD = kCaseWidth;
constexpr double kTol = 1e-12;
constexpr double kZ = 1e-3;  // z_loss_coef used everywhere, so the "z" term is reported

// Capacity modes swept: (capacity_factor, min_capacity, policy); factor 0 = dropless, < 0 =
// dynamic (the largest per-expert count, bounded by the capacity of |factor|).
struct CapMode {
  double factor;
  int64_t min_capacity;
  DropPolicy policy;
};
std::vector<CapMode> cap_modes() {
  return {{0.0, 0, DropPolicy::kPosition}, {1.0, 0, DropPolicy::kPosition},
          {0.75, 0, DropPolicy::kProbs},   {0.5, 0, DropPolicy::kPosition},
          {0.25, 3, DropPolicy::kProbs},   {-1.0, 0, DropPolicy::kPosition},
          {-0.5, 0, DropPolicy::kProbs},   {-4.0, 0, DropPolicy::kPosition}};
}

template <typename G>
std::shared_ptr<G> double_gate(const torch::Tensor& w, GateOptions o) {
  auto g = std::make_shared<G>(w.size(1), w.size(0), o.z_loss_coef(kZ));
  g->to(torch::kFloat64);
  torch::NoGradGuard ng;
  g->weight.copy_(w);
  return g;
}

GateOptions cap_options(const CapMode& m) {
  return GateOptions().capacity_factor(m.factor).min_capacity(m.min_capacity).drop_policy(m.policy);
}

// ---- references ----------------------------------------------------------------------------

RefOut ref_topk(const Mat& L, int64_t k, const GateOptions& o, const std::vector<double>& bias) {
  const int64_t T = L.size(), E = L[0].size();
  auto P = softmax_rows(L);
  RefOut out;
  std::vector<std::vector<Choice>> ch(T);
  std::vector<std::vector<int64_t>> chosen(T);
  for (int64_t t = 0; t < T; ++t) {
    auto sel = o.softmax_over_topk().value_or(false) ? L[t] : P[t];
    if (!bias.empty())
      for (int64_t e = 0; e < E; ++e) sel[e] += bias[e];
    chosen[t] =
        topk_indices(o.softmax_over_topk().value_or(false) || !bias.empty() ? sel : L[t], k);
    std::vector<double> w;
    for (auto e : chosen[t]) w.push_back(o.softmax_over_topk().value_or(false) ? L[t][e] : P[t][e]);
    if (o.softmax_over_topk().value_or(false)) w = softmax(w);
    double s = 0;
    for (double a : w) s += a;
    for (int64_t j = 0; j < k; ++j) {
      const double wj =
          o.normalize_top_k_weights() && !o.softmax_over_topk().value_or(false) ? w[j] / s : w[j];
      ch[t].push_back({chosen[t][j], wj, wj});
    }
  }
  out.capacity = capacity_for(ch, E, k, o.capacity_factor(), o.min_capacity());
  assign_slots(ch, E, out.capacity, o.drop_policy().value_or(DropPolicy::kPosition));
  list_choices(ch, out);
  out.terms["balance"] = balance_loss(P, chosen);
  out.terms["z"] = z_loss(L);
  return out;
}

RefOut ref_gshard(const Mat& L, const GateOptions& o, const Mat& gumbel,
                  const std::vector<double>& uniform) {
  const int64_t T = L.size(), E = L[0].size();
  auto P = softmax_rows(L);
  RefOut out;
  std::vector<std::vector<Choice>> ch(T);
  std::vector<std::vector<int64_t>> first(T);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t e1 = topk_indices(L[t], 1)[0];
    auto s = L[t];
    for (int64_t e = 0; e < E; ++e) {
      if (!gumbel.empty()) s[e] += gumbel[t][e];
      if (e == e1) s[e] = -INFINITY;
    }
    int64_t e2 = topk_indices(s, 1)[0];
    const double p1 = P[t][e1], p2 = P[t][e2];
    if (!uniform.empty() && !(2.0 * p2 / (p1 + p2) > uniform[t])) e2 = -1;
    first[t] = {e1};
    ch[t] = {{e1, p1, p1}, {e2, p2, p2}};
  }
  out.capacity = capacity_for(ch, E, 2, o.capacity_factor(), o.min_capacity());
  assign_slots(ch, E, out.capacity, o.drop_policy().value_or(DropPolicy::kPosition));
  for (auto& c : ch) {  // renormalize the kept weights
    double s = 0;
    for (auto& a : c) s += a.expert >= 0 && a.kept ? a.weight : 0.0;
    for (auto& a : c) a.weight /= std::max(s, 1.1920928955078125e-07);
  }
  list_choices(ch, out);
  out.terms["balance"] = balance_loss(P, first);
  out.terms["z"] = z_loss(L);
  return out;
}

RefOut ref_switch(Mat x, const Mat& W, const GateOptions& o, const Mat& jitter,
                  const std::vector<double>& rts) {
  const int64_t T = x.size(), E = W.size();
  if (!jitter.empty())
    for (int64_t t = 0; t < T; ++t)
      for (size_t i = 0; i < x[t].size(); ++i) x[t][i] *= jitter[t][i];
  auto L = matmul_t(x, W);
  auto P = softmax_rows(L);
  RefOut out;
  std::vector<std::vector<Choice>> ch(T);
  std::vector<std::vector<int64_t>> top(T);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t e = topk_indices(L[t], 1)[0];
    top[t] = {e};
    ch[t] = {{e, P[t][e], rts.empty() ? P[t][e] : rts[t]}};
  }
  out.capacity = capacity_for(ch, E, 1, o.capacity_factor(), o.min_capacity());
  // RTS (DeepSpeed's top1gating with use_rts): the highest random scores are kept and the kept
  // tokens take their slots in token order (locations1 = cumsum(mask1) - 1).
  if (rts.empty())
    assign_slots(ch, E, out.capacity, o.drop_policy().value_or(DropPolicy::kPosition));
  else
    assign_slots_in_order(ch, E, out.capacity, DropPolicy::kProbs,
                          hybridmoe::SlotOrder::kFirstChoicesFirst, {});
  list_choices(ch, out);
  out.terms["balance"] = balance_loss(P, top);
  out.terms["z"] = z_loss(L);
  return out;
}

double cv2(const std::vector<double>& v) {
  double m = 0, var = 0;
  for (double a : v) m += a / v.size();
  for (double a : v) var += (a - m) * (a - m) / v.size();
  return v.size() < 2 ? 0.0 : var / (m * m + 1e-10);
}

RefOut ref_noisy(const Mat& x, const Mat& W, const Mat& Wn, const GateOptions& o,
                 const Mat& noise) {
  auto clean = matmul_t(x, W), raw = matmul_t(x, Wn);
  const int64_t T = x.size(), E = W.size(), k = o.top_k();
  RefOut out;
  std::vector<std::vector<Choice>> ch(T);
  std::vector<double> importance(E, 0.0), load(E, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> H = clean[t], sd(E);
    for (int64_t e = 0; e < E; ++e) {
      sd[e] = std::log1p(std::exp(raw[t][e])) + o.noise_epsilon();
      if (!noise.empty()) H[e] += noise[t][e] * sd[e];
    }
    auto idx = topk_indices(H, k);
    std::vector<double> hv;
    for (auto e : idx) hv.push_back(H[e]);
    auto g = softmax(hv);
    for (int64_t j = 0; j < k; ++j) {
      ch[t].push_back({idx[j], g[j], g[j]});
      importance[idx[j]] += g[j];
    }
    for (int64_t e = 0; e < E; ++e) {
      if (noise.empty() || k == E) {
        load[e] += std::count(idx.begin(), idx.end(), e) ? 1.0 : 0.0;
        continue;
      }
      // kth largest of H excluding e.
      std::vector<double> others;
      for (int64_t f = 0; f < E; ++f)
        if (f != e) others.push_back(H[f]);
      std::sort(others.begin(), others.end(), std::greater<double>());
      const double z = (clean[t][e] - others[k - 1]) / sd[e];
      load[e] += 0.5 * std::erfc(-z / std::sqrt(2.0));
    }
  }
  out.capacity = capacity_for(ch, E, k, o.capacity_factor(), o.min_capacity());
  assign_slots(ch, E, out.capacity, o.drop_policy().value_or(DropPolicy::kPosition));
  list_choices(ch, out);
  out.terms["importance"] = cv2(importance);
  out.terms["load"] = cv2(load);
  out.terms["balance"] = cv2(importance) + cv2(load);
  out.terms["z"] = z_loss(clean);
  return out;
}

// Megatron-Core's Sinkhorn on exp(L); returns the scores, the iterations and the error.
Mat ref_sinkhorn_scores(const Mat& L, double tol, int64_t max_it, int64_t* iters, double* err) {
  const int64_t T = L.size(), E = L[0].size();
  Mat c(T, std::vector<double>(E));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) c[t][e] = std::exp(L[t][e]);
  std::vector<double> d0(T, 1.0), d1(E, 1.0);
  for (int64_t it = 1; it <= max_it; ++it) {
    for (int64_t t = 0; t < T; ++t) {
      double s = 0;
      for (int64_t e = 0; e < E; ++e) s += c[t][e] * d1[e];
      d0[t] = (1.0 / T) / (s + 1e-8);
    }
    double e_sum = 0;
    std::vector<double> nd1(E);
    for (int64_t e = 0; e < E; ++e) {
      double s = 0;
      for (int64_t t = 0; t < T; ++t) s += c[t][e] * d0[t];
      nd1[e] = (1.0 / E) / (s + 1e-8);
      e_sum += std::abs(nd1[e] - d1[e]);
    }
    d1 = nd1;
    *iters = it;
    *err = e_sum / E;
    if (*err <= tol) break;
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) c[t][e] *= d1[e] * d0[t];
  return c;
}

RefOut ref_sinkhorn(const Mat& L, const GateOptions& o, int64_t* iters, double* err) {
  const int64_t T = L.size(), E = L[0].size(), k = o.top_k();
  auto S = ref_sinkhorn_scores(L, o.sinkhorn_tolerance(), o.sinkhorn_max_iterations(), iters, err);
  auto P = softmax_rows(L);
  RefOut out;
  std::vector<std::vector<Choice>> ch(T);
  for (int64_t t = 0; t < T; ++t)
    for (auto e : topk_indices(S[t], k)) ch[t].push_back({e, P[t][e], P[t][e]});
  out.capacity = capacity_for(ch, E, k, o.capacity_factor(), o.min_capacity());
  assign_slots(ch, E, out.capacity, o.drop_policy().value_or(DropPolicy::kPosition));
  list_choices(ch, out);
  out.terms["z"] = z_loss(L);
  return out;
}

RefOut ref_expert_choice(const Mat& L, const GateOptions& o) {
  const int64_t T = L.size(), E = L[0].size();
  auto P = softmax_rows(L);
  RefOut out;
  out.capacity = std::min<int64_t>(T, capacity_of(T, E, 1, o.capacity_factor(), o.min_capacity()));
  std::vector<std::vector<int64_t>> rank(T, std::vector<int64_t>(E, -1));
  for (int64_t e = 0; e < E; ++e) {
    std::vector<double> col(T);
    for (int64_t t = 0; t < T; ++t) col[t] = P[t][e];
    auto best = topk_indices(col, out.capacity);
    for (int64_t r = 0; r < out.capacity; ++r) rank[best[r]][e] = r;
  }
  for (int64_t t = 0; t < T; ++t) {
    bool any = false;
    for (int64_t e = 0; e < E; ++e)
      if (rank[t][e] >= 0) {
        out.token.push_back(t), out.expert.push_back(e), out.weight.push_back(P[t][e]);
        out.position.push_back(rank[t][e]);
        any = true;
      }
    out.dropped += any ? 0 : 1;
  }
  out.terms["z"] = z_loss(L);
  return out;
}

// ---- tests ---------------------------------------------------------------------------------

TEST(GateReference, TopKVariants) {
  uint64_t seed = 10;
  for (auto sz : sweep_sizes())
    for (const auto& c : cases(sz.T, sz.E, seed += 7))
      for (const auto& m : cap_modes())
        for (int variant = 0; variant < 3; ++variant) {
          if (m.policy == DropPolicy::kProbs && !c.exact_weights) continue;
          auto o = cap_options(m)
                       .top_k(sz.k)
                       .normalize_top_k_weights(variant == 1)
                       .softmax_over_topk(variant == 2);
          auto g = double_gate<TopKGateImpl>(c.w, o);
          auto r = g->route(c.x);
          auto want = ref_topk(matmul_t(to_mat(c.x), to_mat(c.w)), sz.k, o, {});
          expect_matches(r, want, kTol, c.label + " variant " + std::to_string(variant));
        }
}

TEST(GateReference, TopKLossFreeBiasSelectsWithBiasOnly) {
  for (auto sz : sweep_sizes())
    for (int soft = 0; soft < 2; ++soft) {
      auto c = cases(sz.T, sz.E, 99)[2];
      auto o = GateOptions().top_k(sz.k).bias_update_rate(0.01).softmax_over_topk(soft == 1);
      auto g = double_gate<TopKGateImpl>(c.w, o);
      std::vector<double> bias;
      for (int64_t e = 0; e < sz.E; ++e) bias.push_back(0.3 * ((e * 7) % 5 - 2));
      {
        torch::NoGradGuard ng;
        g->expert_bias.copy_(torch::tensor(bias, torch::kFloat64));
      }
      auto want = ref_topk(matmul_t(to_mat(c.x), to_mat(c.w)), sz.k, o, bias);
      expect_matches(g->route(c.x), want, kTol, c.label);
    }
}

TEST(GateReference, GShard) {
  uint64_t seed = 40;
  for (auto sz : sweep_sizes()) {
    if (sz.E < 2) continue;
    for (const auto& c : cases(sz.T, sz.E, seed += 7))
      for (const auto& m : cap_modes())
        for (int noise = 0; noise < 4; ++noise) {  // bit 0: Gumbel, bit 1: random routing
          if (m.policy == DropPolicy::kProbs && !c.exact_weights) continue;
          auto o = cap_options(m)
                       .top_k(2)
                       .gumbel_second_expert(noise & 1)
                       .random_routing((noise & 2) != 0)
                       .seed(static_cast<int64_t>(seed + noise));
          auto g = double_gate<GShardGateImpl>(c.w, o);
          auto r = g->route(c.x);
          EXPECT_EQ(g->last_gumbel.defined(), (noise & 1) != 0);
          Mat gumbel = g->last_gumbel.defined() ? to_mat(g->last_gumbel) : Mat();
          auto u = g->last_uniform.defined() ? to_vec(g->last_uniform) : std::vector<double>();
          auto want = ref_gshard(matmul_t(to_mat(c.x), to_mat(c.w)), o, gumbel, u);
          expect_matches(r, want, kTol, c.label + " noise " + std::to_string(noise));
        }
  }
}

TEST(GateReference, Switch) {
  uint64_t seed = 70;
  for (auto sz : sweep_sizes())
    for (const auto& c : cases(sz.T, sz.E, seed += 7))
      for (const auto& m : cap_modes())
        for (int noise = 0; noise < 3; ++noise) {  // 0 none, 1 jitter, 2 jitter + RTS
          if (m.policy == DropPolicy::kProbs && !c.exact_weights) continue;
          auto o = cap_options(m)
                       .top_k(1)
                       .jitter_eps(noise ? 0.1 : 0.0)
                       .random_token_selection(noise == 2)
                       .seed(5);
          auto g = double_gate<SwitchGateImpl>(c.w, o);
          auto r = g->route(c.x);
          Mat jit = g->last_jitter.defined() ? to_mat(g->last_jitter) : Mat();
          auto rts =
              g->last_rts_scores.defined() ? to_vec(g->last_rts_scores) : std::vector<double>();
          EXPECT_EQ(!rts.empty(), noise == 2 && m.factor != 0);
          auto want = ref_switch(to_mat(c.x), to_mat(c.w), o, jit, rts);
          expect_matches(r, want, kTol, c.label + " noise " + std::to_string(noise));
        }
}

TEST(GateReference, NoisyTopK) {
  uint64_t seed = 100;
  for (auto sz : sweep_sizes())
    for (const auto& c : cases(sz.T, sz.E, seed += 7))
      for (const auto& m : cap_modes())
        for (int train = 0; train < 2; ++train) {
          if (m.policy == DropPolicy::kProbs && !c.exact_weights) continue;
          auto o = cap_options(m).top_k(sz.k).seed(3);
          auto g = double_gate<NoisyTopKGateImpl>(c.w, o);
          {
            torch::NoGradGuard ng;
            g->noise_weight.copy_(gaussian(sz.E, kD, 0.3, seed));
          }
          g->train(train == 1);
          auto r = g->route(c.x);
          Mat noise = g->last_noise.defined() ? to_mat(g->last_noise) : Mat();
          EXPECT_EQ(noise.empty(), train == 0);
          auto want = ref_noisy(to_mat(c.x), to_mat(c.w), to_mat(g->noise_weight), o, noise);
          expect_matches(r, want, 1e-10, c.label + (train ? " train" : " eval"));
        }
}

TEST(GateReference, Sinkhorn) {
  uint64_t seed = 130;
  for (auto sz : sweep_sizes())
    for (const auto& c : cases(sz.T, sz.E, seed += 7, /*duplicate_experts=*/false))
      for (const auto& m : cap_modes()) {
        if (m.policy == DropPolicy::kProbs && !c.exact_weights) continue;
        auto o = cap_options(m).top_k(sz.k).sinkhorn_tolerance(1e-6).sinkhorn_max_iterations(500);
        auto g = double_gate<SinkhornGateImpl>(c.w, o);
        auto r = g->route(c.x);
        int64_t iters = 0;
        double err = 0;
        auto want = ref_sinkhorn(matmul_t(to_mat(c.x), to_mat(c.w)), o, &iters, &err);
        expect_matches(r, want, kTol, c.label);
        EXPECT_EQ(g->last_iterations, iters) << c.label;
        EXPECT_NEAR(g->last_error, err, 1e-12) << c.label;
      }
}

TEST(GateReference, ExpertChoice) {
  uint64_t seed = 160;
  for (auto sz : sweep_sizes())
    for (const auto& c : cases(sz.T, sz.E, seed += 7))
      for (double f : {0.5, 1.0, 2.0, 3.0}) {
        auto o = GateOptions().capacity_factor(f).top_k(1);
        auto g = double_gate<ExpertChoiceGateImpl>(c.w, o);
        auto want = ref_expert_choice(matmul_t(to_mat(c.x), to_mat(c.w)), o);
        expect_matches(g->route(c.x), want, kTol, c.label + " f=" + std::to_string(f));
      }
}

TEST(GateReference, EvalCapacityFactorIsUsedInEval) {
  auto c = cases(32, 4, 7)[1];
  auto o = GateOptions().top_k(2).capacity_factor(1.0).eval_capacity_factor(2.0);
  auto g = double_gate<TopKGateImpl>(c.w, o);
  EXPECT_EQ(g->route(c.x).capacity, 16);
  g->eval();
  EXPECT_EQ(g->route(c.x).capacity, 32);
}

// Dynamic capacity (factor < 0): a balanced group gets the largest count (nothing dropped, a
// smaller capacity than |factor|'s), a skewed group the bound, and in both cases the kept choices
// are those of the positive factor |factor|.
TEST(GateReference, DynamicCapacityIsTheLargestCountBounded) {
  const int64_t T = 16, E = 4;
  // Balanced: token t's choices are experts t % 4 and (t + 1) % 4, so every expert gets 8.
  auto w = torch::zeros({E, kD}, torch::kFloat64);
  auto x = torch::zeros({T, kD}, torch::kFloat64);
  for (int64_t e = 0; e < E; ++e) w[e][e] = 1.0;
  for (int64_t t = 0; t < T; ++t) x[t][t % E] = 2.0, x[t][(t + 1) % E] = 1.0;
  auto g = double_gate<TopKGateImpl>(w, GateOptions().top_k(2).capacity_factor(-2.0));
  auto balanced = g->route(x);
  EXPECT_EQ(balanced.capacity, 8);  // ceil(2 * 2 * 16 / 4) = 16 bounds it
  EXPECT_EQ(balanced.dropped, 0);
  // Skewed: every token's first choice is expert 0 (16 choices), its second expert 1.
  auto skew = torch::zeros({T, kD}, torch::kFloat64);
  for (int64_t t = 0; t < T; ++t) skew[t][0] = 2.0, skew[t][1] = 1.0;
  for (double f : {1.0, 0.5}) {
    auto dyn = double_gate<TopKGateImpl>(w, GateOptions().top_k(2).capacity_factor(-f));
    auto fixed = double_gate<TopKGateImpl>(w, GateOptions().top_k(2).capacity_factor(f));
    auto a = dyn->route(skew), b = fixed->route(skew);
    EXPECT_EQ(a.capacity, capacity_of(T, E, 2, f, 0)) << f;
    EXPECT_TRUE(torch::equal(a.token_index, b.token_index)) << f;
    EXPECT_TRUE(torch::equal(a.expert_index, b.expert_index)) << f;
    EXPECT_TRUE(torch::equal(a.position, b.position)) << f;
    EXPECT_EQ(a.dropped, b.dropped) << f;
    EXPECT_GT(a.dropped, 0) << f;
  }
  // A gate that cannot bound by counts refuses a negative factor by name.
  try {
    ExpertChoiceGateImpl(kD, E, GateOptions().capacity_factor(-1.0));
    ADD_FAILURE() << "expert_choice accepted capacity_factor -1";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("capacity_factor must be > 0"), std::string::npos);
  }
}

}  // namespace
}  // namespace hybridmoe
