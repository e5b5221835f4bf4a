// conventions_test.cpp — each peer convention of the "topk" gate (deepspeed, tutel, megatron,
// gshard) against a plain float64 loop reference written here from the peer's own rule, on
// tables with exact ties, overflowing experts and partly dropped tokens: experts, slots, kept or
// dropped for every choice (exactly), weights and loss terms (1e-12). Also the rule names, the
// capacity formulas, contradictions between a convention and an explicit rule, the rules a gate
// refuses, and the cosine router's logits.
#include <gtest/gtest.h>

#include "hybridmoe/gates.h"
#include "router/reference.h"

namespace hybridmoe {
namespace {

using testing::assign_slots_in_order;
using testing::balance_loss;
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
using testing::to_ivec;
using testing::to_mat;
using testing::to_vec;
using testing::topk_indices;
using testing::z_loss;

constexpr double kTol = 1e-12;
constexpr double kZ = 1e-3;  // z_loss_coef, so that the "z" term is reported
constexpr double kEps64 = 2.220446049250313e-16;

// Capacity of DeepSpeed's _capacity(gates, cf * k) and Megatron's get_capacity(T * k, E, cf):
// ceil(k * T / E * cf); 0 = dropless.
int64_t ceil_capacity(int64_t T, int64_t E, int64_t k, double cf) {
  return cf > 0 ? capacity_of(T, E, k, cf, 0) : -1;
}

// Tutel's extract_critical: k * int(cf * ceil(T / E)).
int64_t tutel_capacity(int64_t T, int64_t E, int64_t k, double cf) {
  if (cf <= 0) return -1;
  const int64_t per_expert = (T + E - 1) / E;
  return k * static_cast<int64_t>(cf * static_cast<double>(per_expert));
}

// Renormalizes each token's kept weights over its kept choices (DeepSpeed's gates_masked).
void renormalize_kept(std::vector<std::vector<Choice>>& ch) {
  for (auto& c : ch) {
    double s = 0;
    for (auto& a : c) s += a.kept ? a.weight : 0.0;
    for (auto& a : c) a.weight = a.kept ? a.weight / std::max(s, kEps64) : 0.0;
  }
}

// The reference of one convention, and every choice it made.
struct Expected {
  RefOut out;
  std::vector<std::vector<Choice>> choices;
};

Expected finish(std::vector<std::vector<Choice>> ch, const Mat& L, const Mat& P,
                const std::vector<std::vector<int64_t>>& loss_choices, int64_t capacity) {
  Expected x;
  x.out.capacity = capacity;
  list_choices(ch, x.out);
  x.out.terms["balance"] = balance_loss(P, loss_choices);
  x.out.terms["z"] = z_loss(L);
  x.choices = std::move(ch);
  return x;
}

// DeepSpeed (deepspeed/moe/sharded_moe.py). k = 1, top1gating: argmax, weight = probability,
// slots by cumsum over tokens, loss on the argmax. k = 2, top2gating: second slots after every
// first choice (locations2 += sum(mask1)), drop at location >= capacity, kept weights
// renormalized, loss on first choices. k >= 3, topkgating(drop_policy="probs"): per expert the
// `capacity` largest raw probabilities are kept, slots by cumsum over tokens of the kept mask,
// kept weights renormalized, loss over all k (mean(me * ce) * E * E / k).
Expected ref_deepspeed(const Mat& L, int64_t k, double cf) {
  const int64_t T = L.size(), E = L[0].size();
  auto P = softmax_rows(L);
  std::vector<std::vector<Choice>> ch(T);
  std::vector<std::vector<int64_t>> all(T), first(T);
  for (int64_t t = 0; t < T; ++t) {
    all[t] = topk_indices(L[t], k);
    first[t] = {all[t][0]};
    for (auto e : all[t]) ch[t].push_back({e, P[t][e], P[t][e]});
  }
  const int64_t cap = ceil_capacity(T, E, k, cf);
  if (k <= 2)
    assign_slots_in_order(ch, E, cap, DropPolicy::kPosition, SlotOrder::kFirstChoicesFirst, {});
  else
    assign_slots_in_order(ch, E, cap, DropPolicy::kProbs, SlotOrder::kTokenMajor, {});
  if (k >= 2) renormalize_kept(ch);
  return finish(std::move(ch), L, P, k <= 2 ? first : all, cap);
}

// Tutel (tutel/impls/fast_dispatch.py extract_critical, losses.gshard_loss): top-k of the
// scores; the k gates renormalized over the k (k > 1) before any drop; choice j's locations
// start after all choices < j; with batch priority each choice's cumsum runs over the tokens
// sorted by descending top score; location >= capacity dropped; loss on top_ids[:, 0].
Expected ref_tutel(const Mat& L, int64_t k, double cf, bool batch_prioritized) {
  const int64_t T = L.size(), E = L[0].size();
  auto P = softmax_rows(L);
  std::vector<std::vector<Choice>> ch(T);
  std::vector<std::vector<int64_t>> first(T);
  std::vector<double> priority;
  for (int64_t t = 0; t < T; ++t) {
    auto top = topk_indices(L[t], k);
    first[t] = {top[0]};
    double s = 0;
    for (auto e : top) s += P[t][e];
    for (auto e : top) {
      const double w = k > 1 ? P[t][e] / s : P[t][e];
      ch[t].push_back({e, w, w});
    }
    if (batch_prioritized) priority.push_back(P[t][top[0]]);
  }
  const int64_t cap = tutel_capacity(T, E, k, cf);
  assign_slots_in_order(ch, E, cap, DropPolicy::kPosition, SlotOrder::kFirstChoicesFirst, priority);
  for (auto& c : ch)
    for (auto& a : c)
      if (!a.kept) a.weight = 0.0;
  return finish(std::move(ch), L, P, first, cap);
}

// Megatron-Core (moe_utils.py): topk of the logits, softmax over those k
// (use_pre_softmax = false); apply_router_token_dropping(drop_policy="probs"): per expert the
// `capacity` largest of those probs kept (capacity = ceil(T * k / E * cf)); the routing map is
// read in token order; no renormalization; switch_load_balancing_loss_func over all k with the
// full softmax.
Expected ref_megatron(const Mat& L, int64_t k, double cf) {
  const int64_t T = L.size(), E = L[0].size();
  auto P = softmax_rows(L);
  std::vector<std::vector<Choice>> ch(T);
  std::vector<std::vector<int64_t>> all(T);
  for (int64_t t = 0; t < T; ++t) {
    all[t] = topk_indices(L[t], k);
    std::vector<double> top_logits;
    for (auto e : all[t]) top_logits.push_back(L[t][e]);
    auto w = softmax(top_logits);
    for (int64_t j = 0; j < k; ++j) ch[t].push_back({all[t][j], w[j], w[j]});
  }
  const int64_t cap = ceil_capacity(T, E, k, cf);
  assign_slots_in_order(ch, E, cap, DropPolicy::kProbs, SlotOrder::kTokenMajor, {});
  for (auto& c : ch)
    for (auto& a : c)
      if (!a.kept) a.weight = 0.0;
  return finish(std::move(ch), L, P, all, cap);
}

std::shared_ptr<TopKGateImpl> topk_gate(const torch::Tensor& w, GateOptions o) {
  auto g = std::make_shared<TopKGateImpl>(w.size(1), w.size(0), o.z_loss_coef(kZ));
  g->to(torch::kFloat64);
  torch::NoGradGuard ng;
  g->weight.copy_(w);
  return g;
}

// Every choice of the gate's table against the reference's: token-major, exact integers.
void expect_choice_table(const RouterOutput& r, const Expected& want, const std::string& label) {
  SCOPED_TRACE(label);
  std::vector<int64_t> token, expert, slot, kept;
  std::vector<double> weight;
  for (size_t t = 0; t < want.choices.size(); ++t)
    for (const auto& c : want.choices[t]) {
      token.push_back(static_cast<int64_t>(t));
      expert.push_back(c.expert);
      slot.push_back(c.kept && want.out.capacity >= 0 ? c.position : -1);
      kept.push_back(c.kept ? 1 : 0);
      weight.push_back(c.kept ? c.weight : 0.0);
    }
  ASSERT_TRUE(r.choices.token.defined());
  EXPECT_EQ(to_ivec(r.choices.token), token);
  EXPECT_EQ(to_ivec(r.choices.expert), expert);
  EXPECT_EQ(to_ivec(r.choices.slot), slot);
  EXPECT_EQ(to_ivec(r.choices.kept), kept);
  auto w = to_vec(r.choices.weight);
  ASSERT_EQ(w.size(), weight.size());
  for (size_t i = 0; i < w.size(); ++i) EXPECT_NEAR(w[i], weight[i], kTol) << "choice " << i;
}

// Counts what the sweep exercised, so that a sweep without drops fails.
struct Coverage {
  int64_t dropped = 0, partly_dropped_tokens = 0;
  void add(const Expected& x) {
    dropped += x.out.dropped;
    for (const auto& c : x.choices) {
      int64_t kept = 0;
      for (const auto& a : c) kept += a.kept ? 1 : 0;
      if (kept > 0 && kept < static_cast<int64_t>(c.size())) ++partly_dropped_tokens;
    }
  }
};

const std::vector<double> kFactors = {0.0, 0.25, 0.5, 1.0, 1.25};
const std::vector<std::pair<int64_t, int64_t>> kSizes = {{8, 4}, {23, 6}, {64, 8}};

// Sweeps sizes, k, capacity factors and the exact-tie cases for one convention.
template <typename Ref>
void sweep(Convention convention, const std::vector<int64_t>& ks, bool ranks_weights, Ref ref,
           GateOptions extra = GateOptions()) {
  Coverage cov;
  uint64_t seed = 500;
  for (auto [T, E] : kSizes)
    for (int64_t k : ks)
      for (const auto& c : cases(T, E, seed += 11))
        for (double cf : kFactors) {
          // Comparing weights across tokens needs weights exact by construction (see cases()).
          if (ranks_weights && !c.exact_weights && cf > 0) continue;
          auto o = extra;
          o.top_k(k).capacity_factor(cf).convention(convention);
          auto g = topk_gate(c.w, o);
          auto r = g->route(c.x);
          auto want = ref(matmul_t(to_mat(c.x), to_mat(c.w)), k, cf);
          const std::string label = to_string(convention) + " " + c.label +
                                    " k=" + std::to_string(k) + " cf=" + std::to_string(cf);
          expect_matches(r, want.out, kTol, label);
          expect_choice_table(r, want, label);
          cov.add(want);
        }
  EXPECT_GT(cov.dropped, 0) << "the sweep overflows experts";
  if (*std::max_element(ks.begin(), ks.end()) > 1) {
    EXPECT_GT(cov.partly_dropped_tokens, 0) << "the sweep drops some choices of a token";
  }
}

TEST(Conventions, DeepSpeedTopKGatingMatchesLoopReference) {
  // k = 1, 2 rank nothing across tokens; k = 3 ranks the raw probabilities ("probs").
  sweep(Convention::kDeepSpeed, {1, 2}, false, ref_deepspeed);
  sweep(Convention::kDeepSpeed, {3}, true, ref_deepspeed);
}

TEST(Conventions, TutelMatchesLoopReference) {
  sweep(Convention::kTutel, {1, 2, 3}, false,
        [](const Mat& L, int64_t k, double cf) { return ref_tutel(L, k, cf, false); });
}

TEST(Conventions, TutelBatchPrioritizedMatchesLoopReference) {
  // The top scores order the tokens: exact-weight cases only.
  sweep(
      Convention::kTutel, {1, 2, 3}, true,
      [](const Mat& L, int64_t k, double cf) { return ref_tutel(L, k, cf, true); },
      GateOptions().batch_prioritized(true));
}

TEST(Conventions, MegatronMatchesLoopReference) {
  sweep(Convention::kMegatron, {1, 2, 3}, true, ref_megatron);
}

TEST(Conventions, GShardOnTopKEqualsDeepSpeedTop2AndTheGShardGate) {
  sweep(Convention::kGShard, {2}, false, ref_deepspeed);
  // The "gshard" gate (no noise) makes the same decisions.
  uint64_t seed = 900;
  for (auto [T, E] : kSizes)
    for (const auto& c : cases(T, E, seed += 5))
      for (double cf : kFactors) {
        auto o = GateOptions().top_k(2).capacity_factor(cf).convention(Convention::kGShard);
        auto a = topk_gate(c.w, o)->route(c.x);
        auto gs = std::make_shared<GShardGateImpl>(kCaseWidth, E, o.z_loss_coef(kZ));
        gs->to(torch::kFloat64);
        {
          torch::NoGradGuard ng;
          gs->weight.copy_(c.w);
        }
        auto b = gs->route(c.x);
        SCOPED_TRACE(c.label + " cf=" + std::to_string(cf));
        EXPECT_TRUE(torch::equal(a.token_index, b.token_index));
        EXPECT_TRUE(torch::equal(a.expert_index, b.expert_index));
        EXPECT_TRUE(torch::equal(a.choices.slot, b.choices.slot));
        EXPECT_TRUE(torch::allclose(a.weight, b.weight, 0, kTol));
        EXPECT_NEAR(a.loss_terms["balance"], b.loss_terms["balance"], kTol);
      }
}

TEST(Conventions, CapacityFormulas) {
  // ceil(k T / E * cf) against k * floor(cf * ceil(T / E)), by hand.
  EXPECT_EQ(compute_capacity(10, 4, 2, 1.0, 0), 5);
  EXPECT_EQ(compute_capacity(10, 4, 2, 1.0, 0, CapacityFormula::kTutel), 6);
  EXPECT_EQ(compute_capacity(10, 4, 2, 1.25, 0), 7);
  EXPECT_EQ(compute_capacity(10, 4, 2, 1.25, 0, CapacityFormula::kTutel), 6);
  EXPECT_EQ(compute_capacity(7, 4, 1, 0.5, 0, CapacityFormula::kTutel), 1);
  EXPECT_EQ(compute_capacity(7, 4, 1, 0.5, 3, CapacityFormula::kTutel), 3);
}

TEST(Conventions, PresetsSetTheDocumentedRules) {
  auto rules = [](Convention c, int64_t k) {
    return resolve_routing_rules(GateOptions().top_k(k).convention(c));
  };
  auto ds3 = rules(Convention::kDeepSpeed, 3);
  EXPECT_EQ(ds3.drop_policy, DropPolicy::kProbs);
  EXPECT_EQ(ds3.slot_order, SlotOrder::kTokenMajor);
  EXPECT_EQ(ds3.weight_normalization, WeightNormalization::kAfterCapacity);
  EXPECT_EQ(ds3.balance_loss_choices, BalanceLossChoices::kAllChoices);
  auto ds2 = rules(Convention::kDeepSpeed, 2);
  EXPECT_EQ(ds2.slot_order, SlotOrder::kFirstChoicesFirst);
  EXPECT_EQ(ds2.balance_loss_choices, BalanceLossChoices::kFirstChoice);
  EXPECT_EQ(rules(Convention::kDeepSpeed, 1).weight_normalization, WeightNormalization::kNone);
  auto tu = rules(Convention::kTutel, 2);
  EXPECT_EQ(tu.capacity_formula, CapacityFormula::kTutel);
  EXPECT_EQ(tu.weight_normalization, WeightNormalization::kBeforeCapacity);
  EXPECT_EQ(tu.balance_loss_choices, BalanceLossChoices::kFirstChoice);
  auto mg = rules(Convention::kMegatron, 2);
  EXPECT_TRUE(mg.softmax_over_topk);
  EXPECT_EQ(mg.drop_policy, DropPolicy::kProbs);
  // No convention: hybridmoe's defaults; by-weight slots follow the probs drop policy.
  auto none = resolve_routing_rules(GateOptions().drop_policy(DropPolicy::kProbs));
  EXPECT_EQ(none.slot_order, SlotOrder::kByWeight);
  // The alias: normalize_top_k_weights is weight_normalization before capacity.
  auto alias = GateOptions().normalize_top_k_weights(true);
  EXPECT_EQ(*alias.weight_normalization(), WeightNormalization::kBeforeCapacity);
  EXPECT_FALSE(GateOptions().normalize_top_k_weights(false).normalize_top_k_weights());
}

TEST(Conventions, ExplicitRuleContradictingTheConventionIsAnErrorNamingBoth) {
  auto o = GateOptions()
               .top_k(3)
               .convention(Convention::kDeepSpeed)
               .slot_order(SlotOrder::kFirstChoicesFirst);
  try {
    resolve_routing_rules(o);
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("slot_order=first_choices_first"), std::string::npos) << m;
    EXPECT_NE(m.find("\"deepspeed\""), std::string::npos) << m;
    EXPECT_NE(m.find("slot_order=token_major"), std::string::npos) << m;
  }
  // Agreeing explicit rules are fine.
  EXPECT_NO_THROW(resolve_routing_rules(
      GateOptions().top_k(3).convention(Convention::kDeepSpeed).drop_policy(DropPolicy::kProbs)));
  EXPECT_THROW(make_gate(8, 4, GateOptions().top_k(3).convention(Convention::kGShard)), c10::Error);
}

TEST(Conventions, GatesRefuseRulesTheyCannotFollow) {
  auto refuses = [](const GateOptions& o, const std::string& needle) {
    try {
      make_gate(8, 4, o);
    } catch (const c10::Error& e) {
      return std::string(e.what()).find(needle) != std::string::npos;
    }
    return false;
  };
  EXPECT_TRUE(refuses(GateOptions().type("sinkhorn").convention(Convention::kMegatron),
                      "sinkhorn gate: routing rule convention=megatron"));
  EXPECT_TRUE(refuses(GateOptions().type("gshard").convention(Convention::kTutel),
                      "gshard gate: routing rule convention=tutel"));
  EXPECT_TRUE(refuses(GateOptions().type("switch").top_k(1).normalize_top_k_weights(true),
                      "switch gate: routing rule weight_normalization=before_capacity"));
  EXPECT_TRUE(refuses(
      GateOptions().type("expert_choice").capacity_factor(1.0).slot_order(SlotOrder::kTokenMajor),
      "expert_choice gate: routing rule slot_order=token_major"));
  EXPECT_TRUE(
      refuses(GateOptions().type("noisy").balance_loss_choices(BalanceLossChoices::kFirstChoice),
              "noisy gate: routing rule balance_loss_choices=first_choice"));
  EXPECT_NO_THROW(make_gate(8, 4, GateOptions().type("gshard").convention(Convention::kGShard)));
  EXPECT_NO_THROW(
      make_gate(8, 4, GateOptions().type("switch").top_k(1).convention(Convention::kDeepSpeed)));
}

TEST(Conventions, NamesRoundTrip) {
  for (auto v : {SlotOrder::kFirstChoicesFirst, SlotOrder::kTokenMajor, SlotOrder::kByWeight})
    EXPECT_EQ(parse_slot_order(to_string(v)), v);
  for (auto v : {WeightNormalization::kNone, WeightNormalization::kBeforeCapacity,
                 WeightNormalization::kAfterCapacity})
    EXPECT_EQ(parse_weight_normalization(to_string(v)), v);
  for (auto v : {CapacityFormula::kCeilKTOverE, CapacityFormula::kTutel})
    EXPECT_EQ(parse_capacity_formula(to_string(v)), v);
  for (auto v : {BalanceLossChoices::kAllChoices, BalanceLossChoices::kFirstChoice})
    EXPECT_EQ(parse_balance_loss_choices(to_string(v)), v);
  for (const auto& n : known_convention_names()) EXPECT_EQ(to_string(parse_convention(n)), n);
  EXPECT_EQ(known_convention_names(),
            (std::vector<std::string>{"deepspeed", "tutel", "megatron", "gshard"}));
  try {
    parse_slot_order("token");
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("slot_order: expected one of \"first_choices_first\""),
              std::string::npos);
  }
}

TEST(Conventions, CosineLogitsFollowTutelsFormula) {
  const int64_t T = 9, E = 5, d = kCaseWidth, proj = 6;
  auto g = std::make_shared<CosineGateImpl>(
      d, E, GateOptions().type("cosine").top_k(2).cosine_projection_dim(proj));
  g->to(torch::kFloat64);
  // log(1 / 0.5), initialized in float32 before the move to float64.
  EXPECT_NEAR(g->temperature.item<double>(), std::log(2.0), 1e-7);
  auto x = gaussian(T, d, 1.0, 31);
  for (double tau : {0.3, 10.0}) {  // 10 > log(100): the scale is clamped at 100
    {
      torch::NoGradGuard ng;
      g->temperature.fill_(tau);
    }
    auto P = to_mat(g->projection_weight), S = to_mat(g->sim_matrix);
    auto b = to_vec(g->projection_bias);
    auto H = matmul_t(to_mat(x), P);
    const double scale = std::exp(std::min(tau, std::log(100.0)));
    std::vector<double> col_norm(E, 0.0);
    for (int64_t i = 0; i < proj; ++i)
      for (int64_t e = 0; e < E; ++e) col_norm[e] += S[i][e] * S[i][e];
    auto logits = g->logits_of(x);
    for (int64_t t = 0; t < T; ++t) {
      double n = 0;
      for (int64_t i = 0; i < proj; ++i) n += (H[t][i] + b[i]) * (H[t][i] + b[i]);
      for (int64_t e = 0; e < E; ++e) {
        double dot = 0;
        for (int64_t i = 0; i < proj; ++i) dot += (H[t][i] + b[i]) * S[i][e];
        const double want = dot / std::sqrt(n) / std::sqrt(col_norm[e]) * scale;
        EXPECT_NEAR(logits[t][e].item<double>(), want, 1e-12 * scale) << t << "," << e;
      }
    }
    // The clamp stops the temperature's gradient.
    g->zero_grad();
    g->logits_of(x).pow(2).sum().backward();
    if (tau > std::log(100.0))
      EXPECT_EQ(g->temperature.grad().item<double>(), 0.0);
    else
      EXPECT_NE(g->temperature.grad().item<double>(), 0.0);
  }
}

TEST(Conventions, CosineGateRoutesWithTheTutelConvention) {
  const int64_t T = 23, E = 6;
  auto x = gaussian(T, kCaseWidth, 1.0, 77);
  for (double cf : {0.0, 0.5, 1.0}) {
    auto g = std::make_shared<CosineGateImpl>(
        kCaseWidth, E,
        GateOptions().type("cosine").top_k(2).capacity_factor(cf).z_loss_coef(kZ).convention(
            Convention::kTutel));
    g->to(torch::kFloat64);
    auto r = g->route(x);
    auto want = ref_tutel(to_mat(g->logits_of(x)), 2, cf, false);
    expect_matches(r, want.out, kTol, "cosine cf=" + std::to_string(cf));
    expect_choice_table(r, want, "cosine cf=" + std::to_string(cf));
  }
}

}  // namespace
}  // namespace hybridmoe
