// parallel.h — the parallel layout of a run and the process groups of each rank.
//
// Rank order (Megatron): world = pp × dp × tp with tp fastest, then dp, then pp:
//     rank = pp_idx * (dp * tp) + dp_idx * tp + tp_idx.
// Inside each pipeline stage, the same tp × dp ranks are re-read for the experts as
// edp × ep × etp with etp fastest, then ep, then edp (DeepSpeed-TED):
//     stage_local = rank % (tp * dp) = edp_idx * (ep * etp) + ep_idx * etp + etp_idx.
// Groups of a rank: world; stage (its pipeline stage); tp; dp; pp; ep (FastMoE's moe_group: the
// all-to-all of tokens); edp (replicas of the same experts: expert gradients are reduced here);
// etp (expert tensor parallel: an expert's hidden size is split here); slice (ranks whose inputs
// are replicated and sliced before routing: the tp group).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "hybridmoe/dist.h"
#include "hybridmoe/group_kind.h"

namespace hybridmoe {

/// Sizes of the parallel dimensions.
///
/// Example:
///   ParallelConfig c{/*tp=*/2, /*dp=*/2, /*pp=*/1, /*ep=*/2, /*etp=*/1};
///   c.validate(4);            // ok: edp = tp * dp / (ep * etp) = 2
struct ParallelConfig {
  int64_t tp = 1;   ///< tensor parallel (dense layers)
  int64_t dp = 1;   ///< data parallel (dense layers)
  int64_t pp = 1;   ///< pipeline stages
  int64_t ep = 1;   ///< expert parallel: experts are split over ep ranks
  int64_t etp = 1;  ///< expert tensor parallel: 1 or tp

  int64_t world_size() const { return tp * dp * pp; }
  /// Ranks of one pipeline stage (tp * dp).
  int64_t stage_size() const { return tp * dp; }
  /// Expert data parallel: replicas of each expert shard within a stage.
  int64_t edp() const { return ep * etp > 0 ? tp * dp / (ep * etp) : 0; }
  /// "" if valid on world_size ranks, else why not.
  std::string check(int64_t world_size) const;
  /// Raises an error saying why this config is invalid on world_size ranks and listing the valid
  /// ones, if it is invalid.
  void validate(int64_t world_size) const;
  /// "tp2.dp2.pp1.ep2.etp1".
  std::string to_string() const;
  bool operator==(const ParallelConfig& o) const {
    return tp == o.tp && dp == o.dp && pp == o.pp && ep == o.ep && etp == o.etp;
  }
};

/// Every valid config on world_size ranks (tp, dp, pp, ep, etp ascending), for messages and tests.
std::vector<ParallelConfig> valid_parallel_configs(int64_t world_size);

/// A rank's coordinates in the dense (pp, dp, tp) and the expert (edp, ep, etp) decompositions.
struct RankCoords {
  int64_t pp = 0, dp = 0, tp = 0;
  int64_t edp = 0, ep = 0, etp = 0;
};
RankCoords rank_coords(const ParallelConfig& config, int64_t world_rank);

/// The world ranks of the group of `kind` that contains world_rank, in group-rank order
/// (ascending). A pure function of the config.
///
/// Example:
///   group_ranks({2, 2, 1, 2, 1}, GroupKind::kDp, 1)  // {1, 3}
std::vector<int64_t> group_ranks(const ParallelConfig& config, GroupKind kind, int64_t world_rank);

/// Every group of `kind` (a partition of the world), ordered by first rank.
std::vector<std::vector<int64_t>> all_group_ranks(const ParallelConfig& config, GroupKind kind);

/// Whether world ranks `ranks` lie on more than one node, nodes holding `ranks_per_node`
/// consecutive ranks each (node of rank r = r / ranks_per_node).
bool crosses_nodes(const std::vector<int64_t>& ranks, int64_t ranks_per_node);

/// The kinds of `config` (in all_group_kinds() order, the world left out) with at least one group
/// that crosses nodes of `ranks_per_node` ranks. Megatron's rank order keeps tp and etp groups
/// inside a node whenever tp divides ranks_per_node.
///
/// Example:
///   kinds_crossing_nodes({2, 2, 1, 2, 1}, 2)  // {kStage, kDp, kEdp}
std::vector<GroupKind> kinds_crossing_nodes(const ParallelConfig& config, int64_t ranks_per_node);

/// "2 nodes x 2 ranks; crossing nodes: stage dp edp" (or "...: none", or "1 node" when
/// config's world fits in one node), for `hmoe verify` and `hmoe plan`.
std::string node_crossing_text(const ParallelConfig& config, int64_t ranks_per_node);

/// The process groups of one rank for a config.
///
/// Example:
///   auto world = dist::init();
///   ParallelConfig config{2, 2, 1, 2, 1};
///   auto groups = ParallelGroups::build(config, *world);
///   torch::Tensor y = dist::all_to_all(x, out_splits, in_splits, groups.ep);
struct ParallelGroups {
  ParallelConfig config;
  int64_t world_rank = 0;
  /// Ranks of one node (nodes hold consecutive world ranks): the launcher's local world size for
  /// build(config, world), else the world size (one node).
  int64_t ranks_per_node = 1;
  dist::Group world, stage, tp, dp, pp, ep, edp, etp, slice;

  const dist::Group& get(GroupKind kind) const;
  dist::Group& get(GroupKind kind);
  RankCoords coords() const { return rank_coords(config, world_rank); }

  /// Creates every group of this rank. Collective over the world: every rank calls it with the
  /// same config. Groups with the same members share one process group.
  static ParallelGroups build(const ParallelConfig& config, dist::World& world);

  /// The same from a world group and a store the caller already has. `tag` keeps the store keys
  /// of separate builds apart (give each build on the same store its own tag). The groups' Gloo
  /// process groups bind to world_group.gloo_device (the world's device).
  static ParallelGroups build(const ParallelConfig& config, const dist::Group& world_group,
                              const dist::StorePtr& store, bool use_cuda = false,
                              const std::string& tag = "");

  /// Assembles the groups from process groups the caller already has (e.g. handed in from
  /// Python). `groups` must hold the world group and may hold any other kind; a missing kind is
  /// a size-1 group only if the config makes it size 1, else an error. Every given group's ranks
  /// must equal group_ranks(config, kind, world_rank).
  static ParallelGroups assemble(const ParallelConfig& config,
                                 std::map<GroupKind, dist::Group> groups);
};

}  // namespace hybridmoe
