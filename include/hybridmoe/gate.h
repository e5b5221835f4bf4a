// gate.h — the gate (router) interface of the MoE layer: options shared by every gate, the
// routing result every gate returns, the statistics it reports, and the registry that builds a
// gate from its name ("topk", ...). Gate-specific classes live in src/router/.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace hybridmoe {

/// Which assignments an over-full expert drops first.
enum class DropPolicy {
  kPosition,  ///< later in the priority order (all first choices, in token order, then all
              ///< second choices, ...) are dropped first — GShard.
  kProbs,     ///< lowest router weight dropped first — Megatron-Core / DeepSpeed top-k.
};
DropPolicy parse_drop_policy(const std::string& name);
std::string to_string(DropPolicy policy);

/// Options shared by every gate. Gate-specific fields are ignored by gates that do not use them.
///
/// Example:
///   auto opts = GateOptions().type("topk").top_k(2).capacity_factor(1.25);
struct GateOptions {
  /// Registered gate name: see known_gate_names().
  TORCH_ARG(std::string, type) = "topk";
  /// Experts per token (k).
  TORCH_ARG(int64_t, top_k) = 2;
  /// Capacity factor in training; <= 0 means dropless.
  /// capacity = max(min_capacity, ceil(top_k * tokens / experts * capacity_factor)).
  TORCH_ARG(double, capacity_factor) = 0.0;
  /// Capacity factor in evaluation; unset means "same as capacity_factor".
  TORCH_ARG(c10::optional<double>, eval_capacity_factor) = c10::nullopt;
  /// Lower bound of the capacity when capacity is in use.
  TORCH_ARG(int64_t, min_capacity) = 0;
  /// Which assignments an over-full expert drops first.
  TORCH_ARG(DropPolicy, drop_policy) = DropPolicy::kPosition;
  /// Renormalize the k kept weights of each token to sum to one (Mixtral).
  TORCH_ARG(bool, normalize_top_k_weights) = false;
  /// Coefficient of the balance loss (each gate's own formula).
  TORCH_ARG(double, aux_loss_coef) = 1e-2;
  /// Coefficient of the router z-loss (ST-MoE); 0 disables it.
  TORCH_ARG(double, z_loss_coef) = 0.0;
  /// Seed of the gate's private generator (noise, random routing); < 0 uses the global one.
  TORCH_ARG(int64_t, seed) = -1;
};

/// What a gate decides for one forward call, as a flat list of A (token, expert, weight)
/// assignments. Dropped assignments are not in the list. Top-k gates list assignments
/// token-major (token 0's choices in rank order, then token 1's, ...).
struct RouterOutput {
  torch::Tensor token_index;   // [A] int64
  torch::Tensor expert_index;  // [A] int64, in [0, num_experts)
  torch::Tensor weight;        // [A] router dtype (float32 or wider); differentiable
  torch::Tensor aux_loss;      // [] balance loss, coefficient applied; differentiable
  torch::Tensor z_loss;        // [] router z-loss, coefficient applied; differentiable
  torch::Tensor probs;         // [T, E] router probabilities (detached), for statistics
  int64_t capacity = -1;       ///< per-expert capacity; -1 when dropless
  int64_t dropped = 0;         ///< assignments dropped by capacity
  /// Named loss terms before their coefficient (e.g. "balance", "z"), detached.
  std::map<std::string, double> loss_terms;
};

/// Routing statistics of one forward call, returned by the MoE layer.
struct RoutingStats {
  torch::Tensor tokens_per_expert;  // [E] int64: kept assignments per expert
  int64_t tokens_dropped = 0;       ///< assignments dropped by capacity
  int64_t capacity = -1;            ///< per-expert capacity; -1 when dropless
  double router_entropy = 0.0;      ///< mean entropy (nats) of the router distribution
  std::map<std::string, double> loss_terms;
};

/// Base class of every gate. A gate owns its router parameters and maps tokens to assignments.
class GateImpl : public torch::nn::Module {
 public:
  GateImpl(int64_t d_model, int64_t num_experts, GateOptions options);
  /// x: [T, d_model] → assignments, weights and losses.
  virtual RouterOutput route(const torch::Tensor& x) = 0;
  /// Called by the trainer after each optimizer step (e.g. loss-free balancing bias update).
  virtual void after_step() {}

  const GateOptions& options() const { return options_; }
  int64_t d_model() const { return d_model_; }
  int64_t num_experts() const { return num_experts_; }
  /// The capacity factor in force (train or eval), <= 0 meaning dropless.
  double active_capacity_factor() const;

 protected:
  int64_t d_model_;
  int64_t num_experts_;
  GateOptions options_;
};

using GateFactory =
    std::function<std::shared_ptr<GateImpl>(int64_t d_model, int64_t num_experts, const GateOptions&)>;

/// Builds the gate named options.type(); unknown names raise an error that lists the known ones.
std::shared_ptr<GateImpl> make_gate(int64_t d_model, int64_t num_experts, const GateOptions& options);
/// Registers (or replaces) a gate under a name.
void register_gate(const std::string& name, GateFactory factory);
/// Names of every registered gate, sorted.
std::vector<std::string> known_gate_names();

// ---- building blocks shared by gates (src/router/common.cpp) ---------------------------------

/// capacity = max(min_capacity, ceil(top_k * tokens / experts * factor)); factor must be > 0.
int64_t compute_capacity(int64_t tokens, int64_t experts, int64_t top_k, double factor,
                         int64_t min_capacity);

/// Which of the [T, k] assignments survive a per-expert capacity.
/// expert_index: [T, k] int64; weight: [T, k]; returns keep: [T, k] bool.
/// kPosition keeps, per expert, the first `capacity` assignments in the order (k-slot major,
/// then token); kProbs keeps the `capacity` largest weights (ties: that same order).
torch::Tensor capacity_keep_mask(const torch::Tensor& expert_index, const torch::Tensor& weight,
                                 int64_t num_experts, int64_t capacity, DropPolicy policy);

/// Flattens [T, k] choices into the token-major assignment list, skipping keep == false.
/// expert_index, weight: [T, k]; keep: [T, k] bool or undefined (keep all).
void flatten_assignments(const torch::Tensor& expert_index, const torch::Tensor& weight,
                         const torch::Tensor& keep, RouterOutput& out);

/// Router z-loss of ST-MoE: mean over tokens of logsumexp(logits)^2. logits: [T, E].
torch::Tensor router_z_loss(const torch::Tensor& logits);

/// Switch/GShard balance loss E * sum_e f_e * P_e, where f_e is the fraction of `choices`
/// (first choices for GShard, all k for top-k) routed to e and P_e the mean probability.
/// probs: [T, E]; choices: [T, c] int64 (before capacity).
torch::Tensor load_balancing_loss(const torch::Tensor& probs, const torch::Tensor& choices);

/// Mean entropy of the rows of probs: [T, E].
double mean_entropy(const torch::Tensor& probs);

/// The dtype the router computes in: float32, or wider when x is wider.
torch::ScalarType router_dtype(torch::ScalarType x_dtype);

}  // namespace hybridmoe
