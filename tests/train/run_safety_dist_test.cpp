// run_safety_dist_test.cpp — nothing lost on several ranks: when one rank's checkpoint shard hits a
// full disk, every rank stops with the same error naming that rank, its own error names its file,
// no temporary file stays and `latest` is not written.
#include <gtest/gtest.h>

#include <filesystem>

#include "hybridmoe/train.h"
#include "support/multirank.h"
#include "train/train_fixtures.h"

namespace hybridmoe {
namespace {

namespace fs = std::filesystem;

using testing::error_of;
using testing::has;
using testing::test_dir;
using testing::tiny_config;
using testing::tmp_entries;

// Two ranks; rank 1's shard hits a full disk: both ranks raise the same error naming rank 1, and
// rank 1's own error names its file.
TEST(TrainCheckpoint, OneRanksWriteFailureStopsEveryRank) {
  const auto dir = test_dir("disk_full_rank1");
  if (!testing::is_worker()) fs::remove_all(dir);
  testing::MultiRankOptions o;
  o.extra_env["HMOE_FAULT_WRITE"] = "rank_1.pt";
  testing::run_on_ranks(
      2,
      [&](testing::RankContext& ctx) {
        at::set_num_threads(1);
        auto c = tiny_config(dir);
        c.nproc = c.dp = c.ep = 2;
        c.steps = 2;
        const auto e = error_of([&] { train(c, ctx.world); });
        EXPECT_TRUE(has(e, "failed on rank(s) 1")) << e;
        if (ctx.rank() == 1) {
          EXPECT_TRUE(has(e, "rank_1.pt")) << e;
        }
        if (ctx.rank() == 0) {
          EXPECT_TRUE(tmp_entries(dir).empty());  // rank 0 cleans up
        }
        EXPECT_FALSE(fs::exists(dir + "/checkpoints/latest"));
      },
      o);
}

}  // namespace
}  // namespace hybridmoe
