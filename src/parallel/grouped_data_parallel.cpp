// grouped_data_parallel.cpp — see grouped_dp.h.
#include "hybridmoe/collectives.h"
#include "hybridmoe/experts.h"
#include "hybridmoe/gate.h"
#include "hybridmoe/grouped_dp.h"
#include "hybridmoe/moe.h"

#include <set>

namespace hybridmoe {

GroupedDataParallel::GroupedDataParallel(std::shared_ptr<torch::nn::Module> module,
                                         std::shared_ptr<const ParallelGroups> groups,
                                         GroupedDataParallelOptions options)
    : module_(std::move(module)), groups_(std::move(groups)), options_(options) {
  TORCH_CHECK(module_, "GroupedDataParallel: the module is null");
  TORCH_CHECK(groups_, "GroupedDataParallel: the parallel groups are null");
  // 1. Default tags from the module tree (a gate's or experts' parameters keep their tag even
  //    when nested deeper). Experts of an adaptive-layout MoE have no replicas (each slice lives
  //    on one rank of the stage): not synchronized.
  std::set<const torch::nn::Module*> unreplicated;
  for (const auto& item : module_->named_modules())
    if (auto* moe = dynamic_cast<MoEImpl*>(item.value().get()); moe && moe->is_adaptive())
      unreplicated.insert(moe->experts.get());
  for (const auto& item : module_->named_modules()) {
    const auto& prefix = item.key();
    auto* m = item.value().get();
    c10::optional<GroupKind> kind = GroupKind::kDp;
    if (dynamic_cast<GateImpl*>(m)) kind = GroupKind::kStage;
    if (dynamic_cast<ExpertsBase*>(m))
      kind = unreplicated.count(m) ? c10::nullopt : c10::optional<GroupKind>(GroupKind::kEdp);
    const bool special = kind != GroupKind::kDp;
    for (const auto& p : m->named_parameters(/*recurse=*/special)) {
      const auto name = prefix.empty() ? p.key() : prefix + "." + p.key();
      if (special || !tags_.count(name)) tags_[name] = kind;
    }
  }
  // 2. Start from the same values.
  if (options_.broadcast_at_start()) broadcast_parameters();
}

void GroupedDataParallel::set_tag(const std::string& name, c10::optional<GroupKind> kind) {
  TORCH_CHECK(tags_.count(name), "GroupedDataParallel: no parameter named \"", name, "\"");
  tags_[name] = kind;
}

std::vector<std::pair<GroupKind, std::vector<torch::Tensor>>> GroupedDataParallel::by_group(
    bool grads) {
  std::map<GroupKind, std::vector<torch::Tensor>> lists;
  for (auto& p : module_->named_parameters()) {
    auto it = tags_.find(p.key());
    if (it == tags_.end() || !it->second) continue;
    auto t = p.value();
    if (grads) {
      if (!t.grad().defined()) t.mutable_grad() = torch::zeros_like(t);
      lists[*it->second].push_back(t.grad());
    } else {
      lists[*it->second].push_back(t.detach());
    }
  }
  // Fixed order of groups (the GroupKind order) so every rank issues the same collectives.
  return {lists.begin(), lists.end()};
}

void GroupedDataParallel::broadcast_parameters() {
  torch::NoGradGuard no_grad;
  dist::CoalesceOptions co;
  co.bucket_bytes = options_.bucket_bytes();
  for (auto& [kind, tensors] : by_group(false)) {
    const auto& g = groups_->get(kind);
    if (g.size() > 1) dist::broadcast_(tensors, 0, g, co);
  }
}

void GroupedDataParallel::reduce_gradients(double scale) {
  torch::NoGradGuard no_grad;
  dist::CoalesceOptions co;
  co.bucket_bytes = options_.bucket_bytes();
  for (auto& [kind, tensors] : by_group(true)) {
    const auto& g = groups_->get(kind);
    if (g.size() > 1) dist::all_reduce_coalesced_(tensors, g, co);
  }
  // The scale is the loss normalization: it applies to every gradient, synchronized or not.
  if (scale != 1.0)
    for (auto& p : module_->parameters())
      if (p.grad().defined()) p.mutable_grad().mul_(scale);
}

}  // namespace hybridmoe
