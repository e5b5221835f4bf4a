// gpt_fixtures.h — the tiny GPT and the token batches the model tests share.
#pragma once

#include <string>

#include <torch/torch.h>

#include "hybridmoe/model.h"

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

}  // namespace hybridmoe::testing
