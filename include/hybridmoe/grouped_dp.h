// grouped_dp.h — GroupedDataParallel (FastMoE's DistributedGroupedDataParallel): each parameter
// carries a tag naming the group its gradient is reduced over — stage (the gate), dp (dense
// parameters), edp (experts), or none — and the wrapper broadcasts parameters at start, then,
// after each backward, sums gradients per tag in coalesced buckets.
#pragma once

#include <map>
#include <memory>
#include <string>

#include <torch/torch.h>

#include "hybridmoe/parallel.h"

namespace hybridmoe {

/// Options of GroupedDataParallel.
struct GroupedDataParallelOptions {
  /// Broadcast every parameter from rank 0 of its tag group at construction.
  TORCH_ARG(bool, broadcast_at_start) = true;
  /// Upper bound of one all-reduce bucket.
  TORCH_ARG(int64_t, bucket_bytes) = int64_t{25} << 20;
};

/// The gradient group of every parameter of a module tree, by its name in `module`: the group
/// declared by the innermost module that declares one (GradientGroupDeclarer, group_kind.h;
/// nullopt: not synchronized), else dp. The tags GroupedDataParallel starts from.
///
/// Example:
///   auto tags = gradient_group_tags(*moe);   // {"gate.weight": kStage, "experts.w1": kEdp, ...}
std::map<std::string, c10::optional<GroupKind>> gradient_group_tags(torch::nn::Module& module);

/// Tags parameters and keeps their replicas in sync.
/// Default tags, read from the module tree: a parameter gets the gradient group declared by the
/// innermost module that declares one (GradientGroupDeclarer, group_kind.h: gates → stage,
/// experts → edp, or none for an adaptive-layout MoE, whose expert slices have no replicas);
/// every other parameter → dp. A parameter replicated over tp (not split) must start equal
/// on the tp ranks (same seed): broadcast covers its tag group only.
///
/// Example:
///   GroupedDataParallel gdp(model.ptr(), groups);
///   loss.backward();
///   gdp.reduce_gradients(1.0 / groups->dp.size());   // each rank's loss is its local mean
///   optimizer.step();
class GroupedDataParallel {
 public:
  GroupedDataParallel(std::shared_ptr<torch::nn::Module> module,
                      std::shared_ptr<const ParallelGroups> groups,
                      GroupedDataParallelOptions options = GroupedDataParallelOptions());

  /// Overrides a parameter's tag; nullopt means "not synchronized".
  void set_tag(const std::string& name, c10::optional<GroupKind> kind);
  /// The tag of every parameter, by its name in the module.
  const std::map<std::string, c10::optional<GroupKind>>& tags() const { return tags_; }

  /// Makes each parameter equal to its value on rank 0 of its tag group.
  void broadcast_parameters();
  /// Sums each gradient over its tag group, then multiplies every gradient (untagged ones too)
  /// by `scale`. A tagged parameter without a gradient on this rank contributes zeros (so every
  /// rank issues the same collectives).
  void reduce_gradients(double scale = 1.0);

 private:
  std::vector<std::pair<GroupKind, std::vector<torch::Tensor>>> by_group(bool grads);

  std::shared_ptr<torch::nn::Module> module_;
  std::shared_ptr<const ParallelGroups> groups_;
  GroupedDataParallelOptions options_;
  std::map<std::string, c10::optional<GroupKind>> tags_;
};

}  // namespace hybridmoe
