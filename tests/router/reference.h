// reference.h — plain float64 references of the gates' formulas for the router tests: loops
// over tokens and experts on std::vector, independent of the vectorized gate code, plus input
// builders and a comparison of a RouterOutput with a reference result.
#pragma once

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "hybridmoe/gate.h"

namespace hybridmoe::testing {

using Mat = std::vector<std::vector<double>>;

/// t: [R, C] → rows of doubles.
inline Mat to_mat(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kFloat64).contiguous();
  Mat m(c.size(0), std::vector<double>(c.size(1)));
  auto a = c.accessor<double, 2>();
  for (int64_t i = 0; i < c.size(0); ++i)
    for (int64_t j = 0; j < c.size(1); ++j) m[i][j] = a[i][j];
  return m;
}

/// t: [n] → doubles.
inline std::vector<double> to_vec(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

/// t: [n] integer → int64 values.
inline std::vector<int64_t> to_ivec(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kInt64).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

/// x: [T, d] times w: [E, d] transposed, by loops → [T, E].
inline Mat matmul_t(const Mat& x, const Mat& w) {
  Mat out(x.size(), std::vector<double>(w.size(), 0.0));
  for (size_t t = 0; t < x.size(); ++t)
    for (size_t e = 0; e < w.size(); ++e)
      for (size_t i = 0; i < x[t].size(); ++i) out[t][e] += x[t][i] * w[e][i];
  return out;
}

inline std::vector<double> softmax(const std::vector<double>& v) {
  double m = -INFINITY, s = 0.0;
  for (double a : v) m = std::max(m, a);
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) s += (out[i] = std::exp(v[i] - m));
  for (auto& o : out) o /= s;
  return out;
}

inline Mat softmax_rows(const Mat& l) {
  Mat p;
  for (const auto& row : l) p.push_back(softmax(row));
  return p;
}

/// Indices of the k largest entries, larger first, ties to the lower index (selection sort).
inline std::vector<int64_t> topk_indices(const std::vector<double>& v, int64_t k) {
  std::vector<bool> used(v.size(), false);
  std::vector<int64_t> out;
  for (int64_t r = 0; r < k; ++r) {
    int64_t best = -1;
    for (size_t i = 0; i < v.size(); ++i)
      if (!used[i] && (best < 0 || v[i] > v[best])) best = static_cast<int64_t>(i);
    used[best] = true;
    out.push_back(best);
  }
  return out;
}

/// ST-MoE z-loss: mean over tokens of logsumexp(logits)^2.
inline double z_loss(const Mat& l) {
  double s = 0.0;
  for (const auto& row : l) {
    double m = -INFINITY, acc = 0.0;
    for (double a : row) m = std::max(m, a);
    for (double a : row) acc += std::exp(a - m);
    const double lse = m + std::log(acc);
    s += lse * lse;
  }
  return s / static_cast<double>(l.size());
}

/// E * sum_e (count_e / choices) * mean_t p_te.
inline double balance_loss(const Mat& p, const std::vector<std::vector<int64_t>>& choices) {
  const size_t T = p.size(), E = p[0].size();
  std::vector<double> count(E, 0.0), mean(E, 0.0);
  double n = 0;
  for (const auto& c : choices)
    for (int64_t e : c) count[e] += 1, n += 1;
  for (size_t t = 0; t < T; ++t)
    for (size_t e = 0; e < E; ++e) mean[e] += p[t][e] / static_cast<double>(T);
  double s = 0.0;
  for (size_t e = 0; e < E; ++e) s += count[e] / n * mean[e];
  return static_cast<double>(E) * s;
}

/// ceil(k * T / E * f), floored at min_capacity; f > 0.
inline int64_t capacity_of(int64_t T, int64_t E, int64_t k, double f, int64_t min_capacity) {
  const double raw = static_cast<double>(k * T) * f / static_cast<double>(E);
  return std::max<int64_t>(min_capacity, static_cast<int64_t>(std::ceil(raw - 1e-9)));
}

/// One choice of a token: expert (-1 = not routed), its weight and the drop-order score.
struct Choice {
  int64_t expert = -1;
  double weight = 0.0;
  double score = 0.0;  // what kProbs sorts by (descending)
  int64_t position = -1;
  bool kept = false;
};

/// The capacity of one group's choices under factor f, by loops: f > 0: capacity_of; f < 0
/// (dynamic): the smaller of the largest number of routed choices any expert received and
/// capacity_of(|f|); f == 0: -1 (dropless).
inline int64_t capacity_for(const std::vector<std::vector<Choice>>& choices, int64_t E, int64_t k,
                            double f, int64_t min_capacity) {
  const auto T = static_cast<int64_t>(choices.size());
  if (f == 0) return -1;
  if (f > 0) return capacity_of(T, E, k, f, min_capacity);
  std::vector<int64_t> count(E, 0);
  for (const auto& token : choices)
    for (const auto& c : token)
      if (c.expert >= 0) ++count[c.expert];
  int64_t largest = 0;
  for (auto n : count) largest = std::max(largest, n);
  return std::min(largest, capacity_of(T, E, k, -f, min_capacity));
}

/// Assigns capacity slots to choices[t][slot]. Priority order: slot-major, then token. kPosition:
/// slots in that order; kProbs: by score descending, ties in that order. capacity < 0: keep all.
inline void assign_slots(std::vector<std::vector<Choice>>& choices, int64_t E, int64_t capacity,
                         DropPolicy policy) {
  const size_t T = choices.size(), k = T ? choices[0].size() : 0;
  for (int64_t e = 0; e < E; ++e) {
    std::vector<std::pair<size_t, size_t>> mine;  // (slot, token) in priority order
    for (size_t s = 0; s < k; ++s)
      for (size_t t = 0; t < T; ++t)
        if (choices[t][s].expert == e) mine.push_back({s, t});
    if (policy == DropPolicy::kProbs) {
      // Insertion sort: stable, descending score.
      for (size_t i = 1; i < mine.size(); ++i)
        for (size_t j = i; j > 0; --j) {
          const auto& a = choices[mine[j - 1].second][mine[j - 1].first];
          const auto& b = choices[mine[j].second][mine[j].first];
          if (b.score > a.score)
            std::swap(mine[j - 1], mine[j]);
          else
            break;
        }
    }
    for (size_t r = 0; r < mine.size(); ++r) {
      auto& c = choices[mine[r].second][mine[r].first];
      c.position = static_cast<int64_t>(r);
      c.kept = capacity < 0 || static_cast<int64_t>(r) < capacity;
    }
  }
}

/// Assigns capacity slots by the peers' rules, as loops. Each expert's choices are listed in
/// slot order: kFirstChoicesFirst by (choice rank, token), kTokenMajor by (token, choice rank),
/// kByWeight by descending score then (choice rank, token); with `priority` (one score per
/// token) tokens are taken by descending priority, ties by index, instead of token order.
/// kPosition keeps the first `capacity` in that order and numbers them so; kProbs keeps the
/// `capacity` largest scores (ties: slot order) and numbers the kept ones in slot order; a
/// dropped choice's position is its rank in the drop order. capacity < 0: keep all.
inline void assign_slots_in_order(std::vector<std::vector<Choice>>& choices, int64_t E,
                                  int64_t capacity, DropPolicy policy, hybridmoe::SlotOrder order,
                                  const std::vector<double>& priority) {
  const size_t T = choices.size(), k = T ? choices[0].size() : 0;
  std::vector<size_t> tok_pos(T);  // place of each token in the token order
  {
    std::vector<size_t> seq(T);
    std::iota(seq.begin(), seq.end(), 0);
    if (!priority.empty())
      std::stable_sort(seq.begin(), seq.end(),
                       [&](size_t a, size_t b) { return priority[a] > priority[b]; });
    for (size_t i = 0; i < T; ++i) tok_pos[seq[i]] = i;
  }
  using Ref = std::pair<size_t, size_t>;  // (token, choice rank)
  auto score = [&](const Ref& r) { return choices[r.first][r.second].score; };
  auto first_key = [&](const Ref& r) { return r.second * T + tok_pos[r.first]; };
  auto slot_less = [&](const Ref& a, const Ref& b) {
    if (order == hybridmoe::SlotOrder::kTokenMajor)
      return tok_pos[a.first] * k + a.second < tok_pos[b.first] * k + b.second;
    if (order == hybridmoe::SlotOrder::kByWeight && score(a) != score(b))
      return score(a) > score(b);
    return first_key(a) < first_key(b);
  };
  for (int64_t e = 0; e < E; ++e) {
    std::vector<Ref> mine;
    for (size_t t = 0; t < T; ++t)
      for (size_t j = 0; j < k; ++j)
        if (choices[t][j].expert == e) mine.push_back({t, j});
    std::sort(mine.begin(), mine.end(), slot_less);  // keys are distinct: a total order
    std::vector<Ref> drop = mine;
    if (policy == DropPolicy::kProbs)
      std::stable_sort(drop.begin(), drop.end(),
                       [&](const Ref& a, const Ref& b) { return score(a) > score(b); });
    for (size_t r = 0; r < drop.size(); ++r) {
      auto& c = choices[drop[r].first][drop[r].second];
      c.kept = capacity < 0 || static_cast<int64_t>(r) < capacity;
      c.position = static_cast<int64_t>(r);
    }
    int64_t slot = 0;
    for (const auto& ref : mine) {
      auto& c = choices[ref.first][ref.second];
      if (c.kept) c.position = slot++;
    }
  }
}

/// What a reference gate produces.
struct RefOut {
  std::vector<int64_t> token, expert, position;
  std::vector<double> weight;
  int64_t capacity = -1;
  int64_t dropped = 0;
  std::map<std::string, double> terms;
};

/// Token-major list of the kept choices; dropped = routed choices that were not kept.
inline void list_choices(const std::vector<std::vector<Choice>>& choices, RefOut& out) {
  for (size_t t = 0; t < choices.size(); ++t)
    for (const auto& c : choices[t]) {
      if (c.expert < 0) continue;
      if (!c.kept) {
        ++out.dropped;
        continue;
      }
      out.token.push_back(static_cast<int64_t>(t));
      out.expert.push_back(c.expert);
      out.weight.push_back(c.weight);
      out.position.push_back(c.position);
    }
}

/// Integer outputs exactly, weights and loss terms within tol.
inline void expect_matches(const hybridmoe::RouterOutput& got, const RefOut& want, double tol,
                           const std::string& label) {
  SCOPED_TRACE(label);
  EXPECT_EQ(to_ivec(got.token_index), want.token);
  EXPECT_EQ(to_ivec(got.expert_index), want.expert);
  EXPECT_EQ(got.capacity, want.capacity);
  EXPECT_EQ(got.dropped, want.dropped);
  if (want.capacity >= 0) {
    ASSERT_TRUE(got.position.defined());
    EXPECT_EQ(to_ivec(got.position), want.position);
  }
  auto w = to_vec(got.weight);
  ASSERT_EQ(w.size(), want.weight.size());
  for (size_t i = 0; i < w.size(); ++i) EXPECT_NEAR(w[i], want.weight[i], tol) << "weight " << i;
  for (const auto& kv : want.terms) {
    ASSERT_TRUE(got.loss_terms.count(kv.first)) << "missing loss term " << kv.first;
    EXPECT_NEAR(got.loss_terms.at(kv.first), kv.second, tol * (1 + std::abs(kv.second)))
        << kv.first;
  }
}

/// Small dyadic values (exact products and sums in float32 and float64): many exact ties.
/// → [rows, cols] float64 with entries in {-levels..levels} / scale.
inline torch::Tensor dyadic(int64_t rows, int64_t cols, int64_t levels, double scale,
                            uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return torch::randint(-levels, levels + 1, {rows, cols}, gen, torch::kFloat64) / scale;
}

/// Generic continuous values (no ties). → [rows, cols] float64.
inline torch::Tensor gaussian(int64_t rows, int64_t cols, double scale, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return torch::randn({rows, cols}, gen, torch::kFloat64) * scale;
}

/// Gaussian values rounded to multiples of 2^-bits: continuous-looking, yet their dot products
/// over a few columns are exact in float64 in any summation order (no BLAS rounding), so equal
/// rows give bit-equal logits. → [rows, cols] float64.
inline torch::Tensor quantized_gaussian(int64_t rows, int64_t cols, double scale, int64_t bits,
                                        uint64_t seed) {
  const double unit = std::ldexp(1.0, static_cast<int>(bits));
  return torch::round(gaussian(rows, cols, scale, seed) * unit) / unit;
}

/// Width of the inputs of cases().
constexpr int64_t kCaseWidth = 8;

// Inputs of one case.
//   "ties":       small dyadic values (exact logits, many exact ties), a duplicated expert row
//                 and a duplicated token. Weights that are equal only mathematically (e.g.
//                 softmax of shifted logit rows) may differ by an ulp between the gate and the
//                 reference, so the "probs" drop order (which compares weights across tokens)
//                 is not compared on this case: exact_weights = false.
//   "duplicates": gaussian values rounded to multiples of 2^-10, with a duplicated expert row
//                 and duplicated tokens. Every product and partial sum of a logit is a multiple
//                 of 2^-20 below 2^6, so the logits are exact whatever order or kernel the GEMM
//                 uses (any BLAS, any row or column position): the ties of the duplicated row and
//                 tokens are exact by construction. Weights are continuous, and the duplicated
//                 tokens' weights come from identical logit rows through one row-wise softmax.
//   "gaussian":   continuous values, no ties.
struct Case {
  torch::Tensor x, w;  // x: [T, d], w: [E, d], float64
  std::string label;
  bool exact_weights = true;
};
//
// duplicate_experts = false leaves out the duplicated expert rows, for gates whose scores are
// not exact functions of the logits per position: Sinkhorn normalizes every expert's column with
// ATen's reduction over tokens, whose summation order depends on the column's SIMD lane, so two
// equal columns need not come out bit-equal (a tie there would be luck, not construction).
inline std::vector<Case> cases(int64_t T, int64_t E, uint64_t seed, bool duplicate_experts = true) {
  std::vector<Case> out;
  const std::string size = " T=" + std::to_string(T) + " E=" + std::to_string(E);
  auto x = dyadic(T, kCaseWidth, 4, 4.0, seed), w = dyadic(E, kCaseWidth, 4, 8.0, seed + 1);
  if (E >= 3 && duplicate_experts) w[2].copy_(w[0]);
  if (T >= 3) x[2].copy_(x[1]);
  out.push_back({x, w, "ties" + size, false});
  auto xd = quantized_gaussian(T, kCaseWidth, 1.0, 10, seed + 4),
       wd = quantized_gaussian(E, kCaseWidth, 0.5, 10, seed + 5);
  if (E >= 3 && duplicate_experts) wd[1].copy_(wd[E - 1]);
  for (int64_t t = 3; t < T; t += 3) xd[t].copy_(xd[t - 2]);
  out.push_back({xd, wd, "duplicates" + size});
  out.push_back({gaussian(T, kCaseWidth, 1.0, seed + 2), gaussian(E, kCaseWidth, 0.5, seed + 3),
                 "gaussian" + size});
  return out;
}

/// The sizes the reference tests sweep: tokens, experts, k.
struct Size {
  int64_t T, E, k;
};
inline std::vector<Size> sweep_sizes() {
  return {{1, 2, 1}, {8, 4, 2}, {23, 6, 2}, {64, 8, 3}};
}

}  // namespace hybridmoe::testing
