// cuda_test.cpp — the MoE layer on a CUDA device equals the same layer on the CPU (forward and
// every gradient, float64 and float32), dropless and with capacity. Skipped without a GPU.
#include <gtest/gtest.h>

#include "hybridmoe/moe.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

using testing::close;

TEST(MoELayerCuda, MatchesCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (auto dtype : {torch::kFloat64, torch::kFloat32})
    for (double cf : {0.0, 1.0})
      for (auto act : {Activation::kGelu, Activation::kSwiGLU}) {
        torch::manual_seed(3);
        auto opts = MoEOptions(32, 8).d_hidden(64).top_k(2).capacity_factor(cf).activation(act);
        MoE cpu(opts), gpu(opts);
        cpu->to(dtype);
        {
          torch::NoGradGuard ng;
          auto src = cpu->named_parameters();
          for (auto& kv : gpu->named_parameters()) kv.value().copy_(src[kv.key()]);
        }
        gpu->to(torch::Device(torch::kCUDA), dtype);
        auto x = torch::randn({300, 32}, torch::dtype(dtype));
        auto dy = torch::randn({300, 32}, torch::dtype(dtype));
        auto xc = x.clone().requires_grad_(true);
        auto xg = x.to(torch::kCUDA).requires_grad_(true);
        auto oc = cpu(xc);
        auto og = gpu(xg);
        ((oc.output * dy).sum() + oc.aux_loss).backward();
        ((og.output * dy.to(torch::kCUDA)).sum() + og.aux_loss).backward();
        // Routing on both devices is the same for these inputs; outputs and gradients match.
        const double tol = dtype == torch::kFloat64 ? 1e-10 : 1e-4;
        EXPECT_TRUE(close(og.output.cpu(), oc.output, tol));
        EXPECT_TRUE(close(xg.grad().cpu(), xc.grad(), tol));
        auto pc = cpu->named_parameters();
        for (auto& kv : gpu->named_parameters())
          EXPECT_TRUE(close(kv.value().grad().cpu(), pc[kv.key()].grad(), tol)) << kv.key();
      }
}

}  // namespace
}  // namespace hybridmoe
