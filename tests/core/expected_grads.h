// expected_grads.h — what a distributed MoE layer's expert gradients must be: the single-process
// layer's gradients, cut by the same rule as the weights (load_shard_from).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/collectives.h"
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

/// A single-process layer (float64, from `seed`) and this rank's shard of it.
struct FullAndShard {
  MoE full{nullptr}, mine{nullptr};
};
/// With `skew` every token of positive input picks expert 0 first (the gate's weight zero but
/// row 0, all 5) and expert 1 second (the tie among the others goes to the lower index).
inline FullAndShard full_and_shard(const MoEOptions& full_options, const MoEOptions& shard_options,
                                   std::shared_ptr<const ParallelGroups> groups, bool skew,
                                   uint64_t seed) {
  torch::manual_seed(seed);
  FullAndShard out;
  out.full = MoE(full_options);
  out.full->to(torch::kFloat64);
  if (skew) {
    torch::NoGradGuard ng;
    auto w = out.full->gate->named_parameters()["weight"];
    w.zero_();
    w[0].fill_(5.0);
  }
  out.mine = MoE(shard_options, std::move(groups));
  out.mine->to(torch::kFloat64);
  out.mine->load_shard_from(*out.full);
  return out;
}

/// The global batch of a distributed layer test: dp rank r holds tokens_per_dp[r] tokens, each
/// block split evenly over tp into the slices the single-process reference routes as GShard
/// groups (forward_grouped).
struct GlobalBatch {
  int64_t total = 0;            ///< tokens over every dp rank
  int64_t offset = 0;           ///< the first token of this rank's dp block
  int64_t mine = 0;             ///< the tokens of this rank's dp block
  std::vector<int64_t> groups;  ///< the reference's group sizes: every (dp, tp) slice in order
};
inline GlobalBatch global_batch(const std::vector<int64_t>& tokens_per_dp, int64_t dp, int64_t tp,
                                int64_t my_dp) {
  GlobalBatch b;
  for (int64_t r = 0; r < dp; ++r) {
    if (r == my_dp) b.offset = b.total, b.mine = tokens_per_dp[r];
    b.total += tokens_per_dp[r];
    for (auto n : dist::even_split(tokens_per_dp[r], tp)) b.groups.push_back(n);
  }
  return b;
}

}  // namespace hybridmoe::testing
