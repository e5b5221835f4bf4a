// norm_rope.cpp — see attention.h: LayerNorm / RMSNorm and the rotary position embedding.
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

torch::Tensor apply_rope(const torch::Tensor& x, double theta, int64_t rotary_dim, bool interleaved,
                         int64_t start) {
  TORCH_CHECK(x.dim() >= 2, "apply_rope: expected x [..., S, head_dim], got ", x.sizes());
  const int64_t hd = x.size(-1), S = x.size(-2);
  const int64_t rot = rotary_dim > 0 ? rotary_dim : hd;
  TORCH_CHECK(rot % 2 == 0 && rot <= hd,
              "apply_rope: rotary_dim must be even and at most the head "
              "size ",
              hd, ", got ", rot);
  TORCH_CHECK(theta > 0.0, "apply_rope: expected rope_theta > 0, got ", theta);
  const int64_t half = rot / 2;
  // 1. The angles [S, half] in float64, cast to x's dtype.
  auto f64 = torch::dtype(torch::kFloat64).device(x.device());
  auto inv_freq =
      torch::pow(theta, torch::arange(0, half, f64) * (-2.0 / static_cast<double>(rot)));
  auto angles = torch::outer(torch::arange(start, start + S, f64), inv_freq);
  auto cos = angles.cos().to(x.scalar_type()), sin = angles.sin().to(x.scalar_type());
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

}  // namespace hybridmoe
