// experts.cpp — GroupedExperts (the batched fast path), ModuleExperts (user modules) and the
// plain references used as test oracles.
#include <cmath>

#include "grouped_mlp.h"
#include "hybridmoe/experts.h"
#include "hybridmoe/testing/references.h"

namespace hybridmoe {

Activation parse_activation(const std::string& name) {
  if (name == "gelu") return Activation::kGelu;
  if (name == "relu") return Activation::kRelu;
  if (name == "swiglu") return Activation::kSwiGLU;
  C10_THROW_ERROR(Error,
                  c10::str("activation: expected one of gelu, relu, swiglu; got \"", name, "\""));
}

std::string to_string(Activation activation) {
  switch (activation) {
    case Activation::kGelu:
      return "gelu";
    case Activation::kRelu:
      return "relu";
    case Activation::kSwiGLU:
      return "swiglu";
  }
  return "?";
}

GroupedExpertsImpl::GroupedExpertsImpl(GroupedExpertsOptions options_) : options(options_) {
  const int64_t E = options.num_experts(), d = options.d_model(), h = options.d_hidden();
  TORCH_CHECK(E > 0, "GroupedExperts: num_experts must be positive, got ", E);
  TORCH_CHECK(d > 0, "GroupedExperts: d_model must be positive, got ", d);
  TORCH_CHECK(h > 0, "GroupedExperts: d_hidden must be positive, got ", h);
  w1 = register_parameter("w1", torch::empty({E, d, h}));
  w2 = register_parameter("w2", torch::empty({E, h, d}));
  if (options.bias()) {
    b1 = register_parameter("b1", torch::empty({E, h}));
    // Under a tensor-parallel split only one rank holds (and adds) the output bias.
    if (options.add_output_bias()) b2 = register_parameter("b2", torch::empty({E, d}));
  }
  if (options.activation() == Activation::kSwiGLU) {
    w3 = register_parameter("w3", torch::empty({E, d, h}));
    if (options.bias()) b3 = register_parameter("b3", torch::empty({E, h}));
  }
  reset_parameters();
}

void GroupedExpertsImpl::reset_parameters() {
  // Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases, as torch::nn::Linear.
  torch::NoGradGuard no_grad;
  const double bd = 1.0 / std::sqrt(static_cast<double>(options.d_model()));
  const double bh = 1.0 / std::sqrt(static_cast<double>(options.d_hidden()));
  w1.uniform_(-bd, bd);
  w2.uniform_(-bh, bh);
  if (b1.defined()) b1.uniform_(-bd, bd);
  if (b2.defined()) b2.uniform_(-bh, bh);
  if (w3.defined()) w3.uniform_(-bd, bd);
  if (b3.defined()) b3.uniform_(-bd, bd);
}

torch::Tensor GroupedExpertsImpl::run(const torch::Tensor& x, const std::vector<int64_t>& counts) {
  TORCH_CHECK(static_cast<int64_t>(counts.size()) == options.num_experts(),
              "GroupedExperts: ", counts.size(), " segment sizes for ", options.num_experts(),
              " experts");
  return detail::grouped_mlp(x, weights(), counts, options.activation());
}

namespace {
// Expert e of a GroupedExperts, with plain ops. x: [n, d] → [n, d].
torch::Tensor grouped_expert_plain(const GroupedExpertsImpl& ex, int64_t e,
                                   const torch::Tensor& x) {
  auto pick = [e](const torch::Tensor& t) { return t.defined() ? t[e] : torch::Tensor(); };
  return detail::expert_mlp_plain(x, ex.w1[e], pick(ex.b1), ex.w2[e], pick(ex.b2), pick(ex.w3),
                                  pick(ex.b3), ex.options.activation());
}
}  // namespace

torch::Tensor grouped_mlp_reference(const GroupedExpertsImpl& experts, const torch::Tensor& x,
                                    const std::vector<int64_t>& counts) {
  std::vector<torch::Tensor> parts;
  int64_t offset = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    parts.push_back(grouped_expert_plain(experts, e, x.narrow(0, offset, counts[e])));
    offset += counts[e];
  }
  return torch::cat(parts, 0);
}

ModuleExpertsImpl::ModuleExpertsImpl(int64_t num_experts, const ExpertFactory& factory) {
  TORCH_CHECK(num_experts > 0, "ModuleExperts: num_experts must be positive, got ", num_experts);
  TORCH_CHECK(factory, "ModuleExperts: the expert factory is empty");
  for (int64_t e = 0; e < num_experts; ++e) {
    auto m = factory(e);
    TORCH_CHECK(!m.is_empty(), "ModuleExperts: the factory returned no module for expert ", e);
    register_module("expert" + std::to_string(e), m.ptr());
    experts_.push_back(std::move(m));
  }
}

torch::Tensor ModuleExpertsImpl::run(const torch::Tensor& x, const std::vector<int64_t>& counts) {
  TORCH_CHECK(counts.size() == experts_.size(), "ModuleExperts: ", counts.size(),
              " segment sizes for ", experts_.size(), " experts");
  std::vector<torch::Tensor> parts;
  int64_t offset = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    if (counts[e] > 0) {
      auto y = experts_[e].forward(x.narrow(0, offset, counts[e]));
      TORCH_CHECK(y.sizes() == x.narrow(0, offset, counts[e]).sizes(), "ModuleExperts: expert ", e,
                  " must map [n, d] to [n, d]; got ", y.sizes());
      parts.push_back(y);
    }
    offset += counts[e];
  }
  TORCH_CHECK(offset == x.size(0), "ModuleExperts: segment sizes sum to ", offset,
              " but there are ", x.size(0), " rows");
  if (parts.empty()) return x.narrow(0, 0, 0) * 1;
  return torch::cat(parts, 0);
}

torch::Tensor sequential_moe_reference(ExpertsBase& experts, const torch::Tensor& x,
                                       const RouterOutput& routing) {
  auto* grouped = dynamic_cast<GroupedExpertsImpl*>(&experts);
  auto* modules = dynamic_cast<ModuleExpertsImpl*>(&experts);
  TORCH_CHECK(grouped || modules, "sequential_moe_reference: unsupported experts type");
  auto out = torch::zeros_like(x);
  for (int64_t e = 0; e < experts.num_experts(); ++e) {
    auto mask = routing.expert_index == e;
    auto idx = routing.token_index.masked_select(mask);
    if (idx.numel() == 0) continue;
    auto w = routing.weight.masked_select(mask).to(x.scalar_type());
    auto xe = x.index_select(0, idx);
    auto ye = grouped ? grouped_expert_plain(*grouped, e, xe) : modules->run_expert(e, xe);
    out = out.index_add(0, idx, ye * w.unsqueeze(1));
  }
  return out;
}

}  // namespace hybridmoe
