// exchange_test.cpp — the expert-major order of the exchange (expert_major_index) on one process:
// rows of several blocks regrouped expert by expert, its inverse and the rows per expert. The
// exchange itself on several ranks is in exchange_dist_test.cpp.
#include <gtest/gtest.h>

#include "hybridmoe/detail/exchange.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

using testing::identical;

TEST(ExpertExchange, ExpertMajorIndexOrdersExpertThenBlock) {
  // Two blocks of three experts: block 0 = {2, 0, 1} rows, block 1 = {1, 3, 0} rows.
  auto order = expert_major_index({{2, 0, 1}, {1, 3, 0}});
  const auto& index = order.index;
  const auto& per_expert = order.per_expert;
  // Block layout rows: b0e0: 0,1  b0e2: 2  b1e0: 3  b1e1: 4,5,6.
  EXPECT_TRUE(identical(index, torch::tensor(std::vector<int64_t>{0, 1, 3, 4, 5, 6, 2})));
  EXPECT_TRUE(identical(order.inverse, torch::tensor(std::vector<int64_t>{0, 1, 6, 2, 3, 4, 5})));
  EXPECT_EQ(per_expert, (std::vector<int64_t>{3, 3, 1}));
}

}  // namespace
}  // namespace hybridmoe
