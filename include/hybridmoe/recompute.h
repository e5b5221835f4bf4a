// recompute.h — activation checkpointing (recompute) that repeats no communication: a region's
// forward runs without keeping its activations, and backward runs it again to rebuild them. With
// cache_comm (DeepSpeed-TED's communication-aware checkpointing) the recomputation takes every
// collective's result from the original forward (comm_tape.h) instead of exchanging the tokens
// again; the backward of each collective still communicates, as without recompute.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace hybridmoe {

/// Which parts of a model are recomputed in backward.
enum class Recompute {
  kNone,   ///< keep every activation
  kBlock,  ///< each transformer block keeps only its input
  kMoE,    ///< each MoE layer keeps only its input (attention and dense MLPs keep theirs)
};

/// "none" | "block" | "moe"; anything else is refused with the valid names.
Recompute parse_recompute(const std::string& name);
const char* recompute_name(Recompute mode);

/// Options of checkpoint().
struct CheckpointOptions {
  /// Keep the forward's collective results and replay them in the recomputation (no token
  /// exchange is repeated). false: the recomputation communicates again.
  TORCH_ARG(bool, cache_comm) = true;
};

/// The region: inputs → outputs. It must be deterministic given its inputs and the random number
/// generators' state (which checkpoint() restores for the recomputation).
using CheckpointFunction =
    std::function<std::vector<torch::Tensor>(const std::vector<torch::Tensor>& inputs)>;

/// Runs fn(inputs) without keeping its intermediate activations and returns its outputs. In
/// backward, fn runs again on the saved inputs with the CPU (and the inputs' CUDA) generators
/// restored to their state at the first call, and the output gradients are back-propagated
/// through that recomputation: parameter gradients accumulate as without checkpointing, input
/// gradients flow on. Outside grad mode this is fn(inputs). Outputs must be floating-point
/// tensors and no input may be returned as an output. The function (with what it captures) lives
/// until backward: capture by value.
/// inputs: any floating-point tensors → fn's outputs.
///
/// Example:
///   auto outs = checkpoint([block](const std::vector<torch::Tensor>& in) {
///     auto r = block->forward(in[0]);
///     return std::vector<torch::Tensor>{r.x, r.aux_loss};
///   }, {x});
std::vector<torch::Tensor> checkpoint(CheckpointFunction fn,
                                      const std::vector<torch::Tensor>& inputs,
                                      const CheckpointOptions& options = CheckpointOptions());

}  // namespace hybridmoe
