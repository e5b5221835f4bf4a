// groups.cpp — the parallel layout: config validation, the rank lists of every group (pure
// functions of the config), and building or assembling a rank's process groups.
#include <algorithm>
#include <sstream>

#include "hybridmoe/parallel.h"

namespace hybridmoe {
namespace {

std::string join(const std::vector<int64_t>& v) {
  std::ostringstream out;
  for (size_t i = 0; i < v.size(); ++i) out << (i ? "," : "") << v[i];
  return out.str();
}

}  // namespace

// ---- config -----------------------------------------------------------------------------------

std::string ParallelConfig::check(int64_t world) const {
  std::ostringstream why;
  if (tp < 1 || dp < 1 || pp < 1 || ep < 1 || etp < 1) {
    why << "every size should be >= 1";
  } else if (world_size() != world) {
    why << "tp * dp * pp = " << world_size() << " but the world has " << world << " ranks";
  } else if (etp != 1 && etp != tp) {
    why << "etp should be 1 or tp (" << tp << "), got " << etp;
  } else if (stage_size() % (ep * etp) != 0) {
    why << "ep * etp = " << ep * etp << " should divide the " << stage_size()
        << " ranks of a stage (tp * dp)";
  }
  return why.str();
}

void ParallelConfig::validate(int64_t world) const {
  const std::string why = check(world);
  if (why.empty()) return;
  std::ostringstream valid;
  for (const auto& c : valid_parallel_configs(world)) {
    valid << "\n  tp=" << c.tp << " dp=" << c.dp << " pp=" << c.pp << " ep=" << c.ep
          << " etp=" << c.etp;
  }
  TORCH_CHECK(false, "invalid parallel layout ", to_string(), " on ", world, " ranks: ", why,
              ". Valid layouts on ", world,
              " ranks (world = tp*dp*pp; etp = 1 or tp; ep*etp "
              "divides tp*dp):",
              valid.str());
}

std::string ParallelConfig::to_string() const {
  std::ostringstream out;
  out << "tp" << tp << ".dp" << dp << ".pp" << pp << ".ep" << ep << ".etp" << etp;
  return out.str();
}

std::vector<ParallelConfig> valid_parallel_configs(int64_t world) {
  std::vector<ParallelConfig> out;
  for (int64_t tp = 1; tp <= world; ++tp) {
    for (int64_t dp = 1; tp * dp <= world; ++dp) {
      if (world % (tp * dp) != 0) continue;
      const int64_t pp = world / (tp * dp);
      for (int64_t ep = 1; ep <= tp * dp; ++ep) {
        for (int64_t etp : {int64_t{1}, tp}) {
          ParallelConfig c{tp, dp, pp, ep, etp};
          if (!c.check(world).empty()) continue;
          if (!out.empty() && out.back() == c) continue;  // tp == 1: etp 1 and tp coincide
          out.push_back(c);
        }
      }
    }
  }
  return out;
}

// ---- rank lists -------------------------------------------------------------------------------

std::string to_string(GroupKind kind) {
  switch (kind) {
    case GroupKind::kWorld:
      return "world";
    case GroupKind::kStage:
      return "stage";
    case GroupKind::kTp:
      return "tp";
    case GroupKind::kDp:
      return "dp";
    case GroupKind::kPp:
      return "pp";
    case GroupKind::kEtp:
      return "etp";
    case GroupKind::kEp:
      return "ep";
    case GroupKind::kEdp:
      return "edp";
    case GroupKind::kSlice:
      return "slice";
  }
  return "unknown";
}

const std::vector<GroupKind>& all_group_kinds() {
  static const std::vector<GroupKind> kinds = {
      GroupKind::kWorld, GroupKind::kStage, GroupKind::kTp,  GroupKind::kDp,   GroupKind::kPp,
      GroupKind::kEtp,   GroupKind::kEp,    GroupKind::kEdp, GroupKind::kSlice};
  return kinds;
}

RankCoords rank_coords(const ParallelConfig& c, int64_t r) {
  TORCH_CHECK(c.check(c.world_size()).empty(), "rank_coords: invalid layout ", c.to_string(), ": ",
              c.check(c.world_size()));
  TORCH_CHECK(r >= 0 && r < c.world_size(), "rank should be in [0, ", c.world_size(), "), got ", r);
  RankCoords x;
  x.tp = r % c.tp;
  x.dp = (r / c.tp) % c.dp;
  x.pp = r / c.stage_size();
  const int64_t local = r % c.stage_size();
  x.etp = local % c.etp;
  x.ep = (local / c.etp) % c.ep;
  x.edp = local / (c.etp * c.ep);
  return x;
}

std::vector<int64_t> group_ranks(const ParallelConfig& c, GroupKind kind, int64_t r) {
  const RankCoords x = rank_coords(c, r);
  const int64_t base = x.pp * c.stage_size();  // first rank of this stage
  std::vector<int64_t> out;
  switch (kind) {
    case GroupKind::kWorld:
      for (int64_t i = 0; i < c.world_size(); ++i) out.push_back(i);
      break;
    case GroupKind::kStage:
      for (int64_t i = 0; i < c.stage_size(); ++i) out.push_back(base + i);
      break;
    case GroupKind::kTp:
    case GroupKind::kSlice:
      for (int64_t t = 0; t < c.tp; ++t) out.push_back(base + x.dp * c.tp + t);
      break;
    case GroupKind::kDp:
      for (int64_t d = 0; d < c.dp; ++d) out.push_back(base + d * c.tp + x.tp);
      break;
    case GroupKind::kPp:
      for (int64_t p = 0; p < c.pp; ++p) out.push_back(p * c.stage_size() + x.dp * c.tp + x.tp);
      break;
    case GroupKind::kEtp:
      for (int64_t e = 0; e < c.etp; ++e)
        out.push_back(base + x.edp * c.ep * c.etp + x.ep * c.etp + e);
      break;
    case GroupKind::kEp:
      for (int64_t k = 0; k < c.ep; ++k)
        out.push_back(base + x.edp * c.ep * c.etp + k * c.etp + x.etp);
      break;
    case GroupKind::kEdp:
      for (int64_t j = 0; j < c.edp(); ++j)
        out.push_back(base + j * c.ep * c.etp + x.ep * c.etp + x.etp);
      break;
  }
  return out;
}

std::vector<std::vector<int64_t>> all_group_ranks(const ParallelConfig& c, GroupKind kind) {
  std::vector<std::vector<int64_t>> out;
  for (int64_t r = 0; r < c.world_size(); ++r) {
    auto g = group_ranks(c, kind, r);
    if (std::find(out.begin(), out.end(), g) == out.end()) out.push_back(std::move(g));
  }
  std::sort(out.begin(), out.end());
  return out;
}

// ---- nodes ------------------------------------------------------------------------------------

bool crosses_nodes(const std::vector<int64_t>& ranks, int64_t ranks_per_node) {
  TORCH_CHECK(ranks_per_node >= 1, "crosses_nodes: ranks per node should be >= 1, got ",
              ranks_per_node);
  for (int64_t r : ranks) {
    if (r / ranks_per_node != ranks.front() / ranks_per_node) return true;
  }
  return false;
}

std::vector<GroupKind> kinds_crossing_nodes(const ParallelConfig& config, int64_t ranks_per_node) {
  std::vector<GroupKind> out;
  for (GroupKind kind : all_group_kinds()) {
    if (kind == GroupKind::kWorld) continue;
    for (const auto& ranks : all_group_ranks(config, kind)) {
      if (crosses_nodes(ranks, ranks_per_node)) {
        out.push_back(kind);
        break;
      }
    }
  }
  return out;
}

std::string node_crossing_text(const ParallelConfig& config, int64_t ranks_per_node) {
  TORCH_CHECK(ranks_per_node >= 1, "node_crossing_text: ranks per node should be >= 1, got ",
              ranks_per_node);
  const int64_t world = config.world_size();
  if (world <= ranks_per_node) return "1 node";
  std::ostringstream out;
  out << (world + ranks_per_node - 1) / ranks_per_node << " nodes x " << ranks_per_node
      << " ranks; crossing nodes:";
  const auto kinds = kinds_crossing_nodes(config, ranks_per_node);
  for (GroupKind kind : kinds) out << " " << to_string(kind);
  if (kinds.empty()) out << " none";
  return out.str();
}

// ---- ParallelGroups ---------------------------------------------------------------------------

const dist::Group& ParallelGroups::get(GroupKind kind) const {
  return const_cast<ParallelGroups*>(this)->get(kind);
}

dist::Group& ParallelGroups::get(GroupKind kind) {
  switch (kind) {
    case GroupKind::kWorld:
      return world;
    case GroupKind::kStage:
      return stage;
    case GroupKind::kTp:
      return tp;
    case GroupKind::kDp:
      return dp;
    case GroupKind::kPp:
      return pp;
    case GroupKind::kEtp:
      return etp;
    case GroupKind::kEp:
      return ep;
    case GroupKind::kEdp:
      return edp;
    case GroupKind::kSlice:
      return slice;
  }
  C10_THROW_ERROR(Error, c10::str("unknown group kind"));
}

ParallelGroups ParallelGroups::build(const ParallelConfig& config, dist::World& world) {
  const std::string tag = "b" + std::to_string(world.next_generation("parallel_groups"));
  ParallelGroups out = build(config, world.group(), world.store(), world.uses_cuda(), tag);
  out.ranks_per_node = world.env().local_world_size;
  return out;
}

ParallelGroups ParallelGroups::build(const ParallelConfig& config, const dist::Group& world_group,
                                     const dist::StorePtr& store, bool use_cuda,
                                     const std::string& tag) {
  TORCH_CHECK(world_group.is_member() && world_group.pg,
              "ParallelGroups::build: a world group this process belongs to is required");
  TORCH_CHECK(store, "ParallelGroups::build: a store is required");
  const int64_t world_size = world_group.size();
  config.validate(world_size);
  ParallelGroups out;
  out.config = config;
  out.world_rank = world_group.ranks[world_group.rank];
  out.ranks_per_node = world_size;
  out.world = world_group;
  // Every rank builds its group of each kind in the order of all_group_kinds(); groups of a kind
  // partition the world, so members of one group build it at the same step (no deadlock).
  // A kind whose members equal an earlier kind's reuses that process group.
  std::map<std::vector<int64_t>, const dist::Group*> built;
  built[world_group.ranks] = &out.world;
  for (GroupKind kind : all_group_kinds()) {
    if (kind == GroupKind::kWorld) continue;
    const auto ranks = group_ranks(config, kind, out.world_rank);
    dist::Group& g = out.get(kind);
    auto it = built.find(ranks);
    if (it != built.end()) {
      g = *it->second;
      g.name = to_string(kind);
    } else {
      const std::string prefix = "hmoe/pg/" + tag + "/" + to_string(kind) + "[" + join(ranks) + "]";
      g = dist::make_group(store, prefix, to_string(kind), ranks, out.world_rank, world_size,
                           world_group.timeout, use_cuda, world_group.gloo_device);
      built[ranks] = &g;
    }
  }
  return out;
}

ParallelGroups ParallelGroups::assemble(const ParallelConfig& config,
                                        std::map<GroupKind, dist::Group> groups) {
  auto world_it = groups.find(GroupKind::kWorld);
  TORCH_CHECK(world_it != groups.end() && world_it->second.is_member(),
              "ParallelGroups::assemble: the world group is required");
  const dist::Group& world_group = world_it->second;
  config.validate(world_group.size());
  ParallelGroups out;
  out.config = config;
  out.world_rank = world_group.ranks[world_group.rank];
  out.ranks_per_node = world_group.size();
  for (GroupKind kind : all_group_kinds()) {
    const auto ranks = group_ranks(config, kind, out.world_rank);
    dist::Group& g = out.get(kind);
    auto it = groups.find(kind);
    if (it != groups.end()) {
      TORCH_CHECK(it->second.ranks == ranks, "ParallelGroups::assemble: group ", to_string(kind),
                  " lists ranks [", join(it->second.ranks), "] but layout ", config.to_string(),
                  " puts world rank ", out.world_rank, " with [", join(ranks), "]");
      TORCH_CHECK(it->second.is_member() && it->second.ranks[it->second.rank] == out.world_rank,
                  "ParallelGroups::assemble: group ", to_string(kind),
                  " does not place this process at world rank ", out.world_rank);
      g = it->second;
      if (g.name.empty()) g.name = to_string(kind);
      continue;
    }
    // A missing kind: reuse a given group with the same members, or build a group of one.
    const dist::Group* same = nullptr;
    for (const auto& [k, given] : groups) {
      if (given.ranks == ranks) same = &given;
    }
    if (same) {
      g = *same;
      g.name = to_string(kind);
    } else {
      TORCH_CHECK(ranks.size() == 1, "ParallelGroups::assemble: group ", to_string(kind),
                  " of layout ", config.to_string(), " has ", ranks.size(),
                  " ranks and was not given");
      g = dist::make_group(dist::StorePtr(), "", to_string(kind), ranks, out.world_rank,
                           world_group.size(), world_group.timeout, world_group.cuda_pg != nullptr,
                           world_group.gloo_device);
    }
  }
  return out;
}

}  // namespace hybridmoe
