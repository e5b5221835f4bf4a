// comm_stats_test.cpp — the communication counters (comm_stats.h): per-operation totals, their
// sums under a name filter, and which operations count as the token exchange.
#include <gtest/gtest.h>

#include "hybridmoe/comm_stats.h"

namespace hybridmoe {
namespace {

TEST(CommStats, TotalsPerOperationAndFilteredSums) {
  dist::reset_comm_stats();
  dist::record_comm("all_to_all", 100, 0.5);
  dist::record_comm("all_to_all", 50, 0.25);
  dist::record_comm("overlap_all_to_all(back)", 7, 0.125);
  dist::record_comm("exchange_counts", 8, 0.0625);
  dist::record_comm("all_reduce", 1000, 1.0);
  const auto stats = dist::comm_stats();
  ASSERT_EQ(stats.size(), 4u);
  EXPECT_EQ(stats.at("all_to_all").calls, 2);
  EXPECT_EQ(stats.at("all_to_all").bytes_sent, 150);
  EXPECT_DOUBLE_EQ(stats.at("all_to_all").seconds, 0.75);

  const dist::OpStats all = dist::total_of(stats);
  EXPECT_EQ(all.calls, 5);
  EXPECT_EQ(all.bytes_sent, 1165);
  EXPECT_DOUBLE_EQ(all.seconds, 1.9375);
  const dist::OpStats a2a = dist::total_of(stats, dist::is_token_exchange);
  EXPECT_EQ(a2a.calls, 4);
  EXPECT_EQ(a2a.bytes_sent, 165);
  EXPECT_DOUBLE_EQ(a2a.seconds, 0.9375);

  EXPECT_TRUE(dist::is_token_exchange("overlap_all_to_all"));
  EXPECT_TRUE(dist::is_token_exchange("exchange_counts"));
  EXPECT_FALSE(dist::is_token_exchange("all_gather_rows"));
  EXPECT_FALSE(dist::is_token_exchange("all_gather_counts"));

  dist::reset_comm_stats();
  EXPECT_TRUE(dist::comm_stats().empty());
  EXPECT_EQ(dist::total_of(dist::comm_stats()).calls, 0);
}

}  // namespace
}  // namespace hybridmoe
