// grouped_data_parallel.cpp — see grouped_dp.h: tags from the modules' declared gradient groups,
// coalesced broadcast and gradient sums per tag.
#include "hybridmoe/grouped_dp.h"

#include "hybridmoe/collectives.h"
#include "hybridmoe/group_kind.h"

namespace hybridmoe {

std::map<std::string, c10::optional<GroupKind>> gradient_group_tags(torch::nn::Module& module) {
  // named_modules() lists parents before children, so a deeper declaration overwrites an outer
  // one.
  std::map<std::string, c10::optional<GroupKind>> tags;
  for (const auto& item : module.named_modules()) {
    const auto& prefix = item.key();
    auto* m = item.value().get();
    const auto* declarer = dynamic_cast<const GradientGroupDeclarer*>(m);
    const c10::optional<GroupKind> kind =
        declarer ? declarer->gradient_group() : c10::optional<GroupKind>(GroupKind::kDp);
    for (const auto& p : m->named_parameters(/*recurse=*/declarer != nullptr)) {
      const auto name = prefix.empty() ? p.key() : prefix + "." + p.key();
      if (declarer || !tags.count(name)) tags[name] = kind;
    }
  }
  return tags;
}

GroupedDataParallel::GroupedDataParallel(std::shared_ptr<torch::nn::Module> module,
                                         std::shared_ptr<const ParallelGroups> groups,
                                         GroupedDataParallelOptions options)
    : module_(std::move(module)), groups_(std::move(groups)), options_(options) {
  TORCH_CHECK(module_, "GroupedDataParallel: the module is null");
  TORCH_CHECK(groups_, "GroupedDataParallel: the parallel groups are null");
  // 1. Tags from the module tree.
  tags_ = gradient_group_tags(*module_);
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
