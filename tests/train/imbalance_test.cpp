// imbalance_test.cpp — the routing imbalance the trainer logs per step (metrics.jsonl) and per run
// (summary.json): max / mean tokens per expert (the worst MoE layer), per rank, and the time the
// ranks were blocked in the token exchange, against values worked out by hand.
#include <gtest/gtest.h>

#include "train/report.h"

namespace hybridmoe::detail {
namespace {

TEST(Imbalance, StepFiguresAreMaxOverMean) {
  // Layer 0 balanced (1), layer 1 all on expert 0 (4 / 1); ranks computed 1 and 3 rows (3 / 2);
  // blocked 1 ms and 3 ms.
  const auto s = step_imbalance({1, 1, 1, 1, 4, 0, 0, 0}, 2, 4, {1, 3}, {1e-3, 3e-3});
  EXPECT_DOUBLE_EQ(s.expert, 4.0);
  EXPECT_DOUBLE_EQ(s.rank, 1.5);
  EXPECT_DOUBLE_EQ(s.wait_max_ms, 3.0);
  EXPECT_DOUBLE_EQ(s.wait_mean_ms, 2.0);
  EXPECT_EQ(imbalance_json(s),
            "\"imbalance\": {\"expert\": 4, \"rank\": 1.5, \"exchange_wait_ms\": {\"max\": 3, "
            "\"mean\": 2}}");
  // No tokens: 0, not a division by zero.
  const auto none = step_imbalance({0, 0}, 1, 2, {0, 0}, {0, 0});
  EXPECT_EQ(none.expert, 0.0);
  EXPECT_EQ(none.rank, 0.0);
  // A load list that does not match layers x experts is refused.
  EXPECT_THROW(step_imbalance({1, 2, 3}, 2, 2, {1}, {0}), c10::Error);
}

TEST(Imbalance, RunKeepsTheMeanAndTheWorst) {
  Imbalance run;
  run.add(step_imbalance({2, 2}, 1, 2, {1, 1}, {2e-3, 0}));  // 1, 1, wait max 2 ms
  run.add(step_imbalance({3, 1}, 1, 2, {3, 1}, {4e-3, 0}));  // 1.5, 1.5, wait max 4 ms
  EXPECT_EQ(run.steps, 2);
  EXPECT_DOUBLE_EQ(run.expert_sum / run.steps, 1.25);
  EXPECT_DOUBLE_EQ(run.expert_max, 1.5);
  EXPECT_DOUBLE_EQ(run.rank_max, 1.5);
  EXPECT_DOUBLE_EQ(run.wait_max_ms_sum / run.steps, 3.0);
}

}  // namespace
}  // namespace hybridmoe::detail
