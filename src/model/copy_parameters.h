// copy_parameters.h — internal: copies every parameter of one module into the same-named
// parameter of another of the same structure (no gradient), as sharding a model from a
// one-process copy and gathering it back both do for the parts every rank holds whole;
// copy_state also copies the buffers (a gate's selection bias is state, not a parameter).
#pragma once

#include <torch/torch.h>

namespace hybridmoe::detail {

inline void copy_parameters(torch::nn::Module& dst, torch::nn::Module& src) {
  torch::NoGradGuard no_grad;
  auto s = src.named_parameters();
  for (auto& kv : dst.named_parameters()) kv.value().copy_(s[kv.key()]);
}

inline void copy_state(torch::nn::Module& dst, torch::nn::Module& src) {
  copy_parameters(dst, src);
  torch::NoGradGuard no_grad;
  auto s = src.named_buffers();
  for (auto& kv : dst.named_buffers()) kv.value().copy_(s[kv.key()]);
}

}  // namespace hybridmoe::detail
