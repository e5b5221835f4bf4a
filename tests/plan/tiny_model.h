// tiny_model.h — the planner tests' tiny model, whose numbers are easy by hand: 2 blocks (block 1
// is MoE), d 8, 2 heads, MLP 32, experts 4 x width 16, top-2, 8 sequences of 4 tokens, float32.
#pragma once

#include "hybridmoe/plan.h"

namespace hybridmoe::testing {

inline plan::ModelSpec tiny_model() {
  plan::ModelSpec m;
  m.n_layers = 2;
  m.d_model = 8;
  m.n_heads = 2;
  m.d_mlp = 32;
  m.expert_hidden = 16;
  m.num_experts = 4;
  m.top_k = 2;
  m.moe_every = 2;
  m.seq_len = 4;
  m.batch_size = 8;
  m.context = 4;
  m.vocab = 256;
  m.dtype_bytes = 4;
  return m;
}

}  // namespace hybridmoe::testing
