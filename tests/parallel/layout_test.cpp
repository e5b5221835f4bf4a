// layout_test.cpp — the parallel layout without processes: config validation and its messages,
// rank coordinates, and the exact rank lists of every group for several configs (written out by
// hand from the ordering: tp fastest, then dp, then pp; inside a stage etp, then ep, then edp).
#include <algorithm>
#include <array>

#include <gtest/gtest.h>

#include "hybridmoe/parallel.h"

namespace hybridmoe {
namespace {

using Lists = std::vector<std::vector<int64_t>>;

std::string error_of(const ParallelConfig& c, int64_t world) {
  try {
    c.validate(world);
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

void expect_groups(const ParallelConfig& c, GroupKind kind, const Lists& expected) {
  EXPECT_EQ(all_group_ranks(c, kind), expected) << c.to_string() << " " << to_string(kind);
  // Each rank's own list is the group that contains it.
  for (const auto& g : expected) {
    for (int64_t r : g) EXPECT_EQ(group_ranks(c, kind, r), g) << to_string(kind) << " rank " << r;
  }
}

TEST(Layout, Tp2Dp2Ep2Etp1) {
  const ParallelConfig c{2, 2, 1, 2, 1};
  c.validate(4);
  EXPECT_EQ(c.edp(), 2);
  expect_groups(c, GroupKind::kWorld, {{0, 1, 2, 3}});
  expect_groups(c, GroupKind::kStage, {{0, 1, 2, 3}});
  expect_groups(c, GroupKind::kTp, {{0, 1}, {2, 3}});
  expect_groups(c, GroupKind::kSlice, {{0, 1}, {2, 3}});
  expect_groups(c, GroupKind::kDp, {{0, 2}, {1, 3}});
  expect_groups(c, GroupKind::kPp, {{0}, {1}, {2}, {3}});
  expect_groups(c, GroupKind::kEtp, {{0}, {1}, {2}, {3}});
  expect_groups(c, GroupKind::kEp, {{0, 1}, {2, 3}});
  expect_groups(c, GroupKind::kEdp, {{0, 2}, {1, 3}});
}

TEST(Layout, Tp2Dp2Ep2Etp2IsTed) {
  // DeepSpeed-TED's figure: 0 and 2 hold the same TP shard of different experts (all-to-all).
  const ParallelConfig c{2, 2, 1, 2, 2};
  c.validate(4);
  EXPECT_EQ(c.edp(), 1);
  expect_groups(c, GroupKind::kTp, {{0, 1}, {2, 3}});
  expect_groups(c, GroupKind::kDp, {{0, 2}, {1, 3}});
  expect_groups(c, GroupKind::kEtp, {{0, 1}, {2, 3}});
  expect_groups(c, GroupKind::kEp, {{0, 2}, {1, 3}});
  expect_groups(c, GroupKind::kEdp, {{0}, {1}, {2}, {3}});
}

TEST(Layout, Tp2Dp2Pp2Ep2Etp2) {
  const ParallelConfig c{2, 2, 2, 2, 2};
  c.validate(8);
  expect_groups(c, GroupKind::kStage, {{0, 1, 2, 3}, {4, 5, 6, 7}});
  expect_groups(c, GroupKind::kTp, {{0, 1}, {2, 3}, {4, 5}, {6, 7}});
  expect_groups(c, GroupKind::kDp, {{0, 2}, {1, 3}, {4, 6}, {5, 7}});
  expect_groups(c, GroupKind::kPp, {{0, 4}, {1, 5}, {2, 6}, {3, 7}});
  expect_groups(c, GroupKind::kEtp, {{0, 1}, {2, 3}, {4, 5}, {6, 7}});
  expect_groups(c, GroupKind::kEp, {{0, 2}, {1, 3}, {4, 6}, {5, 7}});
  expect_groups(c, GroupKind::kEdp, {{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}});
}

TEST(Layout, Dp8Ep4) {
  const ParallelConfig c{1, 8, 1, 4, 1};
  c.validate(8);
  EXPECT_EQ(c.edp(), 2);
  expect_groups(c, GroupKind::kTp, {{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}});
  expect_groups(c, GroupKind::kDp, {{0, 1, 2, 3, 4, 5, 6, 7}});
  expect_groups(c, GroupKind::kEp, {{0, 1, 2, 3}, {4, 5, 6, 7}});
  expect_groups(c, GroupKind::kEdp, {{0, 4}, {1, 5}, {2, 6}, {3, 7}});
}

TEST(Layout, Tp2Dp4Ep4Etp1) {
  const ParallelConfig c{2, 4, 1, 4, 1};
  c.validate(8);
  expect_groups(c, GroupKind::kTp, {{0, 1}, {2, 3}, {4, 5}, {6, 7}});
  expect_groups(c, GroupKind::kDp, {{0, 2, 4, 6}, {1, 3, 5, 7}});
  expect_groups(c, GroupKind::kEp, {{0, 1, 2, 3}, {4, 5, 6, 7}});
  expect_groups(c, GroupKind::kEdp, {{0, 4}, {1, 5}, {2, 6}, {3, 7}});
  expect_groups(c, GroupKind::kEtp, {{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}});
}

TEST(Layout, Tp4Dp2Ep2Etp4) {
  const ParallelConfig c{4, 2, 1, 2, 4};
  c.validate(8);
  expect_groups(c, GroupKind::kTp, {{0, 1, 2, 3}, {4, 5, 6, 7}});
  expect_groups(c, GroupKind::kEtp, {{0, 1, 2, 3}, {4, 5, 6, 7}});
  expect_groups(c, GroupKind::kDp, {{0, 4}, {1, 5}, {2, 6}, {3, 7}});
  expect_groups(c, GroupKind::kEp, {{0, 4}, {1, 5}, {2, 6}, {3, 7}});
  expect_groups(c, GroupKind::kEdp, {{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}});
}

TEST(Layout, Tp2Pp4Ep2) {
  const ParallelConfig c{2, 1, 4, 2, 1};
  c.validate(8);
  expect_groups(c, GroupKind::kStage, {{0, 1}, {2, 3}, {4, 5}, {6, 7}});
  expect_groups(c, GroupKind::kPp, {{0, 2, 4, 6}, {1, 3, 5, 7}});
  expect_groups(c, GroupKind::kDp, {{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}});
  expect_groups(c, GroupKind::kEp, {{0, 1}, {2, 3}, {4, 5}, {6, 7}});
  expect_groups(c, GroupKind::kEdp, {{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}});
}

TEST(Layout, RankCoords) {
  const ParallelConfig c{2, 2, 2, 2, 1};
  const RankCoords x = rank_coords(c, 7);  // stage 1, local 3 = dp 1 * 2 + tp 1
  EXPECT_EQ(x.pp, 1);
  EXPECT_EQ(x.dp, 1);
  EXPECT_EQ(x.tp, 1);
  EXPECT_EQ(x.edp, 1);  // local 3 = edp 1 * (ep 2 * etp 1) + ep 1
  EXPECT_EQ(x.ep, 1);
  EXPECT_EQ(x.etp, 0);
  EXPECT_THROW(rank_coords(c, 8), c10::Error);
}

TEST(Layout, EveryValidConfigPartitionsTheWorld) {
  for (int64_t world : {1, 2, 3, 4, 6, 8}) {
    for (const auto& c : valid_parallel_configs(world)) {
      for (GroupKind kind : all_group_kinds()) {
        std::vector<int64_t> seen(world, 0);
        for (const auto& g : all_group_ranks(c, kind)) {
          for (int64_t r : g) ++seen[r];
        }
        for (int64_t r = 0; r < world; ++r) {
          EXPECT_EQ(seen[r], 1) << c.to_string() << " " << to_string(kind) << " rank " << r;
        }
      }
      // The expert decomposition re-reads the stage: etp * ep * edp = tp * dp.
      EXPECT_EQ(c.etp * c.ep * c.edp(), c.tp * c.dp) << c.to_string();
    }
  }
}

TEST(Layout, ValidConfigsCounts) {
  EXPECT_EQ(valid_parallel_configs(1).size(), 1u);
  // On 2 ranks: pp2; dp2 with ep 1|2; tp2 with (ep1,etp1) (ep2,etp1) (ep1,etp2).
  const auto two = valid_parallel_configs(2);
  EXPECT_EQ(two.size(), 6u);
  const auto eight = valid_parallel_configs(8);
  auto has = [&](ParallelConfig c) {
    return std::find(eight.begin(), eight.end(), c) != eight.end();
  };
  // The layouts issue 4 asks for (pp = 1).
  for (auto [tp, dp, ep, etp] : std::vector<std::array<int64_t, 4>>{
           {1, 8, 8, 1}, {2, 2, 2, 1}, {2, 2, 2, 2}, {2, 2, 4, 1}, {4, 2, 2, 4}, {2, 4, 4, 1}}) {
    EXPECT_TRUE(has({tp, dp, 8 / (tp * dp), ep, etp})) << tp << dp << ep << etp;
  }
  EXPECT_FALSE(has({4, 2, 1, 2, 2}));  // etp must be 1 or tp
  EXPECT_FALSE(has({2, 2, 2, 4, 2}));  // ep * etp = 8 does not divide tp * dp = 4
}

TEST(Layout, ValidationMessages) {
  const std::string wrong_world = error_of({3, 1, 1, 1, 1}, 4);
  EXPECT_NE(wrong_world.find("tp * dp * pp = 3 but the world has 4 ranks"), std::string::npos)
      << wrong_world;
  EXPECT_NE(wrong_world.find("tp=2 dp=2 pp=1 ep=2 etp=1"), std::string::npos) << wrong_world;
  EXPECT_NE(wrong_world.find("tp=1 dp=4 pp=1 ep=4 etp=1"), std::string::npos) << wrong_world;
  EXPECT_EQ(wrong_world.find("tp=3"), std::string::npos) << wrong_world;

  const std::string bad_etp = error_of({4, 2, 1, 1, 2}, 8);
  EXPECT_NE(bad_etp.find("etp should be 1 or tp (4), got 2"), std::string::npos) << bad_etp;
  EXPECT_NE(bad_etp.find("tp=4 dp=2 pp=1 ep=2 etp=4"), std::string::npos) << bad_etp;

  const std::string bad_ep = error_of({2, 2, 1, 3, 1}, 4);
  EXPECT_NE(bad_ep.find("ep * etp = 3 should divide the 4 ranks of a stage"), std::string::npos)
      << bad_ep;

  const std::string zero = error_of({0, 4, 1, 1, 1}, 4);
  EXPECT_NE(zero.find("every size should be >= 1"), std::string::npos) << zero;

  EXPECT_EQ(error_of({2, 2, 1, 2, 2}, 4), "");
  EXPECT_EQ(ParallelConfig({2, 2, 1, 2, 1}).to_string(), "tp2.dp2.pp1.ep2.etp1");
}

}  // namespace
}  // namespace hybridmoe
