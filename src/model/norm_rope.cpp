// norm_rope.cpp — see attention.h: LayerNorm / RMSNorm and the rotary position embedding with its
// scalings (linear, YaRN) as transformers' modeling_rope_utils.py computes them.
#include <algorithm>
#include <cmath>

#include "hybridmoe/attention.h"

namespace hybridmoe {

NormImpl::NormImpl(NormType type_, int64_t dim_, double eps_) : type(type_), dim(dim_), eps(eps_) {
  TORCH_CHECK(dim > 0, "Norm: expected a positive dimension, got ", dim);
  TORCH_CHECK(eps > 0.0, "Norm: expected eps > 0, got ", eps);
  weight = register_parameter("weight", torch::ones({dim}));
  if (type == NormType::kLayerNorm) bias = register_parameter("bias", torch::zeros({dim}));
}

torch::Tensor NormImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.size(-1) == dim, "Norm: expected [..., ", dim, "], got ", x.sizes());
  if (type == NormType::kLayerNorm) return torch::layer_norm(x, {dim}, weight, bias, eps);
  return rms_norm(x, weight, eps);
}

std::vector<std::string> NormImpl::tp_shard_names() const {
  if (split_over_tp) return {"weight"};
  return {};
}

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  // In float32 at least, as the families define it (a bf16 input is normalized in float32 and
  // cast back before the weight).
  auto xf = x.scalar_type() == torch::kFloat64 ? x : x.to(torch::kFloat32);
  auto y = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * y.to(x.scalar_type());
}

namespace {

// YaRN's magnitude correction: 1 for scale <= 1, else 0.1 · m · ln(scale) + 1.
double yarn_mscale(double scale, double m) {
  return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0;
}

// The (fractional) pair index whose pair turns `rotations` times over `positions` positions:
// theta^(2j / dim) = positions / (2π · rotations), solved for j.
double correction_dim(double rotations, int64_t dim, double theta, double positions) {
  return static_cast<double>(dim) * std::log(positions / (rotations * 2.0 * M_PI)) /
         (2.0 * std::log(theta));
}

}  // namespace

RopeFrequencies rope_frequencies(const GPTOptions& o, int64_t rot, torch::Device device) {
  TORCH_CHECK(rot > 0 && rot % 2 == 0,
              "rope_frequencies: expected an even, positive rotary_dim, got ", rot);
  const double theta = o.rope_theta();
  TORCH_CHECK(theta > 0.0, "apply_rope: expected rope_theta > 0, got ", theta);
  const int64_t half = rot / 2;
  auto f64 = torch::dtype(torch::kFloat64).device(device);
  RopeFrequencies f;
  // 1. theta^(-2j / rot): the frequencies of plain RoPE (and YaRN's extrapolation).
  f.inv_freq = torch::pow(theta, torch::arange(0, half, f64) * (-2.0 / static_cast<double>(rot)));
  const double factor = o.rope_factor();
  switch (o.rope_scaling()) {
    case RopeScaling::kNone:
      break;
    case RopeScaling::kLinear:
      // Positions / factor, written on the frequencies as transformers does.
      f.inv_freq = f.inv_freq / factor;
      break;
    case RopeScaling::kYarn: {
      // 2. The correction range: pairs below `low` turn more than beta_fast times over the
      //    original context and keep their frequency; pairs above `high` turn fewer than
      //    beta_slow times and are interpolated; a linear ramp between.
      const auto positions = static_cast<double>(o.rope_original_max_positions());
      double low = correction_dim(o.yarn_beta_fast(), rot, theta, positions);
      double high = correction_dim(o.yarn_beta_slow(), rot, theta, positions);
      if (o.yarn_truncate()) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(rot - 1));
      if (low == high) high += 0.001;  // transformers' guard against a zero-width ramp
      auto ramp = ((torch::arange(0, half, f64) - low) / (high - low)).clamp(0.0, 1.0);
      f.inv_freq = f.inv_freq / factor * ramp + f.inv_freq * (1.0 - ramp);
      // 3. The factor on cos and sin.
      if (o.yarn_attention_factor() > 0.0) {
        f.attention_factor = o.yarn_attention_factor();
      } else if (o.yarn_mscale() != 0.0 && o.yarn_mscale_all_dim() != 0.0) {
        f.attention_factor =
            yarn_mscale(factor, o.yarn_mscale()) / yarn_mscale(factor, o.yarn_mscale_all_dim());
      } else {
        f.attention_factor = yarn_mscale(factor, 1.0);
      }
      break;
    }
  }
  return f;
}

double latent_softmax_mscale(const GPTOptions& o) {
  if (o.rope_scaling() == RopeScaling::kNone || o.yarn_mscale_all_dim() == 0.0) return 1.0;
  const double m = yarn_mscale(o.rope_factor(), o.yarn_mscale_all_dim());
  return m * m;
}

torch::Tensor apply_rope(const torch::Tensor& x, const RopeFrequencies& f, bool interleaved,
                         int64_t start) {
  TORCH_CHECK(x.dim() >= 2, "apply_rope: expected x [..., S, head_dim], got ", x.sizes());
  TORCH_CHECK(f.inv_freq.defined() && f.inv_freq.dim() == 1,
              "apply_rope: expected inv_freq [rotary_dim / 2]");
  const int64_t hd = x.size(-1), S = x.size(-2), half = f.inv_freq.size(0), rot = 2 * half;
  TORCH_CHECK(rot > 0 && rot <= hd,
              "apply_rope: rotary_dim must be even and at most the head size ", hd, ", got ", rot);
  // 1. The angles [S, half] in float64; cos and sin (times the attention factor) in x's dtype.
  auto f64 = torch::dtype(torch::kFloat64).device(x.device());
  auto angles = torch::outer(torch::arange(start, start + S, f64), f.inv_freq.to(x.device()));
  auto cos = angles.cos(), sin = angles.sin();
  if (f.attention_factor != 1.0) {
    cos = cos * f.attention_factor;
    sin = sin * f.attention_factor;
  }
  cos = cos.to(x.scalar_type());
  sin = sin.to(x.scalar_type());
  // 2. The two members of each pair, rotated.
  auto r = x.narrow(-1, 0, rot);
  torch::Tensor a, b;
  if (interleaved) {
    auto pairs = r.unflatten(-1, {half, 2});
    a = pairs.select(-1, 0);
    b = pairs.select(-1, 1);
  } else {
    a = r.narrow(-1, 0, half);
    b = r.narrow(-1, half, half);
  }
  auto ra = a * cos - b * sin, rb = b * cos + a * sin;
  auto rotated = interleaved ? torch::stack({ra, rb}, -1).flatten(-2) : torch::cat({ra, rb}, -1);
  // 3. The dimensions past rotary_dim pass through.
  if (rot == hd) return rotated;
  return torch::cat({rotated, x.narrow(-1, rot, hd - rot)}, -1);
}

torch::Tensor apply_rope(const torch::Tensor& x, double theta, int64_t rotary_dim, bool interleaved,
                         int64_t start) {
  TORCH_CHECK(x.dim() >= 2, "apply_rope: expected x [..., S, head_dim], got ", x.sizes());
  const int64_t hd = x.size(-1);
  const int64_t rot = rotary_dim > 0 ? rotary_dim : hd;
  TORCH_CHECK(rot % 2 == 0 && rot <= hd,
              "apply_rope: rotary_dim must be even and at most the head size ", hd, ", got ", rot);
  return apply_rope(x, rope_frequencies(GPTOptions().rope_theta(theta), rot, x.device()),
                    interleaved, start);
}

}  // namespace hybridmoe
