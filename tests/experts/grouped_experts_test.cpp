// grouped_experts_test.cpp — the fused grouped MLP (forward and hand-written backward) against
// the plain per-expert reference, over activations, biases, dtypes and a table of segment shapes
// (empty experts, one row, large).
#include <gtest/gtest.h>

#include "hybridmoe/experts.h"
#include "hybridmoe/testing/references.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

using testing::close;

struct Case {
  std::vector<int64_t> counts;
  int64_t d, h;
};

const std::vector<Case> kCases = {
    {{1}, 3, 5},
    {{0, 1}, 4, 3},
    {{2, 0, 3}, 8, 16},
    {{0, 0, 0, 7}, 6, 10},
    {{13, 1, 0, 9, 4}, 16, 32},
    {{300, 211, 0, 97, 400, 5, 1, 250}, 64, 128},
};

void check(const Case& c, Activation act, bool bias, torch::ScalarType dtype) {
  const int64_t E = static_cast<int64_t>(c.counts.size());
  int64_t A = 0;
  for (auto n : c.counts) A += n;
  torch::manual_seed(1000 + A);
  GroupedExperts fused(GroupedExpertsOptions(E, c.d, c.h).activation(act).bias(bias));
  fused->to(dtype);
  GroupedExperts plain(GroupedExpertsOptions(E, c.d, c.h).activation(act).bias(bias));
  plain->to(dtype);
  {
    torch::NoGradGuard ng;
    auto src = fused->parameters();
    auto dst = plain->parameters();
    for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
  }
  auto x = torch::randn({A, c.d}, torch::dtype(dtype)).requires_grad_(true);
  auto x2 = x.detach().clone().requires_grad_(true);
  auto dy = torch::randn({A, c.d}, torch::dtype(dtype));
  auto y = fused->run(x, c.counts);
  auto y_ref = grouped_mlp_reference(*plain, x2, c.counts);
  ASSERT_TRUE(close(y, y_ref)) << "forward " << to_string(act) << " bias " << bias;
  y.backward(dy);
  y_ref.backward(dy);
  EXPECT_TRUE(close(x.grad(), x2.grad())) << "dx";
  auto pf = fused->named_parameters();
  auto pp = plain->named_parameters();
  for (const auto& kv : pf) {
    const auto& g_ref = pp[kv.key()].grad();
    auto g = kv.value().grad();
    // Experts with no rows get no gradient from the reference (undefined or zero): compare to 0.
    auto expect = g_ref.defined() ? g_ref : torch::zeros_like(kv.value());
    EXPECT_TRUE(close(g, expect)) << "d" << kv.key() << " " << to_string(act);
  }
}

class GroupedExpertsTest
    : public ::testing::TestWithParam<std::tuple<Activation, bool, torch::ScalarType>> {};

TEST_P(GroupedExpertsTest, MatchesPlainReference) {
  auto [act, bias, dtype] = GetParam();
  for (const auto& c : kCases) check(c, act, bias, dtype);
}

INSTANTIATE_TEST_SUITE_P(
    All, GroupedExpertsTest,
    ::testing::Combine(::testing::Values(Activation::kGelu, Activation::kRelu, Activation::kSwiGLU),
                       ::testing::Bool(), ::testing::Values(torch::kFloat64, torch::kFloat32)),
    [](const auto& info) {
      return to_string(std::get<0>(info.param)) + (std::get<1>(info.param) ? "_bias" : "_nobias") +
             (std::get<2>(info.param) == torch::kFloat64 ? "_f64" : "_f32");
    });

TEST(GroupedExperts, RejectsBadSegments) {
  GroupedExperts ex(GroupedExpertsOptions(2, 4, 8));
  auto x = torch::randn({5, 4});
  EXPECT_TRUE(testing::throws_with(
      [&] {
        ex->run(x, {2, 2});
      },
      "segment sizes sum to 4 but there are 5 rows"));
  EXPECT_TRUE(testing::throws_with([&] { ex->run(x, {5}); }, "1 segment sizes for 2 experts"));
  EXPECT_TRUE(testing::throws_with(
      [&] {
        ex->run(torch::randn({5, 4}, torch::kFloat64), {2, 3});
      },
      "differs from the expert"));
}

TEST(GroupedExperts, OutputBiasCanBeLeftToAnotherRank) {
  // add_output_bias(false) drops b2: outputs differ from the full expert by exactly b2[e].
  torch::manual_seed(3);
  GroupedExperts full(GroupedExpertsOptions(2, 4, 6).bias(true));
  GroupedExperts part(GroupedExpertsOptions(2, 4, 6).bias(true).add_output_bias(false));
  {
    torch::NoGradGuard ng;
    auto src = full->named_parameters();
    for (auto& kv : part->named_parameters()) kv.value().copy_(src[kv.key()]);
  }
  EXPECT_FALSE(part->named_parameters().contains("b2"));
  auto x = torch::randn({5, 4});
  auto diff = full->run(x, {2, 3}) - part->run(x, {2, 3});
  auto expect = torch::cat({full->b2[0].expand({2, 4}), full->b2[1].expand({3, 4})});
  EXPECT_TRUE(close(diff.detach(), expect.detach(), 1e-6));
}

}  // namespace
}  // namespace hybridmoe
