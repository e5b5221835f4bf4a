// linear_gate.cpp — pieces shared by the gates with a linear router: the router logits, the
// stable top-k, and the LinearGateImpl base class that owns the router weight.
#include <cmath>

#include "hybridmoe/gates.h"

namespace hybridmoe {

torch::Tensor router_logits(const torch::Tensor& x, const torch::Tensor& weight) {
  const auto dt = router_dtype(x.scalar_type());
  auto logits = torch::mm(x.to(dt), weight.to(dt).t());
  TORCH_CHECK(torch::isfinite(logits).all().item<bool>(),
              "gate: router logits must be finite; got NaN or Inf (check the input and the "
              "router weights)");
  return logits;
}

std::tuple<torch::Tensor, torch::Tensor> stable_topk(const torch::Tensor& scores, int64_t k) {
  auto sorted = scores.sort(/*stable=*/true, /*dim=*/-1, /*descending=*/true);
  return {std::get<0>(sorted).narrow(-1, 0, k), std::get<1>(sorted).narrow(-1, 0, k)};
}

LinearGateImpl::LinearGateImpl(int64_t d_model, int64_t num_experts, GateOptions options)
    : GateImpl(d_model, num_experts, std::move(options)) {
  weight = register_parameter("weight", torch::empty({num_experts, d_model}));
  LinearGateImpl::reset_parameters();
}

void LinearGateImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  const double bound = 1.0 / std::sqrt(static_cast<double>(d_model_));
  weight.uniform_(-bound, bound);
}

torch::Tensor LinearGateImpl::logits_of(const torch::Tensor& x, const char* who) const {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == d_model_, who, " gate: x must be [tokens, ", d_model_,
              "], got ", x.sizes());
  return router_logits(x, weight);
}

}  // namespace hybridmoe
