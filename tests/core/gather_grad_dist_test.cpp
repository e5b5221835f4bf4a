// gather_grad_dist_test.cpp — MoEImpl::gather_full_expert_gradients on 4 ranks: after backward and
// the data-parallel gradient sum, the gathered expert gradients equal the single-process grouped
// reference's gradients (float64, relative 1e-12) in the fixed layout (ep, etp) and the adaptive
// layout, with peer conventions and capacities that drop; the parameters are left untouched.
#include <gtest/gtest.h>

#include "core/expected_grads.h"
#include "hybridmoe/collectives.h"
#include "hybridmoe/grouped_dp.h"
#include "hybridmoe/moe.h"
#include "support/compare.h"
#include "support/multirank.h"

namespace hybridmoe {
namespace {

using testing::close;
using testing::RankContext;
using testing::run_on_ranks;

struct Case {
  ParallelConfig layout;
  bool adaptive;
  int64_t experts;
  Convention convention;
  double capacity_factor;
};

const std::vector<int64_t> kTokensPerDp = {6, 3, 7, 5};

std::map<std::string, torch::Tensor> snapshot(torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> out;
  for (auto& kv : m.named_parameters()) out[kv.key()] = kv.value().detach().clone();
  return out;
}

void run_case(RankContext& ctx, const Case& c) {
  const auto& L = c.layout;
  auto groups = std::make_shared<ParallelGroups>(ParallelGroups::build(L, ctx.world));
  const auto coords = groups->coords();
  const int64_t d = 6;
  auto opts = MoEOptions(d, c.experts)
                  .d_hidden(8)
                  .top_k(2)
                  .capacity_factor(c.capacity_factor)
                  .convention(c.convention);
  auto mine_opts = opts;
  if (c.adaptive) mine_opts.expert_layout(ExpertLayout::kAdaptive);
  // 1. The full layer, this rank's shard, the global batch.
  torch::manual_seed(21);
  MoE full(opts);
  full->to(torch::kFloat64);
  MoE mine(mine_opts, groups);
  mine->to(torch::kFloat64);
  mine->load_shard_from(*full);
  const auto batch = testing::global_batch(kTokensPerDp, L.dp, L.tp, coords.dp);
  const int64_t total = batch.total, offset = batch.offset, my_tokens = batch.mine;
  const auto& sizes = batch.groups;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(8);
  auto X = torch::randn({total, d}, gen, torch::kFloat64);
  auto dY = torch::randn({total, d}, gen, torch::kFloat64);
  // 2. Reference: one process, one GShard group per rank slice.
  auto ref = full->forward_grouped(X, sizes);
  ((ref.output * dY).sum() + ref.aux_loss).backward();
  // 3. The layout, gradients summed over the data-parallel groups, then gathered.
  auto out = mine(X.narrow(0, offset, my_tokens));
  ((out.output * dY.narrow(0, offset, my_tokens)).sum() + out.aux_loss / static_cast<double>(L.dp))
      .backward();
  GroupedDataParallel gdp(mine.ptr(), groups,
                          GroupedDataParallelOptions().broadcast_at_start(false));
  gdp.reduce_gradients(1.0);
  const auto before = snapshot(*mine->experts);
  auto gathered = mine->gather_full_expert_gradients();
  const std::string what = L.to_string() + (c.adaptive ? " adaptive" : " fixed") +
                           " E=" + std::to_string(c.experts) + " " + to_string(c.convention);
  // 4. Equal to the full layer's gradients; b2 lives on etp rank 0 only in the fixed layout.
  auto full_params = full->experts->named_parameters();
  const bool all_keys = c.adaptive || groups->etp.rank == 0;
  if (all_keys) {
    EXPECT_EQ(gathered.size(), full_params.size()) << what;
  }
  EXPECT_GE(gathered.size(), full_params.size() - 1) << what;
  for (auto& [name, g] : gathered) {
    const auto& p = full_params[name];
    auto want = p.grad().defined() ? p.grad() : torch::zeros_like(p);
    EXPECT_TRUE(close(g, want, 1e-12)) << what << " " << name;
  }
  // 5. The parameters are what they were.
  for (auto& kv : mine->experts->named_parameters())
    EXPECT_TRUE(torch::equal(kv.value(), before.at(kv.key()))) << what << " " << kv.key();
}

TEST(GatherExpertGradients, EqualTheSingleProcessGradientsOnFourRanks) {
  const std::vector<Case> cases = {
      {{1, 4, 1, 4, 1}, false, 4, Convention::kDeepSpeed, 1.0},
      {{2, 2, 1, 2, 2}, false, 4, Convention::kTutel, 1.0},
      {{2, 2, 1, 4, 1}, false, 4, Convention::kMegatron, 0.5},
      {{1, 4, 1, 2, 1}, false, 4, Convention::kNone, 0.0},
      {{1, 4, 1, 1, 1}, true, 2, Convention::kGShard, 1.0},  // adaptive, S = 2
      {{2, 2, 1, 1, 1}, true, 8, Convention::kNone, 0.0},    // adaptive, 2 experts per rank
  };
  run_on_ranks(4, [&](RankContext& ctx) {
    for (const auto& c : cases) run_case(ctx, c);
  });
}

}  // namespace
}  // namespace hybridmoe
