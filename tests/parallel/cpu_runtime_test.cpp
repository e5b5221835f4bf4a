// cpu_runtime_test.cpp — the process's CPU set-up: one thread pool (intra-op threads set, BLAS
// single-threaded beside them), and the large-buffer cache (a freed large block handed out again,
// small ones left to LibTorch, the limit honoured, data intact).
#include <gtest/gtest.h>

#include <ATen/Parallel.h>

#include "hybridmoe/cpu_runtime.h"
#include "kernels/cpu/blas_threads.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

TEST(CpuThreads, OnePoolWithSeveralThreadsBlasKeptWithOne) {
  const int before = at::get_num_threads();
  CpuThreads t = configure_cpu_threads(2);
  EXPECT_EQ(t.intra_op, 2);
  EXPECT_EQ(at::get_num_threads(), 2);
  EXPECT_EQ(t.blas_controllable, kernels::blas_threads_controllable());
  if (t.blas_controllable) {
    EXPECT_EQ(t.blas, 1) << describe(t);
    t = configure_cpu_threads(1, 3);
    EXPECT_EQ(t.intra_op, 1);
    EXPECT_EQ(t.blas, 3) << describe(t);
    EXPECT_NE(describe(t).find("BLAS 3 threads"), std::string::npos) << describe(t);
    configure_cpu_threads(1, 1);
  }
  EXPECT_TRUE(testing::throws_with([] { configure_cpu_threads(0); }, "got 0"));
  EXPECT_TRUE(testing::throws_with([] { configure_cpu_threads(1, -1); }, "got -1"));
  EXPECT_TRUE(testing::throws_with([] { default_intra_op_threads(0); }, "got 0"));
  EXPECT_GE(default_intra_op_threads(1), 1);
  EXPECT_GE(default_intra_op_threads(1000), 1);
  at::set_num_threads(before);
}

TEST(CpuBufferCache, ReusesLargeFreedBlocksWithinTheLimit) {
  EXPECT_FALSE(cpu_buffer_cache_stats().installed);
  install_cpu_buffer_cache(/*max_cached_bytes=*/int64_t{64} << 20, /*min_bytes=*/int64_t{1} << 20);
  ASSERT_TRUE(cpu_buffer_cache_stats().installed);
  // 1. A large block freed and asked for again (same size, and up to 1.25x smaller): the same
  //    memory, counted as reused.
  void* first = nullptr;
  {
    auto t = torch::ones({1 << 20}, torch::kFloat32);  // 4 MiB
    first = t.data_ptr();
  }
  EXPECT_EQ(cpu_buffer_cache_stats().cached_bytes, int64_t{4} << 20);
  const int64_t reused = cpu_buffer_cache_stats().reused;
  {
    auto t = torch::empty({(1 << 20) - 1000}, torch::kFloat32);
    EXPECT_EQ(t.data_ptr(), first);
    EXPECT_EQ(cpu_buffer_cache_stats().reused, reused + 1);
    EXPECT_EQ(cpu_buffer_cache_stats().cached_bytes, 0);
    // Results computed in reused memory are right.
    t.fill_(2.0);
    EXPECT_EQ(t.sum().item<double>(), 2.0 * ((1 << 20) - 1000));
  }
  // 2. Much smaller requests do not take it; small ones never enter the cache.
  {
    auto half = torch::empty({1 << 18}, torch::kFloat32);  // 1 MiB: a fresh block
    EXPECT_NE(half.data_ptr(), first);
    auto small = torch::empty({1000}, torch::kFloat32);
  }
  EXPECT_EQ(cpu_buffer_cache_stats().cached_bytes, (int64_t{4} << 20) + (int64_t{1} << 20));
  // 3. The limit: lowering it frees held blocks, largest first; blocks over it are not kept.
  install_cpu_buffer_cache(int64_t{2} << 20, int64_t{1} << 20);
  EXPECT_EQ(cpu_buffer_cache_stats().cached_bytes, int64_t{1} << 20);
  { auto big = torch::empty({1 << 21}, torch::kFloat32); }  // 8 MiB, over the limit once freed
  EXPECT_LE(cpu_buffer_cache_stats().cached_bytes, int64_t{2} << 20);
  EXPECT_TRUE(testing::throws_with([] { install_cpu_buffer_cache(-1); }, "got -1"));
  EXPECT_TRUE(testing::throws_with([] { install_cpu_buffer_cache(1 << 20, 100); }, "got 100"));
}

}  // namespace
}  // namespace hybridmoe
