// counting_sort_test.cpp — the counting pass against a stable comparison sort: identical order,
// counts and bin offsets (exact), over key tables from empty to many bins with empty bins and runs
// of equal keys; out-of-range keys refused by name.
#include <gtest/gtest.h>

#include "hybridmoe/detail/compat.h"
#include "kernels/cpu/counting_sort.h"
#include "support/compare.h"

namespace hybridmoe::kernels {
namespace {

TEST(CountingArgsort, EqualsStableArgsortAndBincount) {
  for (auto [n, bins] : std::vector<std::pair<int64_t, int64_t>>{
           {0, 0}, {0, 3}, {1, 1}, {5, 1}, {9, 4}, {100, 3}, {1000, 64}, {4096, 5000}}) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(n * 31 + bins);
    // Keys skewed toward low bins so that some bins are empty and others hold long runs.
    auto keys = bins > 0 ? (torch::rand({n}, gen).pow(3) * bins).to(torch::kInt64)
                         : torch::zeros({0}, torch::kInt64);
    const auto got = counting_argsort(keys, bins, "test");
    EXPECT_TRUE(hybridmoe::testing::identical(got.order, compat::stable_argsort(keys)))
        << n << " keys, " << bins << " bins";
    ASSERT_EQ(static_cast<int64_t>(got.counts.size()), bins);
    ASSERT_EQ(static_cast<int64_t>(got.offsets.size()), bins + 1);
    EXPECT_EQ(got.offsets[0], 0);
    for (int64_t b = 0; b < bins; ++b)
      EXPECT_EQ(got.offsets[b + 1], got.offsets[b] + got.counts[b]) << "bin " << b;
    if (bins > 0) {
      EXPECT_TRUE(hybridmoe::testing::identical(torch::tensor(got.counts, torch::kInt64),
                                                torch::bincount(keys, {}, bins)));
    }
  }
}

TEST(CountingArgsort, RefusesKeysOutOfRangeAndOtherTensors) {
  EXPECT_TRUE(hybridmoe::testing::throws_with(
      [] {
        counting_argsort(torch::tensor({0, 3, 1}, torch::kInt64), 3, "make_plan: expert");
      },
      "make_plan: expert index out of range [0, 3): saw 3"));
  EXPECT_TRUE(hybridmoe::testing::throws_with(
      [] { counting_argsort(torch::tensor({-1}, torch::kInt64), 3, "x"); }, "saw -1"));
  EXPECT_TRUE(hybridmoe::testing::throws_with(
      [] { counting_argsort(torch::tensor({1}, torch::kInt32), 3, "x"); }, "1-D int64 CPU"));
}

}  // namespace
}  // namespace hybridmoe::kernels
