// moe_functional.h — the MoE layer's forward with its weights passed in (tensors in, tensors
// out): what a framework that owns the weights itself (the Python package's hybridmoe.MoE, whose
// weights are torch nn.Parameters) calls.
//
// Design: one forward path. moe_forward() does not re-implement the layer; it binds the given
// tensors as the parameters and buffers of a MoE module built from the same options (the very
// tensors, same TensorImpl, not copies: both the module's parameter slot and the member the
// gate or the experts compute with) and runs that module's own forward(). Autograd therefore
// accumulates into the caller's tensors, in-place buffer updates (the loss-free bias's load
// counters) land in the caller's buffers, and the C++ layer's behaviour is the layer's, bit for
// bit: MoEImpl itself is not changed. Binding is checked: every parameter and buffer of the
// module must be given, by its named_parameters()/named_buffers() name and shape, and a
// parameter this file does not know how to bind (a user expert module, a new gate's parameter)
// is an error naming it rather than a silently unbound weight.
#pragma once

#include <map>
#include <string>

#include <torch/torch.h>

#include "hybridmoe/moe.h"

namespace hybridmoe {

/// Binds `tensors` as `layer`'s parameters and buffers (see above); the layer keeps them until
/// the next binding. Every name of layer.named_parameters() and layer.named_buffers() must be a
/// key, with that tensor's shape; no other keys. The tensors' requires_grad is left as it is.
///
/// Example:
///   MoE layer(MoEOptions(8, 4).top_k(2));
///   std::map<std::string, torch::Tensor> mine;   // e.g. copies of the initial state
///   for (const auto& kv : layer->named_parameters()) mine[kv.key()] = kv.value().clone();
///   for (const auto& kv : layer->named_buffers()) mine[kv.key()] = kv.value().clone();
///   bind_moe_tensors(*layer, mine);              // layer->gate->weight is mine["gate.weight"]
void bind_moe_tensors(MoEImpl& layer, const std::map<std::string, torch::Tensor>& tensors);

/// The layer's forward with its weights passed in: bind_moe_tensors(layer, tensors), then
/// layer.forward(x). Gradients of the output and the auxiliary loss reach the given tensors.
///
/// Example:
///   MoEOutput out = moe_forward(*layer, mine, x);
///   (out.output.sum() + out.aux_loss).backward();   // mine["experts.w1"].grad() is set
MoEOutput moe_forward(MoEImpl& layer, const std::map<std::string, torch::Tensor>& tensors,
                      const torch::Tensor& x);

}  // namespace hybridmoe
