// moe.h — the MoE layer: gate → plan → permute → experts → unpermute/combine. It replaces a
// transformer's MLP, dropless (grouped GEMM over variable expert batches) or with a capacity.
#pragma once

#include <memory>

#include <torch/torch.h>

#include "hybridmoe/dispatch.h"
#include "hybridmoe/experts.h"
#include "hybridmoe/gate.h"

namespace hybridmoe {

/// Options of the MoE layer. Gate settings live in `gate`; the most used ones are forwarded.
///
/// Example:
///   MoE moe(MoEOptions(512, 8).top_k(2).d_hidden(2048).capacity_factor(1.25));
///   MoEOutput out = moe(x);            // x: [batch, seq, 512]
///   auto loss = task_loss(out.output) + out.aux_loss;
struct MoEOptions {
  MoEOptions(int64_t d_model, int64_t num_experts) : d_model_(d_model), num_experts_(num_experts) {}
  MoEOptions& top_k(int64_t k) { gate_.top_k(k); return *this; }
  int64_t top_k() const { return gate_.top_k(); }
  /// <= 0 means dropless.
  MoEOptions& capacity_factor(double f) { gate_.capacity_factor(f); return *this; }
  double capacity_factor() const { return gate_.capacity_factor(); }
  MoEOptions& normalize_top_k_weights(bool v) { gate_.normalize_top_k_weights(v); return *this; }
  bool normalize_top_k_weights() const { return gate_.normalize_top_k_weights(); }
  MoEOptions& gate_type(const std::string& name) { gate_.type(name); return *this; }

  /// The hidden width in force (d_hidden, or 4 * d_model when 0).
  int64_t hidden() const { return d_hidden_ > 0 ? d_hidden_ : 4 * d_model_; }

  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, num_experts);
  /// Hidden width of each expert; 0 means 4 * d_model.
  TORCH_ARG(int64_t, d_hidden) = 0;
  TORCH_ARG(Activation, activation) = Activation::kGelu;
  /// Biases in the experts.
  TORCH_ARG(bool, bias) = true;
  /// The gate and its options (type, top_k, capacity, losses).
  TORCH_ARG(GateOptions, gate);
  /// A user module per expert instead of the built-in grouped MLP (FastMoE's `expert=`).
  TORCH_ARG(ExpertFactory, expert) = nullptr;

};

/// What the layer returns: the output in the input's shape, the auxiliary loss to add to the
/// training loss (balance + z-loss, coefficients applied), and routing statistics.
struct MoEOutput {
  torch::Tensor output;    // same shape as the input
  torch::Tensor aux_loss;  // []
  RoutingStats stats;
};

/// A Mixture-of-Experts layer on one process. Distributed layouts wrap the same phases with
/// token exchanges (see parallel/).
class MoEImpl : public torch::nn::Module {
 public:
  explicit MoEImpl(MoEOptions options);
  /// x: [T, d_model] or [B, S, d_model], floating point.
  MoEOutput forward(const torch::Tensor& x);

  /// The same computation through sequential_moe_reference (the test oracle).
  MoEOutput forward_reference(const torch::Tensor& x);

  MoEOptions options;
  std::shared_ptr<GateImpl> gate;
  std::shared_ptr<ExpertsBase> experts;
  /// The grouped experts, or nullptr when user modules are in use.
  GroupedExperts grouped{nullptr};

 private:
  torch::Tensor flatten_input(const torch::Tensor& x) const;
  RoutingStats make_stats(const RouterOutput& routing) const;
};
TORCH_MODULE(MoE);

}  // namespace hybridmoe
