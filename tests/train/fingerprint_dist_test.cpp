// fingerprint_dist_test.cpp — the configuration fingerprint on several ranks: ranks with a
// different seed or step count stop on every rank before the first step, naming the key, the
// values and the ranks; agreeing ranks go on.
#include <unistd.h>

#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "hybridmoe/collectives.h"
#include "hybridmoe/detail/fingerprint.h"
#include "hybridmoe/version.h"
#include "support/multirank.h"

namespace hybridmoe {
namespace {

namespace fs = std::filesystem;

constexpr const char* kHint =
    " (every rank must be started with the same configuration and hmoe "
    "build)";

/// What check_config_agreement (or train) raised on this rank; "" if nothing.
std::string agreement_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

TEST(FingerprintMultiRank, DifferentSeedStopsEveryRank) {
  testing::run_on_ranks(3, [](testing::RankContext& ctx) {
    TrainConfig c;
    if (ctx.rank() == 1) c.seed = 99;
    const std::string e = agreement_error([&] { check_config_agreement(c, ctx.world); });
    EXPECT_EQ(e, std::string("configuration differs across ranks: seed = 1234 on ranks 0,2 but 99 "
                             "on rank 1") +
                     kHint)
        << "rank " << ctx.rank();
  });
}

TEST(FingerprintMultiRank, DifferentStepsStopTrainBeforeTheFirstStep) {
  const std::string out = (fs::temp_directory_path() /
                           ("hmoe_fingerprint_test_" + std::to_string(::getuid())) / "steps")
                              .string();
  if (!testing::is_worker()) fs::remove_all(out);
  testing::run_on_ranks(2, [&](testing::RankContext& ctx) {
    TrainConfig c;
    c.d_model = 32;
    c.n_layers = 2;
    c.n_heads = 2;
    c.context = c.seq_len = 32;
    c.batch_size = 8;
    c.micro_batches = 1;
    c.train_lines = 500;
    c.eval_per_task = 2;
    c.nproc = 2;
    c.tp = c.pp = c.etp = 1;
    c.dp = c.ep = 2;
    c.steps = ctx.rank() == 1 ? 5 : 4;
    c.out = out;
    c.progress = ctx.rank() == 0;  // may differ
    int64_t steps_run = 0;
    const std::string e =
        agreement_error([&] { train(c, ctx.world, [&](int64_t, double) { ++steps_run; }); });
    EXPECT_EQ(e, std::string("configuration differs across ranks: steps = 4 on rank 0 but 5 on "
                             "rank 1") +
                     kHint)
        << "rank " << ctx.rank();
    EXPECT_EQ(steps_run, 0);
    EXPECT_FALSE(fs::exists(out)) << "nothing is written before the check";
  });
}

TEST(FingerprintMultiRank, AgreeingRanksGoOn) {
  testing::run_on_ranks(2, [](testing::RankContext& ctx) {
    TrainConfig c;
    c.progress = ctx.rank() == 0;
    EXPECT_NO_THROW(check_config_agreement(c, ctx.world));
    dist::barrier(ctx.group());  // the world still works afterwards
  });
}

}  // namespace
}  // namespace hybridmoe
