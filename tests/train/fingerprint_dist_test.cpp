// fingerprint_dist_test.cpp — the configuration fingerprint: what it covers, the error text naming
// keys, values and ranks, and ranks with a different seed or step count stopping on every rank
// before the first step.
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

std::string value_of(const ConfigEntries& entries, const std::string& name) {
  for (const auto& [n, v] : entries) {
    if (n == name) return v;
  }
  return "(absent)";
}

/// What check_config_agreement (or train) raised on this rank; "" if nothing.
std::string agreement_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

TEST(Fingerprint, CoversEveryKeyThatMustAgreeAndTheVersion) {
  const TrainConfig c;
  const ConfigEntries e = fingerprint_entries(c);
  EXPECT_EQ(e.size(), train_config_keys().size() - per_rank_config_keys().size() + 2);
  EXPECT_EQ(value_of(e, "seed"), "1234");
  EXPECT_EQ(value_of(e, "steps"), "1200");
  EXPECT_EQ(value_of(e, "hmoe_version"), kVersion);
  EXPECT_EQ(value_of(e, "libtorch_version"), compat::torch_version());
  EXPECT_EQ(value_of(e, "progress"), "(absent)");

  TrainConfig other = c;
  other.progress = false;  // rank 0's display only
  other.log_every = 1;
  EXPECT_EQ(config_fingerprint(fingerprint_entries(other)), config_fingerprint(e));
  other.seed = 99;
  EXPECT_NE(config_fingerprint(fingerprint_entries(other)), config_fingerprint(e));
  other = c;
  other.lr = 0.03;
  EXPECT_NE(config_fingerprint(fingerprint_entries(other)), config_fingerprint(e));
}

TEST(Fingerprint, DifferencesNameKeysValuesAndRanks) {
  TrainConfig c;
  std::vector<ConfigEntries> ranks(4, fingerprint_entries(c));
  EXPECT_EQ(describe_config_differences(ranks), "");
  c.seed = 99;
  ranks[3] = fingerprint_entries(c);
  EXPECT_EQ(describe_config_differences(ranks),
            "configuration differs across ranks: seed = 1234 on ranks 0,1,2 but 99 on rank 3");
  ranks[3] = fingerprint_entries(TrainConfig());
  c = TrainConfig();
  c.lr = 0.03;
  c.steps = 10;
  ranks[1] = fingerprint_entries(c);
  const std::string lr1 = get_config_value(c, "lr");
  c.lr = 0.1;
  ranks[2] = fingerprint_entries(c);
  // Keys in train_config_keys() order; values in order of their lowest rank, rank 0's first.
  EXPECT_EQ(describe_config_differences(ranks),
            "configuration differs across ranks: steps = 1200 on ranks 0,3 but 10 on ranks 1,2; "
            "lr = " +
                get_config_value(TrainConfig(), "lr") + " on ranks 0,3 but " + lr1 +
                " on rank 1, " + get_config_value(c, "lr") + " on rank 2");
  ranks[2].pop_back();  // a key one rank lacks
  EXPECT_NE(
      describe_config_differences(ranks).find("libtorch_version = " + compat::torch_version() +
                                              " on ranks 0,1,3 but (missing) on rank 2"),
      std::string::npos);
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
