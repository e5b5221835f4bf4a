// moe_functional.cpp — moe_forward(): the layer's forward with the weights passed in, by binding
// the given tensors into a MoE module and running its own forward (moe_functional.h says why).
#include "hybridmoe/moe_functional.h"

#include <set>
#include <vector>

#include "hybridmoe/gates.h"

namespace hybridmoe {

namespace {

using Slots = torch::OrderedDict<std::string, torch::Tensor>;

// A Module's parameter slots (protected in torch::nn::Module). &SlotAccess::parameters_ is a
// pointer to a member of torch::nn::Module, applicable to any module: no cast of the object.
struct SlotAccess : torch::nn::Module {
  static Slots& parameters(torch::nn::Module& m) { return m.*(&SlotAccess::parameters_); }
};

// One tensor of the layer: where the module keeps it (its slot) and the member it computes with.
struct Binding {
  std::string name;  // the layer's name for it ("gate.weight", "experts.w1", ...)
  torch::nn::Module* module;
  std::string local;  // the slot's name in `module`
  bool buffer;
  torch::Tensor* member;
};

void add(std::vector<Binding>& out, const std::string& prefix, torch::nn::Module& module,
         const std::string& local, bool buffer, torch::Tensor& member) {
  if (member.defined()) out.push_back({prefix + local, &module, local, buffer, &member});
}

void add_experts(std::vector<Binding>& out, const std::string& prefix, GroupedExpertsImpl& e) {
  for (auto p :
       {std::make_pair("w1", &e.w1), std::make_pair("b1", &e.b1), std::make_pair("w2", &e.w2),
        std::make_pair("b2", &e.b2), std::make_pair("w3", &e.w3), std::make_pair("b3", &e.b3)})
    add(out, prefix, e, p.first, /*buffer=*/false, *p.second);
}

// Every tensor of the layer that this file knows how to bind.
std::vector<Binding> bindings_of(MoEImpl& layer) {
  std::vector<Binding> out;
  GateImpl& gate = *layer.gate;
  if (auto* linear = dynamic_cast<LinearGateImpl*>(&gate))
    add(out, "gate.", gate, "weight", false, linear->weight);
  if (auto* topk = dynamic_cast<TopKGateImpl*>(&gate)) {
    add(out, "gate.", gate, "expert_bias", true, topk->expert_bias);
    add(out, "gate.", gate, "step_load", true, topk->step_load);
  }
  if (auto* noisy = dynamic_cast<NoisyTopKGateImpl*>(&gate))
    add(out, "gate.", gate, "noise_weight", false, noisy->noise_weight);
  if (auto* cosine = dynamic_cast<CosineGateImpl*>(&gate)) {
    add(out, "gate.", gate, "projection_weight", false, cosine->projection_weight);
    add(out, "gate.", gate, "projection_bias", false, cosine->projection_bias);
    add(out, "gate.", gate, "sim_matrix", false, cosine->sim_matrix);
    add(out, "gate.", gate, "temperature", false, cosine->temperature);
  }
  if (layer.grouped) add_experts(out, "experts.", *layer.grouped);
  if (layer.shared_expert) add_experts(out, "shared_expert.", *layer.shared_expert);
  add(out, "", layer, "shared_expert_gate", false, layer.shared_gate);
  return out;
}

}  // namespace

void bind_moe_tensors(MoEImpl& layer, const std::map<std::string, torch::Tensor>& tensors) {
  std::vector<Binding> bindings = bindings_of(layer);
  // The module's own list of its tensors decides what must be given: each must have a binding.
  std::map<std::string, torch::Tensor> current;
  for (const auto& kv : layer.named_parameters()) current[kv.key()] = kv.value();
  for (const auto& kv : layer.named_buffers()) current[kv.key()] = kv.value();
  std::set<std::string> bound;
  for (const auto& b : bindings) bound.insert(b.name);
  for (const auto& kv : current) {
    TORCH_CHECK(bound.count(kv.first), "moe_forward: the layer's tensor \"", kv.first,
                "\" cannot be bound to a given tensor (user expert modules and gates other than "
                "the built-in ones are not supported by the functional forward)");
    TORCH_CHECK(tensors.count(kv.first), "moe_forward: the tensor \"", kv.first,
                "\" is missing (expected shape ", kv.second.sizes(), ")");
  }
  for (const auto& kv : tensors) {
    TORCH_CHECK(current.count(kv.first), "moe_forward: \"", kv.first,
                "\" is not a parameter or buffer of this layer (it has ", current.size(),
                " tensors, e.g. \"", current.empty() ? "" : current.begin()->first, "\")");
    const auto& given = kv.second;
    TORCH_CHECK(given.defined(), "moe_forward: the tensor \"", kv.first, "\" is undefined");
    TORCH_CHECK(given.sizes() == current[kv.first].sizes(), "moe_forward: \"", kv.first,
                "\" has shape ", given.sizes(), ", the layer expects ", current[kv.first].sizes());
  }
  for (const auto& b : bindings) {
    const torch::Tensor& given = tensors.at(b.name);
    if (b.buffer) {
      // Buffers carry no autograd identity, and torch::nn::Module keeps their slots private:
      // the layer's buffer becomes a shallow alias of the given one (its storage, shape and
      // dtype), so reads see the caller's values and in-place updates land in its storage.
      const Slots own = b.module->named_buffers(/*recurse=*/false);
      const torch::Tensor* slot = own.find(b.local);
      TORCH_INTERNAL_ASSERT(slot && slot->unsafeGetTensorImpl() == b.member->unsafeGetTensorImpl(),
                            "moe_forward: the slot and the member of \"", b.name, "\" differ");
      if (b.member->unsafeGetTensorImpl() != given.unsafeGetTensorImpl()) {
        torch::NoGradGuard no_grad;
        b.member->set_data(given);
      }
      continue;
    }
    // Parameters: the very tensor, in the module's slot and in the member the layer computes
    // with, so that autograd accumulates into the caller's tensor.
    torch::Tensor* slot = SlotAccess::parameters(*b.module).find(b.local);
    TORCH_INTERNAL_ASSERT(slot && slot->unsafeGetTensorImpl() == b.member->unsafeGetTensorImpl(),
                          "moe_forward: the slot and the member of \"", b.name, "\" differ");
    *slot = given;
    *b.member = given;
  }
}

MoEOutput moe_forward(MoEImpl& layer, const std::map<std::string, torch::Tensor>& tensors,
                      const torch::Tensor& x) {
  bind_moe_tensors(layer, tensors);
  return layer.forward(x);
}

}  // namespace hybridmoe
