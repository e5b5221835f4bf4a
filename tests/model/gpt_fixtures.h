// gpt_fixtures.h — what the model tests share: the tiny GPT, token batches, and one training step
// of a model (loss, gradients, generator state and communication counters) with its comparison.
#pragma once

#include <map>
#include <string>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "hybridmoe/comm_stats.h"
#include "hybridmoe/model.h"
#include "support/compare.h"

namespace hybridmoe::testing {

/// A 2-block GPT (d 16, 4 heads, MLP 32) whose MoE layers (every `moe_every` blocks) have 4
/// experts, top-2, with balance and z losses.
inline GPTOptions tiny_gpt_options(int64_t moe_every = 2, const std::string& gate_type = "topk") {
  GateOptions gate;
  gate.type(gate_type).top_k(2).aux_loss_coef(0.01).z_loss_coef(0.001);
  return GPTOptions()
      .context(8)
      .d_model(16)
      .n_layers(2)
      .n_heads(4)
      .d_mlp(32)
      .moe_every(moe_every)
      .num_experts(4)
      .gate(gate);
}

/// Byte tokens [B, S] from their own generator.
inline torch::Tensor random_tokens(int64_t B, int64_t S, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randint(0, 256, {B, S}, gen, torch::kInt64);
}

/// What one training step of a model gave: the loss, every gradient, a draw of the global
/// generator after the step, and the communication counters of the step.
struct StepResult {
  double loss = 0.0;
  std::map<std::string, torch::Tensor> grads;
  torch::Tensor rng_after;  // a draw of the global generator after the step
  std::map<std::string, dist::OpStats> comm;
};

/// One forward and backward of `model` on (tokens, targets), the global generator seeded first
/// (the noisy gate draws from it); expects every parameter to get a gradient.
inline StepResult one_step(GPTImpl& model, const torch::Tensor& tokens,
                           const torch::Tensor& targets) {
  model.zero_grad();
  dist::reset_comm_stats();
  torch::manual_seed(77);  // the noisy gate draws from the global generator
  auto out = model.forward(tokens);
  auto loss = lm_loss(out.logits, targets) + out.aux_loss;
  loss.backward();
  StepResult r;
  r.loss = loss.item<double>();
  for (auto& kv : model.named_parameters()) {
    EXPECT_TRUE(kv.value().grad().defined()) << kv.key();
    if (kv.value().grad().defined()) r.grads[kv.key()] = kv.value().grad().clone();
  }
  r.rng_after = torch::randn({4}, torch::kFloat64);
  r.comm = dist::comm_stats();
  return r;
}

/// Expects the same loss (exactly) and the same gradients (relative 1e-12) as `want`.
inline void expect_same_step(const StepResult& got, const StepResult& want,
                             const std::string& what) {
  EXPECT_EQ(got.loss, want.loss) << what;
  ASSERT_EQ(got.grads.size(), want.grads.size()) << what;
  for (const auto& kv : want.grads)
    EXPECT_LT(rel_err(got.grads.at(kv.first), kv.second), 1e-12) << what << " " << kv.first;
}

}  // namespace hybridmoe::testing
