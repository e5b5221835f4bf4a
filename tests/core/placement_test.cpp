// placement_test.cpp — the typed placement values (placement.h): ExpertLayout's names, AdaptiveR
// (value, auto, every step; parsing, printing, refusals), and ExpertPlacement against hand
// computations: S, the valid r, the local experts and storage ep of a table of (W, E) cases, every
// (expert, hidden slice) stored exactly once over the stage, the fixed layout's experts against
// the rank coordinates of parallel.h, and the problems of layouts that cannot hold the experts.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <utility>
#include <vector>

#include "hybridmoe/parallel.h"
#include "hybridmoe/placement.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

using testing::throws_with;

TEST(ExpertLayoutNames, RoundTripAndRefusalNamingTheTextAndTheNames) {
  for (ExpertLayout l : {ExpertLayout::kFixed, ExpertLayout::kAdaptive})
    EXPECT_EQ(parse_expert_layout(to_string(l)), l);
  EXPECT_EQ(to_string(ExpertLayout::kFixed), "fixed");
  EXPECT_EQ(to_string(ExpertLayout::kAdaptive), "adaptive");
  EXPECT_TRUE(throws_with([] { parse_expert_layout("tiled"); },
                          "expert_layout: expected one of \"fixed\", \"adaptive\", got \"tiled\""));
  EXPECT_TRUE(throws_with([] { parse_expert_layout("Fixed"); }, "got \"Fixed\""));
}

TEST(AdaptiveR, ValuesAutoAndEveryStepRoundTrip) {
  EXPECT_EQ(AdaptiveR(), AdaptiveR::value(1));  // the default degree
  for (const AdaptiveR& r : {AdaptiveR::value(0), AdaptiveR::value(1), AdaptiveR::value(12),
                             AdaptiveR::automatic(), AdaptiveR::every_step()})
    EXPECT_EQ(AdaptiveR::parse(r.to_string()), r) << r.to_string();
  EXPECT_EQ(AdaptiveR::value(4).to_string(), "4");
  EXPECT_EQ(AdaptiveR::automatic().to_string(), "auto");
  EXPECT_EQ(AdaptiveR::every_step().to_string(), "every-step");
  const AdaptiveR two = AdaptiveR::parse("2");
  EXPECT_TRUE(two.is_value());
  EXPECT_EQ(two.kind(), AdaptiveR::Kind::kValue);
  EXPECT_EQ(two.value(), 2);
  EXPECT_EQ(AdaptiveR::parse("auto").kind(), AdaptiveR::Kind::kAuto);
  EXPECT_EQ(AdaptiveR::parse("every-step").kind(), AdaptiveR::Kind::kEveryStep);
  EXPECT_FALSE(AdaptiveR::automatic().is_value());
  EXPECT_NE(AdaptiveR::automatic(), AdaptiveR::every_step());
  EXPECT_NE(AdaptiveR::value(0), AdaptiveR::automatic());
  EXPECT_NE(AdaptiveR::value(2), AdaptiveR::value(3));
}

TEST(AdaptiveR, RefusesTextsThatAreNotADegreeNamingThem) {
  for (const char* bad : {"-1", "-2", "x", "", "2x", "1.5", "Auto", "every_step", "auto "})
    EXPECT_TRUE(throws_with([&] { AdaptiveR::parse(bad); },
                            "adaptive_r: expected auto, every-step or an integer >= 0, got \"" +
                                std::string(bad) + "\""))
        << bad;
  EXPECT_TRUE(throws_with([] { AdaptiveR::value(-1); }, "expected an integer >= 0, got -1"));
  EXPECT_TRUE(throws_with([] { AdaptiveR::automatic().value(); }, "\"auto\" is not one value"));
  EXPECT_TRUE(
      throws_with([] { AdaptiveR::every_step().value(); }, "\"every-step\" is not one value"));
}

// One hand-computed adaptive case: W ranks, E experts → S, L, storage ep, the valid r.
struct AdaptiveCase {
  int64_t W, E, S, L, storage_ep;
  std::vector<int64_t> valid_r;
};

TEST(ExpertPlacement, AdaptiveLayoutMatchesHandComputedTable) {
  // S = W / E ranks per expert when E < W, else 1; L = E / W whole experts per rank when
  // E >= W, else 1 (a slice); r ∈ {0} ∪ divisors(S); storage ep = min(E, W).
  const std::vector<AdaptiveCase> cases = {
      {1, 1, 1, 1, 1, {0, 1}},
      {1, 4, 1, 4, 1, {0, 1}},
      {2, 4, 1, 2, 2, {0, 1}},
      {2, 8, 1, 4, 2, {0, 1}},
      {4, 4, 1, 1, 4, {0, 1}},
      {4, 2, 2, 1, 2, {0, 1, 2}},
      {4, 1, 4, 1, 1, {0, 1, 2, 4}},
      {8, 4, 2, 1, 4, {0, 1, 2}},
      {8, 2, 4, 1, 2, {0, 1, 2, 4}},
      {8, 1, 8, 1, 1, {0, 1, 2, 4, 8}},
      {6, 2, 3, 1, 2, {0, 1, 3}},
      {6, 3, 2, 1, 3, {0, 1, 2}},
      {12, 1, 12, 1, 1, {0, 1, 2, 3, 4, 6, 12}},
      {16, 64, 1, 4, 16, {0, 1}},
  };
  for (const auto& c : cases) {
    const auto p = expert_placement(ExpertLayout::kAdaptive, c.W, c.E);
    const std::string what = "W=" + std::to_string(c.W) + " E=" + std::to_string(c.E);
    EXPECT_TRUE(p.is_adaptive()) << what;
    EXPECT_TRUE(p.fits()) << what << ": " << p.problem;
    EXPECT_EQ(p.stage_size, c.W) << what;
    EXPECT_EQ(p.num_experts, c.E) << what;
    EXPECT_EQ(p.shards, c.S) << what;
    EXPECT_EQ(p.local_experts, c.L) << what;
    EXPECT_EQ(p.storage_ep, c.storage_ep) << what;
    EXPECT_EQ(p.valid_r, c.valid_r) << what;
    for (int64_t r = -1; r <= c.W + 1; ++r) {
      const bool valid = std::find(c.valid_r.begin(), c.valid_r.end(), r) != c.valid_r.end();
      EXPECT_EQ(p.is_valid_r(r), valid) << what << " r=" << r;
    }
    // Every (expert, hidden slice) is stored by exactly one rank, each rank L experts' slices.
    std::map<std::pair<int64_t, int64_t>, int64_t> holders;
    for (int64_t i = 0; i < c.W; ++i) {
      const int64_t first = p.first_local_expert(i), q = p.hidden_slice(i);
      EXPECT_GE(q, 0) << what;
      EXPECT_LT(q, c.S) << what;
      for (int64_t e = first; e < first + c.L; ++e) ++holders[{e, q}];
      // The storage of moe_adaptive.cpp: whole experts [i L, (i + 1) L), or slice i % S of
      // expert i / S.
      EXPECT_EQ(first, c.E >= c.W ? i * c.L : i / c.S) << what << " rank " << i;
    }
    EXPECT_EQ(static_cast<int64_t>(holders.size()), c.E * c.S) << what;
    for (const auto& [key, n] : holders) {
      EXPECT_EQ(n, 1) << what << " expert " << key.first << " slice " << key.second;
      EXPECT_LT(key.first, c.E) << what;
    }
  }
  EXPECT_EQ(expert_placement(ExpertLayout::kAdaptive, 8, 1).valid_r_text(), "0, 1, 2, 4, 8");
}

TEST(ExpertPlacement, FixedLayoutMatchesTheRankCoordinates) {
  // Stage rank i is read as edp × ep × etp (etp fastest): its experts are those of its ep
  // coordinate, its hidden slice its etp coordinate (parallel.h's rank_coords).
  for (const ParallelConfig& c : {ParallelConfig{1, 4, 1, 4, 1}, ParallelConfig{2, 2, 1, 2, 2},
                                  ParallelConfig{2, 4, 1, 2, 2}, ParallelConfig{1, 8, 1, 2, 1},
                                  ParallelConfig{4, 2, 1, 1, 4}, ParallelConfig{1, 1, 1, 1, 1}}) {
    const int64_t E = 8, W = c.stage_size();
    const auto p = expert_placement(ExpertLayout::kFixed, W, E, c.ep, c.etp);
    EXPECT_TRUE(p.fits()) << c.to_string() << ": " << p.problem;
    EXPECT_FALSE(p.is_adaptive());
    EXPECT_EQ(p.shards, c.etp) << c.to_string();
    EXPECT_EQ(p.local_experts, E / c.ep) << c.to_string();
    EXPECT_EQ(p.storage_ep, c.ep) << c.to_string();
    EXPECT_TRUE(p.valid_r.empty()) << c.to_string();
    EXPECT_FALSE(p.is_valid_r(0));
    EXPECT_FALSE(p.is_valid_r(1));
    for (int64_t i = 0; i < W; ++i) {
      const RankCoords rc = rank_coords(c, i);
      EXPECT_EQ(p.first_local_expert(i), rc.ep * (E / c.ep)) << c.to_string() << " rank " << i;
      EXPECT_EQ(p.hidden_slice(i), rc.etp) << c.to_string() << " rank " << i;
    }
  }
}

TEST(ExpertPlacement, ProblemsNameWhatCannotHoldTheExperts) {
  auto problem = [](ExpertLayout l, int64_t W, int64_t E, int64_t ep, int64_t etp) {
    return expert_placement(l, W, E, ep, etp).problem;
  };
  EXPECT_EQ(problem(ExpertLayout::kFixed, 4, 8, 2, 2), "");
  EXPECT_NE(problem(ExpertLayout::kFixed, 4, 6, 4, 1).find("ep = 4 must divide the 6 experts"),
            std::string::npos);
  EXPECT_NE(problem(ExpertLayout::kFixed, 6, 8, 4, 1).find("must divide the stage's 6 ranks"),
            std::string::npos);
  EXPECT_NE(problem(ExpertLayout::kAdaptive, 4, 4, 2, 1).find("needs ep = 1 and etp = 1"),
            std::string::npos);
  EXPECT_NE(problem(ExpertLayout::kAdaptive, 4, 4, 1, 2).find("got ep = 1, etp = 2"),
            std::string::npos);
  const std::vector<std::pair<int64_t, int64_t>> not_dividing = {{4, 3}, {6, 4}, {4, 6}, {3, 2}};
  for (const auto& [W, E] : not_dividing)
    EXPECT_NE(problem(ExpertLayout::kAdaptive, W, E, 1, 1).find("to divide the other"),
              std::string::npos)
        << W << " " << E;
  EXPECT_TRUE(throws_with([] { expert_placement(ExpertLayout::kFixed, 4, 0); }, "E = 0"));
  EXPECT_TRUE(throws_with([] { expert_placement(ExpertLayout::kAdaptive, 0, 4); }, "W = 0"));
  const auto p = expert_placement(ExpertLayout::kAdaptive, 8, 2);  // S = 4
  EXPECT_EQ(p.check_hidden(24), "");
  EXPECT_NE(p.check_hidden(6).find("6 does not split into S = 4"), std::string::npos);
  EXPECT_EQ(expert_placement(ExpertLayout::kFixed, 4, 4, 2, 2).check_hidden(6), "");
  EXPECT_NE(expert_placement(ExpertLayout::kFixed, 4, 4, 2, 2).check_hidden(7), "");
  EXPECT_TRUE(throws_with([&] { p.first_local_expert(8); }, "stage rank 8 is outside"));
}

}  // namespace
}  // namespace hybridmoe
