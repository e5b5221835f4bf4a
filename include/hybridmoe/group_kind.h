// group_kind.h — the kinds of process groups a rank belongs to (GroupKind), and how a module
// declares the group over which its parameters' gradients are summed (GradientGroupDeclarer).
// Light: no c10d, so single-process modules (gates, experts) can declare their group.
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

}  // namespace hybridmoe
