// experts.h — the experts of an MoE layer.
//   GroupedExperts:   weights stored batched ([E, d_model, d_hidden], [E, d_hidden, d_model]) and
//                     run as a grouped GEMM over variable-sized, expert-contiguous segments
//                     (the dropless path of MegaBlocks). The fast path.
//   ModuleExperts:    one user-supplied module per expert, each run on its segment (FastMoE's
//                     `expert=`). Slower, general.
//   The plain oracles (grouped_mlp_reference, sequential_moe_reference) are in
//   hybridmoe/testing/references.h.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/gate.h"

namespace hybridmoe {

enum class Activation { kGelu, kRelu, kSwiGLU };
Activation parse_activation(const std::string& name);
std::string to_string(Activation activation);

/// Expert weights in GroupedExperts' layout: w1 [L, d, h], b1 [L, h], w2 [L, h, d], b2 [L, d],
/// w3 / b3 as w1 / b1 for SwiGLU; undefined where absent (each bias on its own). They may be
/// computed tensors (the adaptive layout's gathered slices): gradients flow back through autograd.
struct ExpertWeights {
  torch::Tensor w1, b1, w2, b2, w3, b3;
};

/// Interface of anything that runs the experts on expert-contiguous rows.
/// Expert gradients are summed over the expert-data-parallel group (GroupKind::kEdp: the ranks
/// that hold the same experts) unless the owner says otherwise (an adaptive-layout MoE, whose
/// expert slices have no replicas, sets nullopt). Parameters split over tp are listed by the
/// owner with set_tp_shard_names (a MoE layer's shared expert under tp > 1; default: none).
class ExpertsBase : public torch::nn::Module,
                    public GradientGroupDeclarer,
                    public TensorParallelShards {
 public:
  /// x: [A, d_model] rows sorted by expert; counts: rows per local expert (sums to A).
  /// Returns [A, d_model].
  virtual torch::Tensor run(const torch::Tensor& x, const std::vector<int64_t>& counts) = 0;
  virtual int64_t num_experts() const = 0;

  c10::optional<GroupKind> gradient_group() const override { return gradient_group_; }
  void set_gradient_group(c10::optional<GroupKind> group) { gradient_group_ = group; }

  std::vector<std::string> tp_shard_names() const override { return tp_shard_names_; }
  /// Names (relative to this module) of its parameters split over tp; empty: none.
  void set_tp_shard_names(std::vector<std::string> names) { tp_shard_names_ = std::move(names); }

 private:
  c10::optional<GroupKind> gradient_group_ = GroupKind::kEdp;
  std::vector<std::string> tp_shard_names_;
};

/// Options of GroupedExperts.
///
/// Example:
///   GroupedExperts experts(GroupedExpertsOptions(8, 512, 2048).activation(Activation::kSwiGLU));
struct GroupedExpertsOptions {
  GroupedExpertsOptions(int64_t num_experts, int64_t d_model, int64_t d_hidden)
      : num_experts_(num_experts), d_model_(d_model), d_hidden_(d_hidden) {}
  TORCH_ARG(int64_t, num_experts);
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, d_hidden);
  TORCH_ARG(Activation, activation) = Activation::kGelu;
  TORCH_ARG(bool, bias) = true;
  /// Whether this instance holds and adds the output bias b2 (false on all but one rank of a
  /// tensor-parallel split, so the bias is counted once when partial outputs are summed).
  TORCH_ARG(bool, add_output_bias) = true;
};

/// Experts stored batched and run as one grouped GEMM per projection.
/// Parameters: w1 [E, d_model, d_hidden], b1 [E, d_hidden], w2 [E, d_hidden, d_model],
/// b2 [E, d_model] (only with add_output_bias); with SwiGLU also w3 [E, d_model, d_hidden], b3 [E,
/// d_hidden] (h = silu(x w1 + b1) * (x w3 + b3)).
class GroupedExpertsImpl : public ExpertsBase {
 public:
  explicit GroupedExpertsImpl(GroupedExpertsOptions options);
  void reset_parameters();
  torch::Tensor run(const torch::Tensor& x, const std::vector<int64_t>& counts) override;
  /// Same as run(); the name LibTorch modules use.
  torch::Tensor forward(const torch::Tensor& x, const std::vector<int64_t>& counts) {
    return run(x, counts);
  }
  int64_t num_experts() const override { return options.num_experts(); }
  /// The parameters as ExpertWeights (the same tensors, not copies).
  ExpertWeights weights() const { return {w1, b1, w2, b2, w3, b3}; }

  GroupedExpertsOptions options;
  torch::Tensor w1, b1, w2, b2, w3, b3;
};
TORCH_MODULE(GroupedExperts);

/// Builds the module of one expert; called once per expert with its index.
using ExpertFactory = std::function<torch::nn::AnyModule(int64_t expert)>;

/// One user module per expert, each taking [n, d_model] and returning [n, d_model].
class ModuleExpertsImpl : public ExpertsBase {
 public:
  ModuleExpertsImpl(int64_t num_experts, const ExpertFactory& factory);
  torch::Tensor run(const torch::Tensor& x, const std::vector<int64_t>& counts) override;
  int64_t num_experts() const override { return static_cast<int64_t>(experts_.size()); }
  /// Runs expert e alone. x: [n, d_model].
  torch::Tensor run_expert(int64_t e, const torch::Tensor& x) { return experts_[e].forward(x); }

 private:
  std::vector<torch::nn::AnyModule> experts_;
};
TORCH_MODULE(ModuleExperts);

}  // namespace hybridmoe
