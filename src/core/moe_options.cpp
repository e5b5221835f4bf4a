// moe_options.cpp — MoEOptions::gate(): replacing the gate options without silently undoing a
// setting made through one of MoEOptions' forwarding setters; the names of A2AAlgorithm.
#include "core/enum_names.h"
#include "hybridmoe/moe.h"

namespace hybridmoe {

namespace {

const detail::EnumNames<A2AAlgorithm> kA2AAlgorithmNames{
    "a2a_algorithm",
    {{A2AAlgorithm::kFlat, "flat"}, {A2AAlgorithm::kHierarchical, "hierarchical"}}};

}  // namespace

std::string to_string(A2AAlgorithm algorithm) {
  return kA2AAlgorithmNames.name_of(algorithm);
}

A2AAlgorithm parse_a2a_algorithm(const std::string& text) {
  return kA2AAlgorithmNames.parse(text);
}

MoEOptions& MoEOptions::gate(const GateOptions& g) {
  if (forwarded_ & kForwardedTopK)
    TORCH_CHECK(g.top_k() == gate_.top_k(), "MoEOptions: gate(...) has top_k=", g.top_k(),
                " but top_k(", gate_.top_k(), ") was set before; set it in one place");
  if (forwarded_ & kForwardedCapacityFactor)
    TORCH_CHECK(g.capacity_factor() == gate_.capacity_factor(),
                "MoEOptions: gate(...) has capacity_factor=", g.capacity_factor(),
                " but capacity_factor(", gate_.capacity_factor(),
                ") was set before; set it in one place");
  if (forwarded_ & kForwardedNormalization)
    TORCH_CHECK(g.weight_normalization() == gate_.weight_normalization(),
                "MoEOptions: gate(...) has weight_normalization=",
                g.weight_normalization() ? to_string(*g.weight_normalization()) : "unset",
                " but normalize_top_k_weights(", gate_.normalize_top_k_weights() ? "true" : "false",
                ") was set before; set it in one place");
  if (forwarded_ & kForwardedType)
    TORCH_CHECK(g.type() == gate_.type(), "MoEOptions: gate(...) has type \"", g.type(),
                "\" but gate_type(\"", gate_.type(), "\") was set before; set it in one place");
  if (forwarded_ & kForwardedConvention)
    TORCH_CHECK(g.convention() == gate_.convention(), "MoEOptions: gate(...) has convention \"",
                to_string(g.convention()), "\" but convention(\"", to_string(gate_.convention()),
                "\") was set before; set it in one place");
  gate_ = g;
  return *this;
}

}  // namespace hybridmoe
