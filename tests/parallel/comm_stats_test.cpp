// comm_stats_test.cpp — the communication counters (comm_stats.h): per-operation totals, their
// sums under a name filter, and which operations count as the token exchange.
#include <gtest/gtest.h>

#include "hybridmoe/comm_stats.h"

namespace hybridmoe::dist {
namespace {

TEST(CommStats, TotalsPerOperationAndFilteredSums) {
  reset_comm_stats();
  record_comm("all_to_all", 100, 0.5);
  record_comm("all_to_all", 50, 0.25);
  record_comm("overlap_all_to_all(back)", 7, 0.125);
  record_comm("exchange_counts", 8, 0.0625);
  record_comm("all_reduce", 1000, 1.0);
  const auto stats = comm_stats();
  ASSERT_EQ(stats.size(), 4u);
  EXPECT_EQ(stats.at("all_to_all").calls, 2);
  EXPECT_EQ(stats.at("all_to_all").bytes_sent, 150);
  EXPECT_DOUBLE_EQ(stats.at("all_to_all").seconds, 0.75);

  const OpStats all = total_of(stats);
  EXPECT_EQ(all.calls, 5);
  EXPECT_EQ(all.bytes_sent, 1165);
  EXPECT_DOUBLE_EQ(all.seconds, 1.9375);
  const OpStats a2a = total_of(stats, is_token_exchange);
  EXPECT_EQ(a2a.calls, 4);
  EXPECT_EQ(a2a.bytes_sent, 165);
  EXPECT_DOUBLE_EQ(a2a.seconds, 0.9375);

  EXPECT_TRUE(is_token_exchange("overlap_all_to_all"));
  EXPECT_TRUE(is_token_exchange("exchange_counts"));
  EXPECT_FALSE(is_token_exchange("all_gather_rows"));
  EXPECT_FALSE(is_token_exchange("all_gather_counts"));

  reset_comm_stats();
  EXPECT_TRUE(comm_stats().empty());
  EXPECT_EQ(total_of(comm_stats()).calls, 0);
}

}  // namespace
}  // namespace hybridmoe::dist
