// fingerprint_test.cpp — the configuration fingerprint on one process: what it covers (every key
// that must agree across ranks, the hmoe and LibTorch versions) and the text naming the keys,
// values and ranks that differ. Ranks that disagree are in fingerprint_dist_test.cpp.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "hybridmoe/detail/fingerprint.h"
#include "hybridmoe/version.h"

namespace hybridmoe {
namespace {

std::string value_of(const ConfigEntries& entries, const std::string& name) {
  for (const auto& [n, v] : entries) {
    if (n == name) return v;
  }
  return "(absent)";
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

}  // namespace
}  // namespace hybridmoe
