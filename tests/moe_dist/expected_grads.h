// expected_grads.h — what a distributed MoE layer's expert gradients must be: the single-process
// layer's gradients, cut by the same rule as the weights (load_shard_from).
#pragma once

#include <memory>
#include <string>

#include <torch/torch.h>

#include "hybridmoe/moe.h"

namespace hybridmoe::testing {

/// The shard of `full`'s gradients (float64; zero where a parameter got none) that a layer with
/// `shard_options` on `groups` holds, by expert parameter name. full_options: full's options.
inline torch::OrderedDict<std::string, torch::Tensor> expert_grad_shard(
    MoEImpl& full, const MoEOptions& full_options, const MoEOptions& shard_options,
    std::shared_ptr<const ParallelGroups> groups) {
  MoE grads_full(full_options), grads_mine(shard_options, std::move(groups));
  grads_full->to(torch::kFloat64);
  grads_mine->to(torch::kFloat64);
  {
    torch::NoGradGuard ng;
    auto src = full.named_parameters();
    for (auto& kv : grads_full->named_parameters())
      kv.value().copy_(src[kv.key()].grad().defined() ? src[kv.key()].grad()
                                                      : torch::zeros_like(kv.value()));
  }
  grads_mine->load_shard_from(*grads_full);
  return grads_mine->experts->named_parameters();
}

}  // namespace hybridmoe::testing
