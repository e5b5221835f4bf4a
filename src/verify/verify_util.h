// verify_util.h — small helpers shared by the layout proofs (verify.cpp, verify_pipeline.cpp).
#pragma once

#include <algorithm>

#include <torch/torch.h>

#include "hybridmoe/collectives.h"
#include "hybridmoe/dispatcher.h"
#include "hybridmoe/grouped_dp.h"
#include "hybridmoe/verify.h"
#include "hybridmoe/zero.h"

namespace hybridmoe::detail {

/// The groups of a layout on the first layout.world_size() ranks of `world` (null on the other
/// ranks, which take no further part), on the world's nodes of ranks_per_node ranks (0: the
/// launcher's LOCAL_WORLD_SIZE). Collective over the world.
inline std::shared_ptr<ParallelGroups> verify_groups(dist::World& world,
                                                     const ParallelConfig& layout, int64_t run_id,
                                                     int64_t ranks_per_node) {
  const int64_t w = layout.world_size();
  layout.validate(w);
  TORCH_CHECK(w <= world.size(), "verify: layout ", layout.to_string(), " needs ", w,
              " ranks, the world has ", world.size());
  std::vector<int64_t> members(w);
  for (int64_t r = 0; r < w; ++r) members[r] = r;
  const std::string tag = "verify" + std::to_string(run_id);
  auto sub = world.new_group(tag, members);
  if (!sub.is_member()) return nullptr;
  auto groups = std::make_shared<ParallelGroups>(
      ParallelGroups::build(layout, sub, world.store(), false, tag));
  // The layout's ranks are the world's first ones: its nodes are the world's.
  groups->ranks_per_node = ranks_per_node > 0 ? ranks_per_node : world.env().local_world_size;
  return groups;
}

/// The token exchange algorithm the layout's MoE runs with options.a2a_algorithm (over ep, or
/// over the stage with the adaptive expert layout), for the row.
inline std::string verify_a2a_algorithm(const VerifyOptions& o, const ParallelGroups& g) {
  const auto& group = o.expert_layout == ExpertLayout::kAdaptive ? g.stage : g.ep;
  return to_string(exchange_algorithm(o.a2a_algorithm, group.ranks, g.ranks_per_node, group.name));
}

/// The relative tolerance of a proof: options.tolerance, or 1e-9 (float64) / 1e-4 (float32).
inline double verify_tolerance(const VerifyOptions& o) {
  return o.tolerance > 0 ? o.tolerance : (o.dtype == torch::kFloat64 ? 1e-9 : 1e-4);
}

/// The layout side's Adam: GroupedDataParallel's all-reduce then torch's Adam, or with
/// zero_stage 1 the same Adam as ZeroAdamW, its state sharded over each tag group in buckets and
/// tiles small enough to cut parameters.
class VerifyOptimizer {
 public:
  VerifyOptimizer(const std::shared_ptr<torch::nn::Module>& net,
                  const std::shared_ptr<const ParallelGroups>& groups, const VerifyOptions& o)
      : gdp_(net, groups), adam_(net->parameters(), torch::optim::AdamOptions(o.lr)) {
    if (o.zero_stage > 0) {
      auto named = net->named_parameters().pairs();
      ZeroParamGroup all{{}, AdamWHyper().lr(o.lr).weight_decay(0.0)};
      for (const auto& kv : named) all.names.push_back(kv.first);
      zero_ = std::make_unique<ZeroAdamW>(
          named, gdp_.tags(), std::vector<ZeroParamGroup>{all}, groups,
          ZeroAdamWOptions().zero_stage(o.zero_stage).bucket_bytes(256).tile_mb(1e-4));
    }
  }
  void zero_grad() { adam_.zero_grad(); }
  /// Reduces the gradients (each rank's loss being its local mean over dp) and steps.
  void step(int64_t dp) {
    if (zero_) {
      zero_->reduce_gradients(1.0 / static_cast<double>(dp));
      zero_->step();
    } else {
      gdp_.reduce_gradients(1.0 / static_cast<double>(dp));
      adam_.step();
    }
  }

 private:
  GroupedDataParallel gdp_;
  torch::optim::Adam adam_;
  std::unique_ptr<ZeroAdamW> zero_;
};

}  // namespace hybridmoe::detail
