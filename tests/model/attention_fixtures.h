// attention_fixtures.h — what the attention tests share: float64 random tensors from their own
// generators, random weights for an attention (norm weights near 1, biases non-zero), the
// gradients of a module by name, and a comparison of gradients against the largest one.
#pragma once

#include <algorithm>
#include <cmath>
#include <map>
#include <string>

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace hybridmoe::testing {

/// A float64 gaussian tensor of `shape` from its own generator.
inline torch::Tensor randn64(at::IntArrayRef shape, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randn(shape, gen, torch::kFloat64);
}

/// Overwrites every parameter of `m` (float64) with random values: norm weights 1 + 0.3·N(0, 1),
/// matrices N(0, 1) / sqrt(fan_in) (activations of order one), biases 0.3·N(0, 1).
inline void randomize(torch::nn::Module& m, uint64_t seed) {
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& kv : m.named_parameters()) {
    auto& p = kv.value();
    auto r = torch::randn(p.sizes(), gen, torch::dtype(p.scalar_type()));
    const std::string& name = kv.key();
    const bool norm = name.find("norm.") != std::string::npos;
    if (norm) {
      p.copy_(1.0 + 0.3 * r);
    } else if (p.dim() == 2) {
      p.copy_(r / std::sqrt(static_cast<double>(p.size(1))));
    } else {
      p.copy_(0.3 * r);
    }
  }
}

/// Every parameter's gradient (cloned; undefined where there is none), by name.
inline std::map<std::string, torch::Tensor> grads_of(torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> g;
  for (auto& kv : m.named_parameters()) {
    auto grad = kv.value().grad();
    g[kv.key()] = grad.defined() ? grad.detach().clone() : grad;
  }
  return g;
}

/// The largest |value| over every tensor of `ts`.
inline double largest(const std::map<std::string, torch::Tensor>& ts) {
  double m = 0.0;
  for (const auto& kv : ts)
    if (kv.second.defined() && kv.second.numel() > 0)
      m = std::max(m, kv.second.abs().max().item<double>());
  return m;
}

/// Asserts same shape and max|a - b| <= tol · scale: a gradient measured against the model's
/// largest gradient, since some are zero in exact arithmetic (the k bias without norms or RoPE).
inline ::testing::AssertionResult close_at_scale(const torch::Tensor& a, const torch::Tensor& b,
                                                 double scale, double tol) {
  if (!a.defined() || !b.defined())
    return ::testing::AssertionFailure()
           << "undefined tensor (a " << a.defined() << ", b " << b.defined() << ")";
  if (a.sizes() != b.sizes())
    return ::testing::AssertionFailure() << "shape " << a.sizes() << " vs " << b.sizes();
  const double err = (a.detach() - b.detach()).abs().max().item<double>() / scale;
  if (err <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "error " << err << " of the largest gradient > " << tol;
}

}  // namespace hybridmoe::testing
