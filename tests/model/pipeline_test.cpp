// pipeline_test.cpp — pipeline parallelism on one process: blocks split into contiguous stage
// ranges, and the refusals of impossible splits and unknown schedules. The schedules, activations
// and gradients across stages on several ranks are in pipeline_dist_test.cpp.
#include <gtest/gtest.h>

#include <utility>
#include <vector>

#include "hybridmoe/pipeline.h"

namespace hybridmoe {
namespace {

TEST(Pipeline, StageRangesSplitBlocksContiguously) {
  std::vector<std::pair<int64_t, int64_t>> got;
  for (int64_t s = 0; s < 3; ++s) {
    auto r = stage_block_range(7, 3, s);
    got.emplace_back(r.first, r.count);
  }
  EXPECT_EQ(got, (std::vector<std::pair<int64_t, int64_t>>{{0, 3}, {3, 2}, {5, 2}}));
  EXPECT_THROW(stage_block_range(2, 3, 0), c10::Error);
  EXPECT_THROW(parse_pipeline_schedule("interleaved"), c10::Error);
}

}  // namespace
}  // namespace hybridmoe
