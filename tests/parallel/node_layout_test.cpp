// node_layout_test.cpp — layouts over several nodes without processes: which groups cross nodes
// (checked against the node of every member, written out by hand for a few layouts), Megatron's
// order keeping tp and etp inside a node whenever tp divides the ranks per node, and the node
// variables of torchrun, OpenMPI and Slurm with several ranks per node.
#include <gtest/gtest.h>

#include "hybridmoe/dist.h"
#include "hybridmoe/parallel.h"

namespace hybridmoe {
namespace {

using Kinds = std::vector<GroupKind>;

TEST(NodeLayout, CrossesNodes) {
  EXPECT_FALSE(crosses_nodes({0, 1}, 2));
  EXPECT_TRUE(crosses_nodes({1, 2}, 2));
  EXPECT_TRUE(crosses_nodes({0, 2}, 2));
  EXPECT_FALSE(crosses_nodes({4, 5, 6, 7}, 4));
  EXPECT_FALSE(crosses_nodes({3}, 1));
  EXPECT_THROW(crosses_nodes({0, 1}, 0), c10::Error);
}

TEST(NodeLayout, CrossingKindsByHand) {
  // tp2.dp2.ep2 on 2 nodes x 2: tp {0,1} {2,3} and ep {0,1} {2,3} stay; dp {0,2} and edp cross.
  EXPECT_EQ(kinds_crossing_nodes({2, 2, 1, 2, 1}, 2),
            (Kinds{GroupKind::kStage, GroupKind::kDp, GroupKind::kEdp}));
  // dp4.ep4 on 2 nodes x 2: ep {0,1,2,3} crosses, edp and tp are single ranks.
  EXPECT_EQ(kinds_crossing_nodes({1, 4, 1, 4, 1}, 2),
            (Kinds{GroupKind::kStage, GroupKind::kDp, GroupKind::kEp}));
  // pp2 of tp2 on 2 nodes x 2: each stage is a node, only pp crosses.
  EXPECT_EQ(kinds_crossing_nodes({2, 1, 2, 1, 2}, 2), (Kinds{GroupKind::kPp}));
  // Everything on one node.
  EXPECT_TRUE(kinds_crossing_nodes({2, 2, 1, 2, 1}, 4).empty());
  EXPECT_EQ(node_crossing_text({2, 2, 1, 2, 1}, 4), "1 node");
  EXPECT_EQ(node_crossing_text({2, 2, 1, 2, 1}, 2),
            "2 nodes x 2 ranks; crossing nodes: stage dp edp");
  EXPECT_EQ(node_crossing_text({2, 1, 1, 1, 2}, 1),
            "2 nodes x 1 ranks; crossing nodes: stage tp etp slice");
  EXPECT_EQ(node_crossing_text({1, 1, 2, 1, 1}, 1), "2 nodes x 1 ranks; crossing nodes: pp");
}

// Megatron's order: tp is fastest, and etp is 1 or tp, so both stay inside a node whenever tp
// divides the node; checked for every valid layout of 2..16 ranks and every node size dividing
// the world, against the node of every member of every group.
TEST(NodeLayout, TpAndEtpStayInsideANodeWhenTheyFit) {
  int64_t checked = 0;
  for (int64_t world = 2; world <= 16; ++world) {
    for (int64_t per_node = 1; per_node <= world; ++per_node) {
      if (world % per_node != 0) continue;
      for (const auto& c : valid_parallel_configs(world)) {
        const auto crossing = kinds_crossing_nodes(c, per_node);
        auto crosses = [&](GroupKind kind) {
          for (const auto& g : all_group_ranks(c, kind)) {
            for (int64_t r : g) {
              if (r / per_node != g.front() / per_node) return true;
            }
          }
          return false;
        };
        for (GroupKind kind : all_group_kinds()) {
          if (kind == GroupKind::kWorld) continue;
          const bool listed = std::find(crossing.begin(), crossing.end(), kind) != crossing.end();
          EXPECT_EQ(listed, crosses(kind)) << c.to_string() << " " << to_string(kind);
        }
        if (per_node % c.tp == 0) {
          EXPECT_FALSE(crosses(GroupKind::kTp)) << c.to_string() << " per node " << per_node;
          EXPECT_FALSE(crosses(GroupKind::kEtp)) << c.to_string() << " per node " << per_node;
          ++checked;
        }
      }
    }
  }
  EXPECT_GT(checked, 100);
}

TEST(NodeEnv, TorchrunNodes) {
  const auto e = dist::parse_env({{"RANK", "5"},
                                  {"WORLD_SIZE", "8"},
                                  {"LOCAL_RANK", "1"},
                                  {"LOCAL_WORLD_SIZE", "4"},
                                  {"GROUP_RANK", "1"}});
  EXPECT_EQ(e.node_rank, 1);
  EXPECT_EQ(e.local_world_size, 4);
  // Without GROUP_RANK the node follows from the rank.
  EXPECT_EQ(
      dist::parse_env(
          {{"RANK", "6"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "0"}, {"LOCAL_WORLD_SIZE", "2"}})
          .node_rank,
      3);
  // LOCAL_RANK alone (no ranks per node): one node, the local rank kept.
  const auto one = dist::parse_env({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}});
  EXPECT_EQ(one.node_rank, 0);
  EXPECT_EQ(one.local_world_size, 4);
  EXPECT_EQ(one.local_rank, 1);
}

TEST(NodeEnv, SlurmAndOpenMpiNodes) {
  const auto s = dist::parse_env({{"SLURM_PROCID", "5"},
                                  {"SLURM_NTASKS", "6"},
                                  {"SLURM_LOCALID", "2"},
                                  {"SLURM_TASKS_PER_NODE", "3(x2)"},
                                  {"SLURM_NODEID", "1"}});
  EXPECT_EQ(s.local_world_size, 3);
  EXPECT_EQ(s.node_rank, 1);
  const auto m = dist::parse_env({{"OMPI_COMM_WORLD_RANK", "2"},
                                  {"OMPI_COMM_WORLD_SIZE", "4"},
                                  {"OMPI_COMM_WORLD_LOCAL_RANK", "0"},
                                  {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}});
  EXPECT_EQ(m.node_rank, 1);
}

std::string env_error(const dist::EnvMap& env) {
  try {
    dist::parse_env(env);
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

TEST(NodeEnv, InconsistentNodesAreRefused) {
  EXPECT_NE(env_error({{"RANK", "1"}, {"WORLD_SIZE", "6"}, {"LOCAL_WORLD_SIZE", "4"}})
                .find("ranks per node (local world size) should be >= 1 and divide the world "
                      "size 6, got 4"),
            std::string::npos);
  EXPECT_NE(env_error({{"RANK", "5"},
                       {"WORLD_SIZE", "8"},
                       {"LOCAL_RANK", "1"},
                       {"LOCAL_WORLD_SIZE", "4"},
                       {"GROUP_RANK", "0"}})
                .find("rank 5 should be local rank 1 of node 1 (nodes of 4 consecutive ranks), "
                      "but the torchrun variables say local rank 1 of node 0"),
            std::string::npos);
  EXPECT_NE(
      env_error(
          {{"RANK", "2"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "2"}, {"LOCAL_WORLD_SIZE", "2"}})
          .find("local rank should be in [0, 2), got 2"),
      std::string::npos);
}

}  // namespace
}  // namespace hybridmoe
