// grouped_gemm_test.cpp — the grouped GEMMs against one plain product per segment (float64,
// relative error <= 1e-12), on one thread and on several (where the segments run side by side with
// single-threaded BLAS calls), over shapes from one row to many uneven experts with empty ones;
// and the BLAS thread guard's nesting.
#include <gtest/gtest.h>

#include <numeric>

#include <ATen/Parallel.h>

#include "kernels/cpu/blas_threads.h"
#include "kernels/cpu/grouped_gemm.h"
#include "support/compare.h"

namespace hybridmoe::kernels {
namespace {

using hybridmoe::testing::close;

constexpr double kTol = 1e-12;

// Sets the intra-op thread count for one scope.
struct Threads {
  int previous = at::get_num_threads();
  explicit Threads(int n) { at::set_num_threads(n); }
  ~Threads() { at::set_num_threads(previous); }
};

struct Shape {
  std::vector<int64_t> counts;
  int64_t k, n;
};
// Sizes chosen so that the larger ones pass the parallel threshold (2^20 multiply-adds).
const std::vector<Shape> kShapes = {{{1}, 3, 2},
                                    {{0, 4, 0}, 8, 5},
                                    {{300}, 64, 96},
                                    {{0, 0, 700}, 48, 40},
                                    {{37, 0, 250, 1, 90}, 64, 80},
                                    {std::vector<int64_t>(16, 48), 32, 48},
                                    {{513, 0, 255, 2}, 128, 64}};

int64_t rows_of(const std::vector<int64_t>& counts) {
  return std::accumulate(counts.begin(), counts.end(), int64_t{0});
}

torch::Tensor randn(std::vector<int64_t> size, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randn(size, gen, torch::kFloat64);
}

TEST(GroupedMm, MatchesPerSegmentProductsOnOneAndSeveralThreads) {
  for (int threads : {1, 2, 3}) {
    Threads scope(threads);
    for (const auto& s : kShapes) {
      const int64_t A = rows_of(s.counts), E = s.counts.size();
      for (bool trans_b : {false, true}) {
        for (bool with_bias : {false, true}) {
          for (bool accumulate : {false, true}) {
            auto a = randn({A, s.k}, 1 + A);
            auto b = trans_b ? randn({E, s.n, s.k}, 2) : randn({E, s.k, s.n}, 2);
            auto bias = with_bias ? randn({E, s.n}, 3) : torch::Tensor();
            auto start = randn({A, s.n}, 4);
            auto out = accumulate ? start.clone() : torch::full({A, s.n}, 7.0, torch::kFloat64);
            grouped_mm(a, b, s.counts, trans_b, bias, out, accumulate);
            // Reference: one product per segment.
            auto want = accumulate ? start.clone() : torch::zeros({A, s.n}, torch::kFloat64);
            int64_t row = 0;
            for (int64_t e = 0; e < E; ++e) {
              const int64_t c = s.counts[e];
              if (c > 0) {
                auto prod = a.narrow(0, row, c).mm(trans_b ? b[e].t() : b[e]);
                if (with_bias) prod = prod + bias[e];
                want.narrow(0, row, c).add_(prod);
              }
              row += c;
            }
            EXPECT_TRUE(close(out, want, kTol))
                << threads << " threads, " << A << " rows, trans_b " << trans_b << ", bias "
                << with_bias << ", accumulate " << accumulate;
          }
        }
      }
    }
  }
}

TEST(GroupedMmTn, AndSegmentSumMatchPerSegmentReductions) {
  for (int threads : {1, 2, 3}) {
    Threads scope(threads);
    for (const auto& s : kShapes) {
      const int64_t A = rows_of(s.counts), E = s.counts.size();
      auto a = randn({A, s.k}, 5 + A), c = randn({A, s.n}, 6);
      auto got = grouped_mm_tn(a, c, s.counts);
      auto sums = segment_sum(c, s.counts);
      auto want = torch::zeros({E, s.k, s.n}, torch::kFloat64);
      auto want_sums = torch::zeros({E, s.n}, torch::kFloat64);
      int64_t row = 0;
      for (int64_t e = 0; e < E; ++e) {
        const int64_t n = s.counts[e];
        if (n > 0) {
          want[e].copy_(a.narrow(0, row, n).t().mm(c.narrow(0, row, n)));
          want_sums[e].copy_(c.narrow(0, row, n).sum(0));
        }
        row += n;
      }
      EXPECT_TRUE(close(got, want, kTol)) << threads << " threads, " << A << " rows";
      EXPECT_TRUE(close(sums, want_sums, kTol)) << threads << " threads, " << A << " rows";
    }
  }
}

TEST(GroupedMm, RefusesCountsThatDoNotCoverTheRows) {
  auto a = torch::zeros({5, 3}, torch::kFloat64), b = torch::zeros({2, 3, 4}, torch::kFloat64);
  auto out = torch::empty({5, 4}, torch::kFloat64);
  EXPECT_TRUE(hybridmoe::testing::throws_with(
      [&] {
        grouped_mm(a, b, {2, 2}, false, {}, out);
      },
      "sum to 4 but there are 5 rows"));
  EXPECT_TRUE(hybridmoe::testing::throws_with(
      [&] {
        grouped_mm_tn(a, a, {6, -1});
      },
      "must be >= 0, got -1"));
}

TEST(SingleThreadedBlas, LowersTheCountWhileHeldAndRestoresItAfterTheLastHolder) {
  if (!blas_threads_controllable())
    GTEST_SKIP() << "this BLAS's thread count cannot be set (not OpenBLAS)";
  const int before = blas_num_threads();
  ASSERT_TRUE(set_blas_num_threads(2));
  {
    SingleThreadedBlas outer;
    EXPECT_EQ(blas_num_threads(), 1);
    {
      SingleThreadedBlas inner;
      EXPECT_EQ(blas_num_threads(), 1);
    }
    EXPECT_EQ(blas_num_threads(), 1) << "the outer holder still holds it";
  }
  EXPECT_EQ(blas_num_threads(), 2);
  set_blas_num_threads(before);
  EXPECT_THROW(set_blas_num_threads(0), c10::Error);
}

}  // namespace
}  // namespace hybridmoe::kernels
