// bench_skew.cpp — see bench_skew.h.
#include "bench_skew.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace hybridmoe::bench {

MoEOptions with_skew(MoEOptions options, double alpha) {
  TORCH_CHECK(alpha >= 0 && std::isfinite(alpha), "--skew must be >= 0, got ", alpha);
  if (alpha == 0) return options;
  TORCH_CHECK(options.gate().type() == "topk", "--skew ", alpha,
              " biases the \"topk\" gate's selection; got --gate ", options.gate().type());
  options.gate().selection_bias(true).softmax_over_topk(true);
  return options;
}

void set_zipf_bias(MoEImpl& layer, double alpha, const torch::Tensor& x) {
  if (alpha == 0) return;
  torch::NoGradGuard ng;
  auto w = layer.gate->named_parameters()["weight"];
  const double logit_std = torch::mm(x.to(w.scalar_type()), w.t()).std().item<double>();
  const double scale = std::max(logit_std, 1e-6) * std::sqrt(6.0) / M_PI;
  const int64_t E = layer.options.num_experts();
  std::vector<double> bias(E);
  for (int64_t e = 0; e < E; ++e) bias[e] = -alpha * std::log(static_cast<double>(e + 1)) * scale;
  auto buffer = layer.gate->named_buffers()["expert_bias"];
  buffer.copy_(torch::tensor(bias, torch::kFloat64).to(buffer.scalar_type()));
}

double max_over_mean(const std::vector<double>& values) {
  if (values.empty()) return 0.0;
  const double mean =
      std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(values.size());
  return mean > 0 ? *std::max_element(values.begin(), values.end()) / mean : 0.0;
}

}  // namespace hybridmoe::bench
