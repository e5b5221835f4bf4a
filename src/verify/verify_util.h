// verify_util.h — small helpers shared by the layout proofs (verify.cpp, verify_pipeline.cpp).
#pragma once

#include <algorithm>

#include <torch/torch.h>

#include "hybridmoe/collectives.h"

namespace hybridmoe::detail {

/// The largest v over the group's ranks.
inline double max_over(const dist::Group& g, double v) {
  auto t = torch::tensor({v}, torch::kFloat64).view({1, 1});
  return g.size() > 1 ? dist::all_gather_rows(t, g).max().item<double>() : v;
}

/// max |a - b| / max |b|: the relative error of a against the reference b.
inline double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  auto d = (a.detach().to(torch::kFloat64) - b.detach().to(torch::kFloat64)).abs().max();
  const double scale = std::max(b.detach().to(torch::kFloat64).abs().max().item<double>(), 1e-30);
  return d.item<double>() / scale;
}

/// The sum of v over the group's ranks.
inline double sum_over(const dist::Group& g, double v) {
  auto t = torch::tensor({v}, torch::kFloat64).view({1, 1});
  return g.size() > 1 ? dist::all_gather_rows(t, g).sum().item<double>() : v;
}

}  // namespace hybridmoe::detail
