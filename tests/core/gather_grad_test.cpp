// gather_grad_test.cpp — MoEImpl::gather_full_expert_gradients on one process: the gather returns
// the gradients themselves (the multi-rank cases are in gather_grad_dist_test.cpp).
#include <gtest/gtest.h>

#include "hybridmoe/moe.h"

namespace hybridmoe {
namespace {

TEST(GatherExpertGradients, OnOneProcessAreTheGradients) {
  MoE moe(MoEOptions(6, 4).d_hidden(8).top_k(2));
  moe->to(torch::kFloat64);
  auto out = moe(torch::randn({9, 6}, torch::kFloat64));
  (out.output.pow(2).sum() + out.aux_loss).backward();
  auto gathered = moe->gather_full_expert_gradients();
  auto params = moe->experts->named_parameters();
  EXPECT_EQ(gathered.size(), params.size());
  for (auto& [name, g] : gathered) EXPECT_TRUE(torch::equal(g, params[name].grad())) << name;
}

}  // namespace
}  // namespace hybridmoe
