// group_kind.h — the kinds of process groups a rank belongs to (GroupKind), how a module
// declares the group over which its parameters' gradients are summed (GradientGroupDeclarer), and
// which of its parameters are split over tp (TensorParallelShards).
// Light: no c10d, so single-process modules (gates, experts) can declare both.
#pragma once

#include <string>
#include <vector>

#include <c10/util/Optional.h>

namespace hybridmoe {

/// The kinds of groups a rank belongs to, in the order ParallelGroups::build creates them.
enum class GroupKind { kWorld, kStage, kTp, kDp, kPp, kEtp, kEp, kEdp, kSlice };
std::string to_string(GroupKind kind);
const std::vector<GroupKind>& all_group_kinds();

/// A module that declares over which group the gradients of its parameters — its own and its
/// children's — are summed in data-parallel training; nullopt: they have no replicas and are not
/// synchronized. GroupedDataParallel (grouped_dp.h) reads the declarations of a module tree;
/// parameters outside every declaring module are reduced over dp, and the innermost declaring
/// module wins.
///
/// Example:
///   struct MyRouterImpl : torch::nn::Cloneable<MyRouterImpl>, GradientGroupDeclarer {
///     c10::optional<GroupKind> gradient_group() const override { return GroupKind::kStage; }
///   };
class GradientGroupDeclarer {
 public:
  virtual ~GradientGroupDeclarer() = default;
  virtual c10::optional<GroupKind> gradient_group() const = 0;
};

/// A module some of whose own parameters are split over tp (each tp rank holds a different
/// part), so that their gradients are not summed over tp and the global gradient norm counts
/// every part once (gradient_replicas, train.h). Parameters of modules that do not declare
/// themselves here are whole on every tp rank.
///
/// Example:
///   for (auto& name : column_linear->tp_shard_names()) ...   // {"weight", "bias"} when tp > 1
class TensorParallelShards {
 public:
  virtual ~TensorParallelShards() = default;
  /// Names (relative to the module) of its parameters split over tp; empty when tp = 1.
  virtual std::vector<std::string> tp_shard_names() const = 0;
};

}  // namespace hybridmoe
