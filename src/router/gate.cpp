// gate.cpp — the gate base class and the gate registry (the routing-rule names and presets are
// in routing_rules.cpp).
#include <algorithm>
#include <cmath>
#include <mutex>
#include <sstream>

#include <ATen/CPUGeneratorImpl.h>

#include "core/enum_names.h"
#include "hybridmoe/gate.h"
#include "hybridmoe/gates.h"

namespace hybridmoe {

namespace {
const detail::EnumNames<ScoreFunction> kScoreFunctionNames{
    "score_function", {{ScoreFunction::kSoftmax, "softmax"}, {ScoreFunction::kSigmoid, "sigmoid"}}};
}  // namespace

ScoreFunction parse_score_function(const std::string& name) {
  return kScoreFunctionNames.parse(name);
}
std::string to_string(ScoreFunction f) {
  return kScoreFunctionNames.name_of(f);
}

GateImpl::GateImpl(int64_t d_model, int64_t num_experts, GateOptions options)
    : d_model_(d_model), num_experts_(num_experts), options_(std::move(options)) {
  TORCH_CHECK(d_model > 0, "gate: d_model must be positive, got ", d_model);
  TORCH_CHECK(num_experts > 0, "gate: num_experts must be positive, got ", num_experts);
  TORCH_CHECK(options_.top_k() >= 1 && options_.top_k() <= num_experts,
              "gate: top_k must be in [1, num_experts=", num_experts, "], got ", options_.top_k());
  TORCH_CHECK(options_.min_capacity() >= 0, "gate: min_capacity must be >= 0, got ",
              options_.min_capacity());
  TORCH_CHECK(options_.aux_loss_coef() >= 0, "gate: aux_loss_coef must be >= 0, got ",
              options_.aux_loss_coef());
  TORCH_CHECK(options_.z_loss_coef() >= 0, "gate: z_loss_coef must be >= 0, got ",
              options_.z_loss_coef());
  TORCH_CHECK(!std::isnan(options_.capacity_factor()), "gate: capacity_factor must be a number");
  TORCH_CHECK(
      !options_.eval_capacity_factor().has_value() || !std::isnan(*options_.eval_capacity_factor()),
      "gate: eval_capacity_factor must be a number");
  // The model families' router options are the "topk" gate's; any other gate refuses them.
  const auto& o = options_;
  const bool family = o.score_function() != ScoreFunction::kSoftmax || o.selection_bias() ||
                      o.n_group() != 1 || o.topk_group() != 1 || o.routed_scaling_factor() != 1.0 ||
                      o.bias_update_rate() != 0.0;
  TORCH_CHECK(!family || o.type() == "topk", "gate \"", o.type(),
              "\": score_function=", to_string(o.score_function()),
              ", selection_bias=", o.selection_bias(), ", n_group=", o.n_group(),
              ", topk_group=", o.topk_group(),
              ", routed_scaling_factor=", o.routed_scaling_factor(),
              " and bias_update_rate=", o.bias_update_rate(),
              " are options of the \"topk\" gate (use the defaults softmax, false, 1, 1, 1, 0)");
  rules_ = resolve_routing_rules(options_);
  reseed(options_.seed());
}

void GateImpl::reseed(int64_t seed) {
  if (seed < 0) {
    generator_ = c10::nullopt;
  } else {
    generator_ = at::detail::createCPUGenerator(static_cast<uint64_t>(seed));
  }
}

torch::Tensor GateImpl::sample_uniform(at::IntArrayRef sizes, const torch::TensorOptions& opts) {
  if (!generator_) return torch::empty(sizes, opts).uniform_(0.0, 1.0);
  auto u = torch::empty(sizes, torch::dtype(torch::kFloat64)).uniform_(0.0, 1.0, *generator_);
  return u.to(opts);
}

torch::Tensor GateImpl::sample_normal(at::IntArrayRef sizes, const torch::TensorOptions& opts) {
  if (!generator_) return torch::empty(sizes, opts).normal_(0.0, 1.0);
  auto n = torch::empty(sizes, torch::dtype(torch::kFloat64)).normal_(0.0, 1.0, *generator_);
  return n.to(opts);
}

double GateImpl::active_capacity_factor() const {
  if (is_training()) return options_.capacity_factor();
  return options_.eval_capacity_factor().value_or(options_.capacity_factor());
}

namespace {

using Registry = std::map<std::string, GateFactory>;

template <typename G>
GateFactory factory_of() {
  return [](int64_t d, int64_t e, const GateOptions& o) { return std::make_shared<G>(d, e, o); };
}

// The built-in gates. A gate added to the library is listed here.
void register_builtin_gates(Registry& r) {
  r["topk"] = factory_of<TopKGateImpl>();
  r["cosine"] = factory_of<CosineGateImpl>();
  r["gshard"] = factory_of<GShardGateImpl>();
  r["switch"] = factory_of<SwitchGateImpl>();
  r["noisy"] = factory_of<NoisyTopKGateImpl>();
  r["sinkhorn"] = factory_of<SinkhornGateImpl>();
  r["expert_choice"] = factory_of<ExpertChoiceGateImpl>();
}

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}

Registry& registry() {
  static Registry r = [] {
    Registry init;
    register_builtin_gates(init);
    return init;
  }();
  return r;
}

}  // namespace

void register_gate(const std::string& name, GateFactory factory) {
  TORCH_CHECK(!name.empty(), "register_gate: the gate name must not be empty");
  TORCH_CHECK(factory, "register_gate: the factory of gate \"", name, "\" is empty");
  std::lock_guard<std::mutex> lock(registry_mutex());
  registry()[name] = std::move(factory);
}

std::vector<std::string> known_gate_names() {
  std::lock_guard<std::mutex> lock(registry_mutex());
  std::vector<std::string> names;
  for (const auto& kv : registry()) names.push_back(kv.first);
  return names;
}

Gate make_gate(int64_t d_model, int64_t num_experts, const GateOptions& options) {
  GateFactory factory;
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    auto it = registry().find(options.type());
    if (it != registry().end()) factory = it->second;
  }
  if (!factory) {
    std::ostringstream known;
    for (const auto& n : known_gate_names()) known << (known.tellp() > 0 ? ", " : "") << n;
    TORCH_CHECK(false, "unknown gate \"", options.type(), "\"; known gates: ", known.str());
  }
  auto gate = factory(d_model, num_experts, options);
  TORCH_CHECK(gate, "the factory of gate \"", options.type(), "\" returned no gate");
  return Gate(std::move(gate));
}

}  // namespace hybridmoe
