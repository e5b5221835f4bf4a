// overlap_dist_test.cpp — the overlapped (chunked, pipelined) token exchange equals the plain one:
// output, input gradient and every parameter gradient of the distributed layer with
// a2a_overlap_degree D in {2, 3, 4} against D = 1, over several layouts (expert tensor parallel
// etp = 2 included), activations, with and without biases, skewed routing and a rank without
// tokens, and the adaptive layout at every kind of r. Also: D is refused where it is not supported
// (the fixed layout with ep = 1, one process).
//
// What is exact and what is not: routing (tokens per expert) and the number of chunks sent are
// exact by construction and compared exactly. The float results are equal to rounding only:
// chunking changes the row count of every expert GEMM, and a BLAS may treat a block's edge rows
// with another micro-kernel (OpenBLAS's AVX2 kernels do; its AVX-512 ones happen not to), so an
// element can differ in its last bits. They are compared within kChunkTol, relative to the
// tensor's largest magnitude (float64); a wrong chunk, order or scale is off by O(1).
#include <gtest/gtest.h>

#include <optional>

#include "hybridmoe/collectives.h"
#include "hybridmoe/comm_stats.h"
#include "hybridmoe/moe.h"
#include "support/compare.h"
#include "support/multirank.h"

namespace hybridmoe {
namespace {

using testing::RankContext;
using testing::rel_err;
using testing::run_on_ranks;
using testing::throws_with;

// Rounding of a few GEMMs of different row blocking (float64 ulp 2.2e-16, ~45 ulps of headroom).
constexpr double kChunkTol = 1e-14;

struct Case {
  ParallelConfig layout;
  int64_t experts;
  Activation activation;
  bool bias;
  bool skew;
  std::optional<int64_t> adaptive_r = std::nullopt;  // set: expert_layout kAdaptive at this r
};

// One forward and backward; returns output, input gradient and every parameter gradient.
std::vector<std::pair<std::string, torch::Tensor>> step(MoE& moe, const torch::Tensor& x_in,
                                                        const torch::Tensor& dy) {
  auto x = x_in.clone().requires_grad_(true);
  auto out = moe(x);
  ((out.output * dy).sum() + out.aux_loss).backward();
  std::vector<std::pair<std::string, torch::Tensor>> result = {
      {"tokens_per_expert", out.stats.tokens_per_expert},
      {"output", out.output.detach()},
      {"dx", x.grad()}};
  for (auto& kv : moe->named_parameters()) result.emplace_back(kv.key(), kv.value().grad());
  return result;
}

void run_case(RankContext& ctx, const Case& c) {
  auto groups = std::make_shared<ParallelGroups>(ParallelGroups::build(c.layout, ctx.world));
  const int64_t d = 8, h = 32;
  auto opts = MoEOptions(d, c.experts)
                  .d_hidden(h)
                  .top_k(std::min<int64_t>(2, c.experts))
                  .activation(c.activation)
                  .bias(c.bias);
  torch::manual_seed(3);
  MoE full(opts);
  if (c.adaptive_r) opts.expert_layout(ExpertLayout::kAdaptive).adaptive_r(*c.adaptive_r);
  full->to(torch::kFloat64);
  if (c.skew) {
    torch::NoGradGuard ng;
    auto w = full->gate->named_parameters()["weight"];
    w.zero_();
    w[0].fill_(5.0);
  }
  const int64_t dp_rank = groups->coords().dp;  // inputs are replicated over tp
  const int64_t tokens = dp_rank == 1 ? 0 : 9 + 2 * dp_rank;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(21 + dp_rank);
  auto x = torch::randn({tokens, d}, gen, torch::kFloat64).abs();
  auto dy = torch::randn({tokens, d}, gen, torch::kFloat64);
  std::vector<std::vector<std::pair<std::string, torch::Tensor>>> results;
  for (int64_t D : {1, 2, 3, 4}) {
    MoE moe(MoEOptions(opts).a2a_overlap_degree(D), groups);
    moe->to(torch::kFloat64);
    moe->load_shard_from(*full);
    dist::reset_comm_stats();
    results.push_back(step(moe, x, dy));
    if (D > 1) {
      // The chunks really went through the asynchronous exchange: D outbound, D returns (none at
      // adaptive r = 0, which exchanges no tokens).
      const int64_t chunks = c.adaptive_r == 0 ? 0 : D;
      auto stats = dist::comm_stats();
      EXPECT_EQ(stats["overlap_all_to_all"].calls, 2 * chunks);  // forward and backward
      EXPECT_EQ(stats["overlap_all_to_all(back)"].calls, 2 * chunks);
    }
  }
  const std::string what = c.layout.to_string() + " E=" + std::to_string(c.experts) + " " +
                           to_string(c.activation) + (c.bias ? " bias" : "") +
                           (c.skew ? " skew" : "") +
                           (c.adaptive_r ? " adaptive r=" + std::to_string(*c.adaptive_r) : "");
  for (size_t k = 1; k < results.size(); ++k) {
    ASSERT_EQ(results[k].size(), results[0].size());
    for (size_t i = 0; i < results[0].size(); ++i) {
      const auto& [name, expect] = results[0][i];
      const auto& got = results[k][i].second;
      ASSERT_EQ(expect.defined(), got.defined()) << what << " " << name;
      if (!expect.defined()) continue;
      if (!expect.is_floating_point()) {
        EXPECT_TRUE(torch::equal(got, expect)) << what << " D=" << k + 1 << " " << name;
        continue;
      }
      ASSERT_EQ(got.sizes(), expect.sizes()) << what << " D=" << k + 1 << " " << name;
      EXPECT_LE(rel_err(got, expect), kChunkTol)
          << what << " D=" << k + 1 << " " << name << " differs by "
          << (got - expect).abs().max().item<double>();
    }
  }
}

TEST(OverlapMoE, ChunkedExchangeEqualsPlainOnFourRanks) {
  run_on_ranks(4, [](RankContext& ctx) {
    run_case(ctx, {{1, 4, 1, 4, 1}, 8, Activation::kGelu, true, false});
    run_case(ctx, {{1, 4, 1, 4, 1}, 4, Activation::kSwiGLU, false, true});
    run_case(ctx, {{2, 2, 1, 2, 1}, 4, Activation::kRelu, true, false});
    run_case(ctx, {{1, 4, 1, 2, 1}, 8, Activation::kSwiGLU, true, false});
    // ep 2 x etp 2: each chunk is all-gathered over etp and its partial outputs reduce-scattered.
    run_case(ctx, {{2, 2, 1, 2, 2}, 4, Activation::kGelu, true, false});
    run_case(ctx, {{2, 2, 1, 2, 2}, 8, Activation::kSwiGLU, true, true});
    run_case(ctx, {{2, 2, 1, 2, 2}, 2, Activation::kRelu, false, false});
  });
}

TEST(OverlapMoE, ChunkedAdaptiveExchangeEqualsPlain) {
  // The adaptive layout over a stage of 4 ranks: E = 4 (whole experts, S = 1, r = 1), E = 2
  // (each expert sliced over S = 2 ranks; r = 1 gathers the slices in pairs, r = 2 sends each
  // row to both slices and sums), E = 1 (S = 4, r = 2), and r = 0 (no token exchange to chunk).
  run_on_ranks(4, [](RankContext& ctx) {
    run_case(ctx, {{1, 4, 1, 1, 1}, 4, Activation::kGelu, true, false, 1});
    run_case(ctx, {{1, 4, 1, 1, 1}, 2, Activation::kSwiGLU, true, true, 1});
    run_case(ctx, {{1, 4, 1, 1, 1}, 2, Activation::kGelu, true, false, 2});
    run_case(ctx, {{2, 2, 1, 1, 1}, 1, Activation::kRelu, false, false, 2});
    run_case(ctx, {{1, 4, 1, 1, 1}, 2, Activation::kGelu, true, false, 0});
  });
}

TEST(OverlapMoE, ChunkedExchangeEqualsPlainOnTwoRanks) {
  run_on_ranks(2, [](RankContext& ctx) {
    run_case(ctx, {{1, 2, 1, 2, 1}, 2, Activation::kGelu, true, true});
  });
}

TEST(OverlapMoE, RefusesUnsupportedCombinations) {
  run_on_ranks(4, [](RankContext& ctx) {
    auto ep1 = std::make_shared<ParallelGroups>(
        ParallelGroups::build(ParallelConfig{1, 4, 1, 1, 1}, ctx.world));
    auto opts = MoEOptions(4, 4).d_hidden(8).a2a_overlap_degree(2);
    EXPECT_TRUE(throws_with([&] { MoE(opts, ep1); }, "got ep=1 etp=1"));
    EXPECT_TRUE(throws_with([&] { MoE(MoEOptions(opts).a2a_overlap_degree(0), ep1); },
                            "a2a_overlap_degree must be >= 1"));
    EXPECT_TRUE(throws_with([&] { MoE{opts}; }, "single-process layer"));
  });
}

}  // namespace
}  // namespace hybridmoe
