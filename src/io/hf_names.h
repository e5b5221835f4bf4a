// hf_names.h — internal: where each parameter of a single-process hybridmoe model lives in a
// Hugging Face checkpoint of its family. A target (one parameter, or a gate's selection-bias
// buffer) is one source view, or a stack along a new first dimension of several (per-expert
// tensors); a source view is a tensor, optionally narrowed along one dimension (the halves of a
// fused gate_up_proj), optionally with its last two dimensions swapped (hybridmoe's experts hold
// x @ W, Hugging Face's Linear weights W^T).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/hf.h"

namespace hybridmoe::hf::detail {

struct Piece {
  std::string tensor;       ///< the source tensor's name
  int64_t narrow_dim = -1;  ///< -1: the whole tensor
  int64_t start = 0, length = 0;
  bool transpose = false;  ///< swap the last two dimensions (after narrowing)

  /// The view of `source` (the tensor named `tensor`) this piece denotes.
  torch::Tensor view(const torch::Tensor& source) const;
};

struct Target {
  std::string name;  ///< the parameter's (or buffer's) name in the single-process model
  bool buffer = false;
  bool stacked = false;  ///< the pieces stacked along a new dimension 0
  std::vector<Piece> pieces;
};

/// How a checkpoint names a family's MoE blocks, found from its tensor names (load) or chosen
/// (save).
struct Naming {
  ExpertLayout layout = ExpertLayout::kPerExpert;
  bool mixtral_block_sparse = true;  ///< Mixtral: `block_sparse_moe.` (v4) instead of `mlp.`
};

/// The targets of every parameter (and selection-bias buffer) of `model`, a single-process model
/// of `family`, in the model's order, and the shape each source tensor must have. Refuses,
/// naming it, a parameter the family's checkpoints have no tensor for.
struct NameMap {
  std::vector<Target> targets;
  std::vector<std::string> order;                      ///< source tensors, model order
  std::map<std::string, std::vector<int64_t>> shapes;  ///< source tensor -> shape
};
NameMap name_map(torch::nn::Module& model, const GPTOptions& options, ModelFamily family,
                 const Naming& naming);

/// The naming a checkpoint's tensor names use (the fused layout where any `experts.gate_up_proj`
/// is present; Mixtral's `block_sparse_moe.` where any such name is present).
Naming detect_naming(const std::vector<std::string>& names, ModelFamily family);

}  // namespace hybridmoe::hf::detail
