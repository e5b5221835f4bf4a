// family_routing_test.cpp — the "topk" gate's model-family routing rules against a plain loop
// reference written here: softmax scores renormalized or not (Mixtral, Qwen-MoE, OLMoE), sigmoid
// scores with a selection-only bias (DeepSeek-V3; the bias changes the choice, never the weight),
// group-limited selection (a group's score is the sum of its two best scores; rejected groups'
// scores become 0 before the top-k), normalization with + 1e-20 and routed scaling; and the
// refusals of options that cannot hold.
#include <cmath>

#include <gtest/gtest.h>

#include "hybridmoe/gates.h"
#include "router/reference.h"

namespace hybridmoe {
namespace {

using testing::Choice;
using testing::Mat;
using testing::RefOut;

constexpr double kTol = 1e-15;

struct FamilyRule {
  ScoreFunction score = ScoreFunction::kSoftmax;
  bool normalize = false;
  bool after_capacity = false;  ///< normalize after capacity instead (dropless: the same weights)
  std::vector<double> bias;     ///< empty: no selection bias
  int64_t n_group = 1, topk_group = 1, k = 2;
  double scale = 1.0;
};

/// The k largest of v, ties to the lower index.
std::vector<int64_t> best(const std::vector<double>& v, int64_t k) {
  return testing::topk_indices(v, k);
}

/// The reference, token by token with plain loops.
RefOut family_reference(const Mat& logits, const FamilyRule& r) {
  std::vector<std::vector<Choice>> choices;
  for (const auto& l : logits) {
    const int64_t E = static_cast<int64_t>(l.size());
    // 1. Scores.
    std::vector<double> s(E);
    if (r.score == ScoreFunction::kSigmoid) {
      for (int64_t e = 0; e < E; ++e) s[e] = 1.0 / (1.0 + std::exp(-l[e]));
    } else {
      s = testing::softmax(l);
    }
    // 2. Selection scores: + bias; groups scored by their two best, the rest set to 0.
    std::vector<double> sel = s;
    for (size_t e = 0; e < r.bias.size(); ++e) sel[e] += r.bias[e];
    if (r.n_group > 1) {
      const int64_t per = E / r.n_group;
      std::vector<double> group_score(r.n_group);
      for (int64_t g = 0; g < r.n_group; ++g) {
        std::vector<double> members(sel.begin() + g * per, sel.begin() + (g + 1) * per);
        const auto two = best(members, 2);
        group_score[g] = members[two[0]] + members[two[1]];
      }
      std::vector<bool> kept(r.n_group, false);
      for (int64_t g : best(group_score, r.topk_group)) kept[g] = true;
      for (int64_t e = 0; e < E; ++e)
        if (!kept[e / per]) sel[e] = 0.0;
    }
    // 3. Choices, weights from the unbiased scores.
    const auto chosen = best(sel, r.k);
    double sum = 0.0;
    for (int64_t e : chosen) sum += s[e];
    std::vector<Choice> row;
    for (int64_t e : chosen) {
      double w = s[e];
      if (r.normalize || r.after_capacity)
        w = r.score == ScoreFunction::kSigmoid ? w / (sum + 1e-20) : w / sum;
      Choice c;
      c.expert = e;
      c.weight = w * r.scale;
      c.kept = true;
      row.push_back(c);
    }
    choices.push_back(row);
  }
  RefOut out;
  testing::list_choices(choices, out);
  return out;
}

/// A float64 gate whose logits are the rows of `logits` (x = logits, weight = identity).
RouterOutput route(const torch::Tensor& logits, const FamilyRule& r) {
  const int64_t E = logits.size(1);
  auto o = GateOptions()
               .top_k(r.k)
               .score_function(r.score)
               .selection_bias(!r.bias.empty())
               .n_group(r.n_group)
               .topk_group(r.topk_group)
               .routed_scaling_factor(r.scale)
               .aux_loss_coef(0.0);
  if (r.normalize) o.weight_normalization(WeightNormalization::kBeforeCapacity);
  if (r.after_capacity) o.weight_normalization(WeightNormalization::kAfterCapacity);
  auto gate = std::make_shared<TopKGateImpl>(E, E, o);
  gate->to(torch::kFloat64);
  torch::NoGradGuard no_grad;
  gate->weight.copy_(torch::eye(E, torch::kFloat64));
  if (!r.bias.empty()) gate->expert_bias.copy_(torch::tensor(r.bias, torch::kFloat64));
  return gate->route(logits);
}

/// logit(p): the logit whose sigmoid is p.
double logit(double p) {
  return std::log(p / (1.0 - p));
}

torch::Tensor sigmoid_logits(const std::vector<std::vector<double>>& scores) {
  std::vector<double> flat;
  for (const auto& row : scores)
    for (double p : row) flat.push_back(logit(p));
  return torch::tensor(flat, torch::kFloat64)
      .view({static_cast<int64_t>(scores.size()), static_cast<int64_t>(scores[0].size())});
}

void expect_reference(const torch::Tensor& logits, const FamilyRule& r, const std::string& what) {
  const auto got = route(logits, r);
  testing::expect_matches(got, family_reference(testing::to_mat(logits), r), kTol, what);
  // Dropless, the choice table lists the same (scaled) weights, token-major.
  EXPECT_TRUE(torch::equal(got.choices.weight, got.weight.detach())) << what;
}

TEST(FamilyRouting, SoftmaxRenormalizedOrNotAndScaled) {
  auto logits = testing::gaussian(16, 8, 1.0, 7);
  for (bool normalize : {false, true})
    for (double scale : {1.0, 2.5})
      for (int64_t k : {1, 2, 4}) {
        FamilyRule r;
        r.normalize = normalize;
        r.scale = scale;
        r.k = k;
        expect_reference(logits, r,
                         "normalize " + std::to_string(normalize) + " scale " +
                             std::to_string(scale) + " k " + std::to_string(k));
      }
}

TEST(FamilyRouting, SigmoidBiasChangesTheChoiceNeverTheWeight) {
  // Expert 2 is third by score but first once its bias is added.
  auto logits = sigmoid_logits({{0.5, 0.4, 0.3, 0.2}});
  FamilyRule r;
  r.score = ScoreFunction::kSigmoid;
  r.bias = {0.0, 0.0, 0.25, 0.0};
  auto got = route(logits, r);
  EXPECT_EQ(testing::to_ivec(got.expert_index), (std::vector<int64_t>{2, 0}));
  const auto w = testing::to_vec(got.weight);
  EXPECT_NEAR(w[0], 0.3, 1e-15);  // the unbiased score
  EXPECT_NEAR(w[1], 0.5, 1e-15);
  for (bool normalize : {false, true}) {
    r.normalize = normalize;
    r.scale = normalize ? 2.5 : 1.0;
    expect_reference(logits, r, "normalize " + std::to_string(normalize));
  }
  r.normalize = false;
  r.after_capacity = true;  // the scale comes after the renormalization, not undone by it
  r.scale = 2.5;
  expect_reference(logits, r, "normalize after capacity, scaled");
  // Random cases, with and without a bias.
  auto many = testing::gaussian(32, 8, 2.0, 11);
  FamilyRule plain;
  plain.score = ScoreFunction::kSigmoid;
  plain.normalize = true;
  expect_reference(many, plain, "sigmoid without bias");
  plain.bias = {0.1, -0.2, 0.3, 0.0, -0.1, 0.2, 0.05, -0.3};
  expect_reference(many, plain, "sigmoid with bias");
}

TEST(FamilyRouting, GroupRejectedAlthoughItHoldsTheBestExpert) {
  // Two experts per group, so a group's top-2 sum is its whole sum. Group 0 holds the best
  // expert (0.95) but sums to 1.0; groups 1 (1.2) and 2 (1.1) are kept.
  auto logits = sigmoid_logits({{0.95, 0.05, 0.6, 0.6, 0.55, 0.55, 0.1, 0.1}});
  FamilyRule r;
  r.score = ScoreFunction::kSigmoid;
  r.n_group = 4;
  r.topk_group = 2;
  r.normalize = true;
  auto got = route(logits, r);
  EXPECT_EQ(testing::to_ivec(got.expert_index), (std::vector<int64_t>{2, 3}));
  expect_reference(logits, r, "best expert in a rejected group");
}

TEST(FamilyRouting, FourPerGroupScoresByTheTopTwoNotTheSum) {
  // Group 0: top-2 sum 1.0, sum 1.2; group 1: top-2 sum 0.95, sum 1.75. The top-2 sum keeps
  // group 0 (the whole sum would keep group 1).
  auto logits = sigmoid_logits({{0.9, 0.1, 0.1, 0.1, 0.5, 0.45, 0.4, 0.4}});
  FamilyRule r;
  r.score = ScoreFunction::kSigmoid;
  r.n_group = 2;
  r.topk_group = 1;
  auto got = route(logits, r);
  EXPECT_EQ(testing::to_ivec(got.expert_index), (std::vector<int64_t>{0, 1}));
  expect_reference(logits, r, "four per group");
}

TEST(FamilyRouting, RejectedGroupsScoreZeroEvenAgainstNegativeBiasedScores) {
  // Every biased score is negative, so the rejected groups' zeros win the top-k (the rejected
  // groups are filled with 0, not -inf).
  auto logits = sigmoid_logits({{0.9, 0.8, 0.3, 0.2, 0.25, 0.15, 0.1, 0.05}});
  FamilyRule r;
  r.score = ScoreFunction::kSigmoid;
  r.bias = std::vector<double>(8, -1.0);
  r.n_group = 4;
  r.topk_group = 1;
  auto got = route(logits, r);
  EXPECT_EQ(testing::to_ivec(got.expert_index), (std::vector<int64_t>{2, 3}));
  expect_reference(logits, r, "negative biased scores");
}

TEST(FamilyRouting, GroupLimitedSweep) {
  for (int64_t groups : {2, 4, 8})
    for (int64_t keep = 1; keep <= groups; ++keep)
      for (auto score : {ScoreFunction::kSoftmax, ScoreFunction::kSigmoid}) {
        const int64_t E = 16, per = E / groups;
        FamilyRule r;
        r.score = score;
        r.n_group = groups;
        r.topk_group = keep;
        r.k = std::min<int64_t>(4, keep * per);
        r.normalize = true;
        r.scale = 2.5;
        r.bias.clear();
        for (int64_t e = 0; e < E; ++e) r.bias.push_back(0.01 * ((e * 5) % 7 - 3));
        expect_reference(testing::gaussian(24, E, 1.5, 3 + groups * 10 + keep), r,
                         "groups " + std::to_string(groups) + " keep " + std::to_string(keep) +
                             " " + to_string(score));
      }
}

TEST(FamilyRouting, RefusesOptionsThatCannotHold) {
  auto expect_error = [](GateOptions o, int64_t E, const std::string& part) {
    try {
      make_gate(8, E, o);
      ADD_FAILURE() << "accepted: " << part;
    } catch (const c10::Error& e) {
      const std::string what = e.what_without_backtrace();
      EXPECT_NE(what.find(part), std::string::npos) << what;
    }
  };
  expect_error(GateOptions().n_group(3), 8, "n_group must be >= 1 and divide the 8 experts, got 3");
  expect_error(GateOptions().n_group(2).topk_group(3), 8, "topk_group must be in [1, n_group=2]");
  expect_error(GateOptions().n_group(4).topk_group(1).top_k(3), 8,
               "top_k=3 is more than the 2 experts of the topk_group=1 kept groups");
  expect_error(GateOptions().n_group(8).top_k(1), 8, "needs >= 2 of the 8 experts");
  expect_error(GateOptions().routed_scaling_factor(0.0), 8, "routed_scaling_factor must be > 0");
  expect_error(GateOptions().score_function(ScoreFunction::kSigmoid).softmax_over_topk(true), 8,
               "softmax_over_topk needs score_function=softmax");
  expect_error(GateOptions().type("gshard").score_function(ScoreFunction::kSigmoid), 8,
               "are options of the \"topk\" gate");
  EXPECT_EQ(parse_score_function("sigmoid"), ScoreFunction::kSigmoid);
  EXPECT_EQ(to_string(ScoreFunction::kSoftmax), "softmax");
  try {
    parse_score_function("tanh");
    ADD_FAILURE() << "parsed tanh";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find("\"softmax\", \"sigmoid\""),
              std::string::npos)
        << e.what_without_backtrace();
  }
}

}  // namespace
}  // namespace hybridmoe
