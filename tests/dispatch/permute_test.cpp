// permute_test.cpp — the dispatch plan and the paired row movements: exact routing maps and
// counts against a loop, permute/unpermute identity, and the adjoint property of the pair.
#include <gtest/gtest.h>

#include <map>

#include "hybridmoe/detail/dispatch.h"
#include "kernels/cpu/row_scatter.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

using testing::close;
using testing::identical;

RouterOutput random_routing(int64_t T, int64_t E, int64_t k, uint64_t seed, double drop = 0.0) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::vector<int64_t> tok, exp;
  std::vector<double> w;
  for (int64_t t = 0; t < T; ++t) {
    auto perm = torch::randperm(E, gen, torch::kInt64);
    for (int64_t j = 0; j < k; ++j) {
      if (drop > 0 && torch::rand({1}, gen).item<double>() < drop) continue;
      tok.push_back(t);
      exp.push_back(perm[j].item<int64_t>());
      w.push_back(torch::rand({1}, gen).item<double>());
    }
  }
  RouterOutput r;
  r.token_index = torch::tensor(tok, torch::kInt64);
  r.expert_index = torch::tensor(exp, torch::kInt64);
  r.weight = torch::tensor(w, torch::kFloat64);
  return r;
}

TEST(DispatchPlan, MatchesLoopReferenceExactly) {
  for (auto [T, E, k] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {1, 1, 1}, {1, 4, 2}, {7, 3, 1}, {64, 8, 2}, {300, 16, 4}, {1000, 64, 2}}) {
    auto r = random_routing(T, E, k, 17 + T, T > 5 ? 0.2 : 0.0);
    auto plan = make_plan(r, T, E);
    // Reference: bucket the assignments by expert in list order.
    std::map<int64_t, std::vector<int64_t>> rows_of;
    for (int64_t a = 0; a < r.expert_index.numel(); ++a)
      rows_of[r.expert_index[a].item<int64_t>()].push_back(a);
    std::vector<int64_t> order, counts(E, 0);
    for (int64_t e = 0; e < E; ++e) {
      for (auto a : rows_of[e]) order.push_back(a);
      counts[e] = static_cast<int64_t>(rows_of[e].size());
    }
    EXPECT_TRUE(identical(plan.order, torch::tensor(order, torch::kInt64))) << T << " " << E;
    EXPECT_TRUE(identical(plan.counts, torch::tensor(counts, torch::kInt64)));
    EXPECT_EQ(plan.counts_host, counts);
    EXPECT_EQ(plan.offsets_host.back(), r.expert_index.numel());
    EXPECT_TRUE(identical(plan.sorted_token, r.token_index.index_select(0, plan.order)));
  }
}

TEST(DispatchPlan, WithinExpertOrderIsTokenOrder) {
  auto r = random_routing(200, 5, 2, 3);
  auto plan = make_plan(r, 200, 5);
  for (int64_t e = 0; e < 5; ++e) {
    auto seg = plan.sorted_token.narrow(0, plan.offsets_host[e], plan.counts_host[e]);
    if (seg.numel() > 1) {
      EXPECT_TRUE((seg.slice(0, 1) > seg.slice(0, 0, -1)).all().item<bool>());
    }
  }
}

TEST(DispatchPlan, RejectsOutOfRangeExperts) {
  auto r = random_routing(4, 4, 1, 1);
  EXPECT_TRUE(
      testing::throws_with([&] { make_plan(r, 4, 3); }, "expert index out of range [0, 3)"));
  EXPECT_TRUE(testing::throws_with([&] { make_plan(r, 3, 4); }, "token index out of range [0, 3)"));
}

TEST(Permute, PermuteThenUnpermuteIsIdentityWithGradients) {
  // Every token has exactly one assignment: unpermute(permute(x)) == x, and dx == dy.
  const int64_t T = 37, E = 6, d = 5;
  auto r = random_routing(T, E, 1, 9);
  auto plan = make_plan(r, T, E);
  auto x = torch::randn({T, d}, torch::kFloat64).requires_grad_(true);
  auto rows = permute(x, plan);
  EXPECT_TRUE(identical(rows.detach(), x.detach().index_select(0, plan.sorted_token)));
  auto back = unpermute(rows, plan, /*weighted=*/false);
  EXPECT_TRUE(identical(back.detach(), x.detach()));
  auto dy = torch::randn({T, d}, torch::kFloat64);
  back.backward(dy);
  EXPECT_TRUE(identical(x.grad(), dy));
}

TEST(Permute, WeightsSummingToOneGiveIdentity) {
  const int64_t T = 20, E = 4, k = 3, d = 3;
  auto r = random_routing(T, E, k, 5);
  // Normalize each token's weights to sum to one.
  auto sums = torch::zeros({T}, torch::kFloat64).index_add_(0, r.token_index, r.weight);
  r.weight = r.weight / sums.index_select(0, r.token_index);
  auto plan = make_plan(r, T, E);
  auto x = torch::randn({T, d}, torch::kFloat64);
  EXPECT_TRUE(close(unpermute(permute(x, plan), plan), x, 1e-14));
}

TEST(Permute, GatherAndScatterAreAdjoint) {
  // <gather(x), y> == <x, scatter_add(y)> and the autograd backward of each is the other.
  const int64_t N = 11, A = 25, d = 4;
  auto index = torch::randint(N, {A}, torch::kInt64);
  auto x = torch::randn({N, d}, torch::kFloat64).requires_grad_(true);
  auto y = torch::randn({A, d}, torch::kFloat64).requires_grad_(true);
  auto lhs = (gather_rows(x, index) * y.detach()).sum();
  auto rhs = (x.detach() * scatter_add_rows(y, index, N)).sum();
  EXPECT_NEAR(lhs.item<double>(), rhs.item<double>(), 1e-12);
  lhs.backward();
  rhs.backward();
  EXPECT_TRUE(close(x.grad(), scatter_add_rows(y.detach(), index, N), 1e-14));
  EXPECT_TRUE(close(y.grad(), gather_rows(x.detach(), index), 1e-14));
}

TEST(Permute, EmptyRouting) {
  RouterOutput r;
  r.token_index = torch::empty({0}, torch::kInt64);
  r.expert_index = torch::empty({0}, torch::kInt64);
  r.weight = torch::empty({0}, torch::kFloat64);
  auto plan = make_plan(r, 3, 2);
  auto x = torch::randn({3, 4}, torch::kFloat64);
  auto rows = permute(x, plan);
  EXPECT_EQ(rows.size(0), 0);
  EXPECT_TRUE(identical(unpermute(rows, plan), torch::zeros({3, 4}, torch::kFloat64)));
}

// The CPU combine kernels (row_scatter.h) against the ATen compositions they replace: forward and
// dy bit for bit (same summation order as index_add_), dweight to float tolerance; rows that no
// index names stay zero; float32 and float64; a bad index is refused.
TEST(Permute, CombineKernelsMatchTheATenComposition) {
  for (auto dtype : {torch::kFloat64, torch::kFloat32})
    for (auto [T, A, d] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {1, 1, 1}, {5, 12, 3}, {64, 128, 33}, {300, 1200, 64}}) {
      auto gen = at::make_generator<at::CPUGeneratorImpl>(T + A + d);
      auto y = torch::randn({A, d}, gen, dtype);
      auto w = torch::rand({A}, gen, dtype);
      auto index = torch::randint(0, T, {A}, gen, torch::kInt64);
      auto dout = torch::randn({T, d}, gen, dtype);
      auto weighted = kernels::scatter_add_rows_cpu(y, index, T, w);
      EXPECT_TRUE(torch::equal(
          weighted, torch::zeros({T, d}, y.options()).index_add_(0, index, y * w.unsqueeze(1))));
      auto plain = kernels::scatter_add_rows_cpu(y, index, T, torch::Tensor());
      EXPECT_TRUE(torch::equal(plain, torch::zeros({T, d}, y.options()).index_add_(0, index, y)));
      auto [dy, dw] = kernels::weighted_gather_rows_backward_cpu(dout, index, y, w);
      auto g = dout.index_select(0, index);
      EXPECT_TRUE(torch::equal(dy, g * w.unsqueeze(1)));
      EXPECT_TRUE(close(dw, (g * y).sum(1), dtype == torch::kFloat64 ? 1e-12 : 1e-5));
    }
  auto y = torch::ones({3, 2}, torch::kFloat64);
  auto bad = torch::tensor({0, 1, 5}, torch::kInt64);
  EXPECT_TRUE(
      testing::throws_with([&] { kernels::scatter_add_rows_cpu(y, bad, 4, torch::Tensor()); },
                           "index out of range [0, 4): saw 5"));
}

}  // namespace
}  // namespace hybridmoe
