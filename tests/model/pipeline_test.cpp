// pipeline_test.cpp — pipeline parallelism on one process: blocks split into contiguous stage
// ranges, the refusals of impossible splits and unknown schedules, and micro-batches side by side
// on one stage (the same bits as one after another). The schedules, activations and gradients
// across stages on several ranks are in pipeline_dist_test.cpp.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "hybridmoe/dist.h"
#include "hybridmoe/gates.h"
#include "hybridmoe/pipeline.h"
#include "model/gpt_fixtures.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

TEST(Pipeline, StageRangesSplitBlocksContiguously) {
  std::vector<std::pair<int64_t, int64_t>> got;
  for (int64_t s = 0; s < 3; ++s) {
    auto r = stage_block_range(7, 3, s);
    got.emplace_back(r.first, r.count);
  }
  EXPECT_EQ(got, (std::vector<std::pair<int64_t, int64_t>>{{0, 3}, {3, 2}, {5, 2}}));
  EXPECT_THROW(stage_block_range(2, 3, 0), c10::Error);
  EXPECT_THROW(parse_pipeline_schedule("interleaved"), c10::Error);
}

// One step of `micro` micro-batches of the tiny GPT through run_pipeline with `threads` side by
// side: the gradients, the summed loss and the topk gate's load counters after it.
struct SideBySideStep {
  std::map<std::string, torch::Tensor> grads;
  std::vector<double> losses;  // per micro-batch, in micro-batch order
  std::vector<torch::Tensor> step_load;
  PipelineStats stats;
};

SideBySideStep side_by_side_step(GPTImpl& model, const dist::Group& pp, int64_t micro,
                                 int64_t threads) {
  model.zero_grad();
  PipelineOptions po;
  po.micro_batches = micro;
  po.threads = threads;
  if (threads > 1) po.parameters = model.parameters();
  SideBySideStep r;
  r.losses.assign(static_cast<size_t>(micro), 0.0);
  r.stats = run_pipeline(pp, po, [&](int64_t m, const torch::Tensor&) {
    auto tokens = testing::random_tokens(3, 8, 100 + static_cast<uint64_t>(m));
    auto out = model.forward_stage(tokens);
    auto loss = (lm_loss(out.output, tokens) + out.aux_loss) / static_cast<double>(micro);
    r.losses[static_cast<size_t>(m)] = loss.item<double>();
    return StageForward{torch::Tensor(), loss};
  });
  for (auto& kv : model.named_parameters())
    if (kv.value().grad().defined()) r.grads[kv.key()] = kv.value().grad().clone();
  for (auto& layer : model.moe_layers())
    r.step_load.push_back(layer->gate->as<TopKGateImpl>()->step_load.clone());
  return r;
}

// Each micro-batch computed single-threaded on its own thread, its gradients added in micro-batch
// order: the same bits as the sequential schedule on one thread (same ops on the same data).
// Three micro-batches on two threads: a wave of two, then one.
TEST(Pipeline, MicroBatchesSideBySideGiveTheSequentialBits) {
  auto world = dist::init();
  auto gate = GateOptions().type("topk").top_k(2).aux_loss_coef(0.01).bias_update_rate(1e-3);
  auto opts = testing::tiny_gpt_options(1).gate(gate);
  torch::manual_seed(5);
  GPT model(opts);
  const int previous = at::get_num_threads();
  at::set_num_threads(1);
  const auto want = side_by_side_step(*model, world->group(), 3, 1);
  for (auto& layer : model->moe_layers()) layer->gate->as<TopKGateImpl>()->step_load.zero_();
  at::set_num_threads(2);
  const auto got = side_by_side_step(*model, world->group(), 3, 2);
  at::set_num_threads(previous);
  EXPECT_EQ(got.losses, want.losses);
  ASSERT_EQ(got.grads.size(), want.grads.size());
  ASSERT_FALSE(want.grads.empty());
  for (const auto& [name, g] : want.grads) EXPECT_TRUE(torch::equal(got.grads.at(name), g)) << name;
  ASSERT_EQ(got.step_load.size(), want.step_load.size());
  for (size_t l = 0; l < want.step_load.size(); ++l)
    EXPECT_TRUE(torch::equal(got.step_load[l], want.step_load[l])) << "layer " << l;
  EXPECT_EQ(got.stats.forwards, 3);
  EXPECT_EQ(got.stats.backwards, 3);
  EXPECT_EQ(got.stats.peak_in_flight, 2);
  EXPECT_EQ(got.stats.order, "F0 B0 F1 B1 F2 B2");
}

TEST(Pipeline, SideBySideRefusesWhatItCannotRun) {
  auto world = dist::init();
  auto noop = [](int64_t, const torch::Tensor&) { return StageForward{}; };
  PipelineOptions po;
  po.micro_batches = 2;
  po.threads = 2;  // without the parameters whose gradients it must add
  EXPECT_TRUE(testing::throws_with([&] { run_pipeline(world->group(), po, noop); },
                                   "needs PipelineOptions::parameters"));
  po.threads = 0;
  EXPECT_TRUE(testing::throws_with([&] { run_pipeline(world->group(), po, noop); },
                                   "threads must be >= 1, got 0"));
  // Gates that draw random numbers cannot route side by side; the others can.
  for (const std::string type : {"gshard", "switch", "noisy", "sinkhorn"})
    EXPECT_FALSE(make_gate(8, 4, GateOptions().type(type).top_k(type == "switch" ? 1 : 2))
                     ->route_is_reentrant())
        << type;
  for (const std::string type : {"topk", "cosine", "expert_choice"})
    EXPECT_TRUE(make_gate(8, 4, GateOptions().type(type).top_k(2).capacity_factor(1.0))
                    ->route_is_reentrant())
        << type;
}

}  // namespace
}  // namespace hybridmoe
