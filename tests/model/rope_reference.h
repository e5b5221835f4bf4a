// rope_reference.h — RoPE and its scalings written out for the tests, independently of
// norm_rope.cpp: the inverse frequencies of none / linear / YaRN with plain doubles, step by step
// as transformers' modeling_rope_utils.py (_compute_linear_scaling_rope_parameters,
// _compute_yarn_parameters) and DeepSeek-V3's attention (yarn_get_mscale) spell them, and the
// rotation itself as a multiplication by complex numbers.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/model_options.h"

namespace hybridmoe::testing {

/// yarn_get_mscale(scale, mscale): 1 for scale <= 1, else 0.1 · mscale · ln(scale) + 1.
inline double reference_mscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

/// The inverse frequency of each of the dim / 2 pairs under o's rope_theta and rope_scaling.
inline std::vector<double> reference_inv_freq(const GPTOptions& o, int64_t dim) {
  const double base = o.rope_theta(), factor = o.rope_factor();
  std::vector<double> out;
  // YaRN's correction range (find_correction_range): the pair index turning `rotations` times
  // over the original context, rounded out when truncating, clamped to [0, dim - 1].
  auto correction = [&](double rotations) {
    const double positions = static_cast<double>(o.rope_original_max_positions());
    return (static_cast<double>(dim) * std::log(positions / (rotations * 2.0 * M_PI))) /
           (2.0 * std::log(base));
  };
  double low = correction(o.yarn_beta_fast()), high = correction(o.yarn_beta_slow());
  if (o.yarn_truncate()) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < dim; i += 2) {
    const double pos_freq = std::pow(base, static_cast<double>(i) / static_cast<double>(dim));
    const double extrapolation = 1.0 / pos_freq, interpolation = 1.0 / (factor * pos_freq);
    switch (o.rope_scaling()) {
      case RopeScaling::kNone:
        out.push_back(extrapolation);
        break;
      case RopeScaling::kLinear:
        out.push_back(extrapolation / factor);
        break;
      case RopeScaling::kYarn: {
        const double j = static_cast<double>(i / 2);
        const double ramp = std::clamp((j - low) / (high - low), 0.0, 1.0);
        const double extrapolation_factor = 1.0 - ramp;
        out.push_back(interpolation * (1.0 - extrapolation_factor) +
                      extrapolation * extrapolation_factor);
        break;
      }
    }
  }
  return out;
}

/// The factor on cos and sin: YaRN's attention_factor (given, or from mscale and mscale_all_dim
/// when both are set, or get_mscale(factor)); 1 otherwise.
inline double reference_attention_factor(const GPTOptions& o) {
  if (o.rope_scaling() != RopeScaling::kYarn) return 1.0;
  if (o.yarn_attention_factor() > 0.0) return o.yarn_attention_factor();
  const double f = o.rope_factor();
  if (o.yarn_mscale() != 0.0 && o.yarn_mscale_all_dim() != 0.0)
    return reference_mscale(f, o.yarn_mscale()) / reference_mscale(f, o.yarn_mscale_all_dim());
  return reference_mscale(f, 1.0);
}

/// DeepSeek-V3's softmax scale multiplier: mscale(factor, mscale_all_dim)² with rope scaling and
/// a non-zero mscale_all_dim, else 1.
inline double reference_softmax_mscale(const GPTOptions& o) {
  if (o.rope_scaling() == RopeScaling::kNone || o.yarn_mscale_all_dim() == 0.0) return 1.0;
  const double m = reference_mscale(o.rope_factor(), o.yarn_mscale_all_dim());
  return m * m;
}

/// RoPE of the first 2 · inv_freq.size() dims as complex numbers: pair j is z = x_a + i·x_b with
/// (a, b) = (j, j + rot/2) or, interleaved, (2j, 2j + 1), and position p multiplies it by
/// factor · exp(i · p · inv_freq[j]). x: [..., S, n] with positions start .. start + S - 1.
inline torch::Tensor rope_reference(const torch::Tensor& x, const std::vector<double>& inv_freq,
                                    bool interleaved, int64_t start, double factor = 1.0) {
  const int64_t S = x.size(-2), half = static_cast<int64_t>(inv_freq.size());
  std::vector<int64_t> ia, ib;
  for (int64_t j = 0; j < half; ++j) {
    ia.push_back(interleaved ? 2 * j : j);
    ib.push_back(interleaved ? 2 * j + 1 : j + half);
  }
  std::vector<double> angle;
  for (int64_t p = 0; p < S; ++p)
    for (int64_t j = 0; j < half; ++j)
      angle.push_back(static_cast<double>(start + p) * inv_freq[j]);
  auto f64 = torch::kFloat64;
  auto turn =
      torch::polar(torch::full({S, half}, factor, f64), torch::tensor(angle, f64).view({S, half}));
  auto a = torch::tensor(ia), b = torch::tensor(ib);
  auto z = torch::complex(x.index_select(-1, a), x.index_select(-1, b)) * turn;
  return x.index_copy(-1, a, torch::real(z)).index_copy(-1, b, torch::imag(z));
}

/// RoPE of the first rot dims of x (the rest unchanged) as the options ask, through
/// rope_reference: inv_freq from reference_inv_freq, cos / sin times reference_attention_factor.
inline torch::Tensor options_rope_reference(const torch::Tensor& x, const GPTOptions& o,
                                            int64_t rot, int64_t start = 0) {
  const int64_t n = x.size(-1);
  auto turned = rope_reference(x.narrow(-1, 0, rot), reference_inv_freq(o, rot),
                               o.rope_interleaved(), start, reference_attention_factor(o));
  if (rot == n) return turned;
  return torch::cat({turned, x.narrow(-1, rot, n - rot)}, -1);
}

}  // namespace hybridmoe::testing
