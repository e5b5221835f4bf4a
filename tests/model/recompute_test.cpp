// recompute_test.cpp — activation checkpointing on one process: checkpoint() against the plain
// computation, the communication tape's replay order, and the GPT with recompute = block | moe
// against recompute = none (same loss, same gradients, the noisy gate's random draws replayed).
// The communication cache on 4 ranks is in recompute_dist_test.cpp.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "hybridmoe/collectives.h"
#include "hybridmoe/comm_stats.h"
#include "hybridmoe/detail/comm_tape.h"
#include "hybridmoe/model.h"
#include "hybridmoe/recompute.h"
#include "model/gpt_fixtures.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

using testing::expect_same_step;
using testing::one_step;
using testing::random_tokens;
using testing::rel_err;
using testing::throws_with;

// Every block an MoE layer.
GPTOptions small_options(const std::string& gate_type = "topk") {
  return testing::tiny_gpt_options(/*moe_every=*/1, gate_type);
}

// ---- checkpoint() -----------------------------------------------------------------------------

TEST(Checkpoint, EqualsThePlainComputation) {
  torch::manual_seed(3);
  auto w = torch::randn({5, 4}, torch::kFloat64).requires_grad_(true);
  auto region = [w](const std::vector<torch::Tensor>& in) {
    auto h = torch::tanh(torch::matmul(in[0], w));
    return std::vector<torch::Tensor>{h * in[1], h.sum()};
  };
  auto x = torch::randn({3, 5}, torch::kFloat64).requires_grad_(true);
  auto s = torch::randn({3, 4}, torch::kFloat64);  // needs no gradient
  auto dy = torch::randn({3, 4}, torch::kFloat64);
  // 1. Plain.
  auto plain = region({x, s});
  (plain[0] * dy).sum().add(plain[1] * 0.5).backward();
  auto dx = x.grad().clone(), dw = w.grad().clone();
  x.mutable_grad().reset();
  w.mutable_grad().reset();
  // 2. Checkpointed: the same outputs, the same gradients (the region is recomputed).
  int calls = 0;
  auto outs = checkpoint(
      [&calls, region](const std::vector<torch::Tensor>& in) {
        ++calls;
        return region(in);
      },
      {x, s});
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(torch::equal(outs[0], plain[0].detach()));
  (outs[0] * dy).sum().add(outs[1] * 0.5).backward();
  EXPECT_EQ(calls, 2);
  EXPECT_TRUE(torch::equal(x.grad(), dx));
  EXPECT_TRUE(torch::equal(w.grad(), dw));
  // 3. Parameters get their gradients even when no input needs one.
  w.mutable_grad().reset();
  auto frozen = checkpoint(region, {x.detach(), s});
  frozen[1].backward();
  ASSERT_TRUE(w.grad().defined());
  // 4. Outside grad mode the region simply runs.
  torch::NoGradGuard no_grad;
  auto inference = checkpoint(region, {x, s});
  EXPECT_FALSE(inference[0].requires_grad());
}

TEST(Checkpoint, RefusesBadUse) {
  auto x = torch::ones({2}, torch::kFloat64).requires_grad_(true);
  auto identity = [](const std::vector<torch::Tensor>& in) { return in; };
  EXPECT_TRUE(throws_with([&] { checkpoint(identity, {x}); }, "is one of the inputs"));
  EXPECT_TRUE(throws_with([&] { checkpoint(identity, {torch::ones({2}, torch::kInt64)}); },
                          "input 0 must be a defined floating-point tensor, got Long"));
  EXPECT_TRUE(throws_with([] { parse_recompute("all"); },
                          "recompute must be \"none\", \"block\" or \"moe\", got \"all\""));
}

TEST(CommTape, ReplayChecksTheOrderOfCollectives) {
  dist::CommTape tape;
  tape.record("all_to_all", torch::ones({2, 3}));
  tape.record("all_gather_rows", torch::zeros({4}));
  EXPECT_EQ(tape.bytes(), 2 * 3 * 4 + 4 * 4);
  EXPECT_TRUE(torch::equal(tape.replay("all_to_all"), torch::ones({2, 3})));
  EXPECT_EQ(tape.remaining(), 1);
  EXPECT_TRUE(throws_with([&] { tape.replay("all_reduce_sum"); },
                          "collective 1 of the recomputed forward is 'all_reduce_sum' but the "
                          "original forward ran 'all_gather_rows'"));
  tape.replay("all_gather_rows");
  EXPECT_TRUE(throws_with([&] { tape.replay("all_to_all"); }, "after all 2 collectives"));
}

// ---- the GPT on one process -------------------------------------------------------------------

TEST(Recompute, BlockAndMoEEqualNoRecomputeOnOneProcess) {
  for (const std::string gate : {"topk", "noisy"}) {
    auto o = small_options(gate);
    torch::manual_seed(5);
    GPT model(o);
    model->to(torch::kFloat64);
    auto tokens = random_tokens(2, 8, 1), targets = random_tokens(2, 8, 2);
    auto want = one_step(*model, tokens, targets);
    for (auto mode : {Recompute::kBlock, Recompute::kMoE}) {
      model->set_recompute(mode);
      auto got = one_step(*model, tokens, targets);
      const std::string what = gate + " recompute=" + recompute_name(mode);
      expect_same_step(got, want, what);
      // The generators continue as if nothing had been recomputed.
      EXPECT_TRUE(torch::equal(got.rng_after, want.rng_after)) << what;
    }
    model->set_recompute(Recompute::kNone);
  }
}

TEST(Recompute, ConfigOptionReachesTheBlocks) {
  GPT model(small_options().recompute(parse_recompute("moe")));
  for (auto& b : model->block_list) EXPECT_EQ(b->recompute(), Recompute::kMoE);
  EXPECT_TRUE(throws_with([] { GPT bad(small_options().recompute(parse_recompute("layers"))); },
                          "\"layers\""));
}

}  // namespace
}  // namespace hybridmoe
