// cosine_gate.cpp — Tutel's cosine router ("cosine", tutel/gates/cosine_top.py): projected input
// and expert embeddings compared by cosine similarity, scaled by a learned, clamped temperature;
// routed by the shared top-k routing under the gate's rules.
#include <cmath>

#include "hybridmoe/gates.h"
#include "router/route_util.h"

namespace hybridmoe {

namespace {
constexpr double kMinTemperature = 0.01;  // Tutel: clamp_max = log(1 / 0.01)
constexpr double kNormEps = 1e-12;        // torch.nn.functional.normalize's eps
}  // namespace

CosineGateImpl::CosineGateImpl(int64_t d_model, int64_t num_experts, GateOptions options)
    : GateImpl(d_model, num_experts, std::move(options)) {
  const int64_t proj = options_.cosine_projection_dim();
  TORCH_CHECK(proj >= 1, "cosine gate: cosine_projection_dim must be >= 1, got ", proj);
  TORCH_CHECK(options_.cosine_init_temperature() > 0,
              "cosine gate: cosine_init_temperature must be > 0, got ",
              options_.cosine_init_temperature());
  TORCH_CHECK(options_.bias_update_rate() == 0,
              "cosine gate: bias_update_rate (loss-free balancing) is a topk-gate option, got ",
              options_.bias_update_rate());
  projection_weight = register_parameter("projection_weight", torch::empty({proj, d_model}));
  projection_bias = register_parameter("projection_bias", torch::empty({proj}));
  sim_matrix = register_parameter("sim_matrix", torch::empty({proj, num_experts}));
  temperature = register_parameter("temperature", torch::empty({1}));
  reset_parameters();
}

void CosineGateImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  const double bound = 1.0 / std::sqrt(static_cast<double>(d_model_));
  projection_weight.uniform_(-bound, bound);
  projection_bias.uniform_(-bound, bound);
  sim_matrix.normal_(0.0, 0.01);
  temperature.fill_(std::log(1.0 / options_.cosine_init_temperature()));
}

torch::Tensor CosineGateImpl::logits_of(const torch::Tensor& x) const {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == d_model_, "cosine gate: x must be [tokens, ", d_model_,
              "], got ", x.sizes());
  const auto dt = router_dtype(x.scalar_type());
  // 1. Project the tokens and normalize each row; normalize each expert's column of S.
  auto h = torch::addmm(projection_bias.to(dt), x.to(dt), projection_weight.to(dt).t());
  auto h_unit = h / h.norm(2, {1}, /*keepdim=*/true).clamp_min(kNormEps);
  auto s = sim_matrix.to(dt);
  auto s_unit = s / s.norm(2, {0}, /*keepdim=*/true).clamp_min(kNormEps);
  // 2. Cosine similarities times the clamped learned scale.
  auto scale = temperature.to(dt).clamp_max(std::log(1.0 / kMinTemperature)).exp();
  auto logits = torch::mm(h_unit, s_unit) * scale;
  TORCH_CHECK(torch::isfinite(logits).all().item<bool>(),
              "cosine gate: router logits must be finite; got NaN or Inf (check the input and "
              "the router parameters)");
  return logits;
}

RouterOutput CosineGateImpl::route(const torch::Tensor& x) {
  RouterOutput out;
  auto logits = logits_of(x);
  auto probs = torch::softmax(logits, -1);
  detail::topk_route(*this, rules_, logits, probs, logits.detach(), out);
  return out;
}

}  // namespace hybridmoe
