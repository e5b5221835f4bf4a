// a2a_algorithm_test.cpp — the option MoEOptions::a2a_algorithm in one process: its names (parse,
// print, an unknown name refused naming the accepted ones), the train configuration key and its
// refusals (with the chunked overlap, with replication), the single-process layer's refusal, and
// the model's single-process options dropping it. The distributed exchange itself is in
// a2a_algorithm_dist_test.cpp.
#include <gtest/gtest.h>

#include "hybridmoe/model_options.h"
#include "hybridmoe/moe.h"
#include "hybridmoe/train.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

using testing::throws_with;

TEST(A2AAlgorithmOption, NamesParseAndPrint) {
  EXPECT_EQ(parse_a2a_algorithm("flat"), A2AAlgorithm::kFlat);
  EXPECT_EQ(parse_a2a_algorithm("hierarchical"), A2AAlgorithm::kHierarchical);
  EXPECT_EQ(to_string(A2AAlgorithm::kFlat), "flat");
  EXPECT_EQ(to_string(A2AAlgorithm::kHierarchical), "hierarchical");
  EXPECT_TRUE(
      throws_with([] { parse_a2a_algorithm("2dh"); },
                  "a2a_algorithm: expected one of \"flat\", \"hierarchical\", got \"2dh\""));
  EXPECT_EQ(MoEOptions(4, 2).a2a_algorithm(), A2AAlgorithm::kFlat);
}

TEST(A2AAlgorithmOption, TrainConfigKey) {
  TrainConfig c;
  EXPECT_EQ(c.a2a_algorithm, A2AAlgorithm::kFlat);
  set_config_value(c, "a2a_algorithm", "hierarchical");
  EXPECT_EQ(c.a2a_algorithm, A2AAlgorithm::kHierarchical);
  EXPECT_EQ(get_config_value(c, "a2a_algorithm"), "hierarchical");
  EXPECT_EQ(c.model_options().moe_options().a2a_algorithm(), A2AAlgorithm::kHierarchical);
  EXPECT_TRUE(throws_with([&] { set_config_value(c, "a2a_algorithm", "tree"); },
                          "expected one of \"flat\", \"hierarchical\", got \"tree\""));
  EXPECT_EQ(check_config(c), "");
  // The combinations that cannot run are refused, naming both keys.
  TrainConfig overlap = c;
  overlap.a2a_overlap_degree = 2;
  EXPECT_NE(check_config(overlap).find("config keys `a2a_algorithm` = \"hierarchical\" and "
                                       "`a2a_overlap_degree` = 2 exclude each other"),
            std::string::npos)
      << check_config(overlap);
  TrainConfig replicate = c;
  replicate.replicate = "auto";
  EXPECT_NE(check_config(replicate).find("config keys `a2a_algorithm` = \"hierarchical\" and "
                                         "`replicate` = \"auto\" exclude each other"),
            std::string::npos)
      << check_config(replicate);
}

TEST(A2AAlgorithmOption, SingleProcessRefusesHierarchical) {
  const auto opts = MoEOptions(4, 2).d_hidden(8).a2a_algorithm(A2AAlgorithm::kHierarchical);
  EXPECT_TRUE(throws_with([&] { MoE layer(opts); },
                          "a2a_algorithm=hierarchical routes the expert-parallel all-to-all "
                          "between nodes, which a single-process layer does not have"));
  // A model's single-process options drop it (as they drop the overlap degree).
  GPTOptions g;
  g.a2a_algorithm(A2AAlgorithm::kHierarchical);
  EXPECT_EQ(g.moe_options().a2a_algorithm(), A2AAlgorithm::kHierarchical);
  EXPECT_EQ(g.single_process().moe_options().a2a_algorithm(), A2AAlgorithm::kFlat);
}

}  // namespace
}  // namespace hybridmoe
