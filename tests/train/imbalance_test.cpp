// imbalance_test.cpp — the routing imbalance the trainer logs per step (metrics.jsonl) and per run
// (summary.json): max / mean tokens per expert (the worst MoE layer), per rank, the time the ranks
// were blocked in the token exchange and their peak resident memory, against values worked out by
// hand.
#include <gtest/gtest.h>

#include "train/report.h"

namespace hybridmoe::detail {
namespace {

TEST(Imbalance, StepFiguresAreMaxOverMean) {
  // Layer 0 balanced (1), layer 1 all on expert 0 (4 / 1); ranks computed 1 and 3 rows (3 / 2);
  // blocked 1 ms and 3 ms.
  // Peaks of 100 and 300 MB.
  const auto s = step_imbalance({1, 1, 1, 1, 4, 0, 0, 0}, 2, 4, {1, 3}, {1e-3, 3e-3}, {100, 300});
  EXPECT_DOUBLE_EQ(s.expert, 4.0);
  EXPECT_DOUBLE_EQ(s.rank, 1.5);
  EXPECT_DOUBLE_EQ(s.wait_max_ms, 3.0);
  EXPECT_DOUBLE_EQ(s.wait_mean_ms, 2.0);
  EXPECT_TRUE(s.memory_known);
  EXPECT_DOUBLE_EQ(s.memory_max_mb, 300.0);
  EXPECT_DOUBLE_EQ(s.memory_mean_mb, 200.0);
  EXPECT_EQ(imbalance_json(s),
            "\"imbalance\": {\"expert\": 4, \"rank\": 1.5, \"exchange_wait_ms\": {\"max\": 3, "
            "\"mean\": 2}, \"peak_rss_mb\": {\"max\": 300, \"mean\": 200}}");
  // No tokens: 0, not a division by zero. A rank that could not measure its peak: unknown.
  const auto none = step_imbalance({0, 0}, 1, 2, {0, 0}, {0, 0}, {100, -1});
  EXPECT_EQ(none.expert, 0.0);
  EXPECT_EQ(none.rank, 0.0);
  EXPECT_FALSE(none.memory_known);
  EXPECT_NE(imbalance_json(none).find("\"peak_rss_mb\": null"), std::string::npos);
  // A load list that does not match layers x experts is refused.
  EXPECT_THROW(step_imbalance({1, 2, 3}, 2, 2, {1}, {0}, {0}), c10::Error);
}

TEST(Imbalance, RunKeepsTheMeanAndTheWorst) {
  Imbalance run;
  run.add(step_imbalance({2, 2}, 1, 2, {1, 1}, {2e-3, 0}, {50, 70}));  // 1, 1, 2 ms, 70 MB
  run.add(step_imbalance({3, 1}, 1, 2, {3, 1}, {4e-3, 0}, {60, 40}));  // 1.5, 1.5, 4 ms, 60 MB
  EXPECT_EQ(run.steps, 2);
  EXPECT_DOUBLE_EQ(run.expert_sum / run.steps, 1.25);
  EXPECT_DOUBLE_EQ(run.expert_max, 1.5);
  EXPECT_DOUBLE_EQ(run.rank_max, 1.5);
  EXPECT_DOUBLE_EQ(run.wait_max_ms_sum / run.steps, 3.0);
  EXPECT_DOUBLE_EQ(run.memory_max_mb, 70.0);
}

}  // namespace
}  // namespace hybridmoe::detail
