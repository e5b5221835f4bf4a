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

#include "hybridmoe/group_kind.h"
#include "hybridmoe/routing_rules.h"

namespace hybridmoe {

/// Options shared by every gate. Gate-specific fields are ignored by gates that do not use them,
/// except the routing rules (drop_policy ... batch_prioritized, convention): a gate refuses a
/// rule it cannot follow, naming the rule and the gate.
/// Built-in gates: "topk", "cosine", "gshard", "switch", "noisy", "sinkhorn", "expert_choice"
/// (gates.h).
///
/// Example:
///   auto opts = GateOptions().type("topk").top_k(2).capacity_factor(1.25);
///   auto noisy = GateOptions().type("noisy").top_k(2).aux_loss_coef(0.1).seed(7);
///   auto ds = GateOptions().top_k(3).capacity_factor(1.0).convention(Convention::kDeepSpeed);
/// How router logits become scores (GateOptions::score_function).
enum class ScoreFunction {
  kSoftmax,  ///< softmax over all experts
  kSigmoid,  ///< element-wise sigmoid (DeepSeek-V3)
};
/// Names: "softmax", "sigmoid". Example: parse_score_function("sigmoid") ==
/// ScoreFunction::kSigmoid.
ScoreFunction parse_score_function(const std::string& name);
std::string to_string(ScoreFunction f);

struct GateOptions {
  /// Registered gate name: see known_gate_names().
  TORCH_ARG(std::string, type) = "topk";
  /// Experts per token (k).
  TORCH_ARG(int64_t, top_k) = 2;
  /// Capacity factor in training; 0 means dropless; < 0 is Tutel's dynamic capacity, the
  /// largest per-expert count bounded by the capacity of |factor| (routed_capacity). The
  /// capacity follows capacity_formula.
  TORCH_ARG(double, capacity_factor) = 0.0;
  /// Capacity factor in evaluation (0 dropless, < 0 dynamic); unset means "same as
  /// capacity_factor".
  TORCH_ARG(c10::optional<double>, eval_capacity_factor) = c10::nullopt;
  /// Lower bound of the capacity when capacity is in use.
  TORCH_ARG(int64_t, min_capacity) = 0;

  // ---- routing rules (routing_rules.h); unset: the convention's value or the default --------
  /// A peer's convention setting the rules below together; an explicit rule that contradicts
  /// it is an error naming both (resolve_routing_rules).
  TORCH_ARG(Convention, convention) = Convention::kNone;
  /// Which assignments an over-full expert drops first; default kPosition.
  TORCH_ARG(c10::optional<DropPolicy>, drop_policy) = c10::nullopt;
  /// Numbering of an expert's capacity slots; default first-choices-first (by weight with
  /// drop_policy probs).
  TORCH_ARG(c10::optional<SlotOrder>, slot_order) = c10::nullopt;
  /// When the k weights are renormalized to sum to one; default none.
  TORCH_ARG(c10::optional<WeightNormalization>, weight_normalization) = c10::nullopt;
  /// Capacity from tokens, experts, k and the factor; default ceil(k * T / E * cf).
  TORCH_ARG(c10::optional<CapacityFormula>, capacity_formula) = c10::nullopt;
  /// Which choices the balance loss counts; default all k ("topk"; "gshard" and "switch" count
  /// their first choice, which is the same for k = 1).
  TORCH_ARG(c10::optional<BalanceLossChoices>, balance_loss_choices) = c10::nullopt;
  /// Tutel's batch-prioritized routing: in the slot order, tokens are taken by descending top
  /// probability (ties: token order) instead of token order, so an over-full expert keeps the
  /// tokens that are most sure of their first choice. Default false.
  TORCH_ARG(c10::optional<bool>, batch_prioritized) = c10::nullopt;
  /// Alias of weight_normalization: true sets kBeforeCapacity (Mixtral's renormalization of
  /// the k weights), false sets kNone. The getter says whether kBeforeCapacity is set.
 public:
  GateOptions& normalize_top_k_weights(bool v) {
    weight_normalization_ = v ? WeightNormalization::kBeforeCapacity : WeightNormalization::kNone;
    return *this;
  }
  bool normalize_top_k_weights() const {
    return weight_normalization_ == WeightNormalization::kBeforeCapacity;
  }
  /// Coefficient of the balance loss (each gate's own formula).
  TORCH_ARG(double, aux_loss_coef) = 1e-2;
  /// Coefficient of the router z-loss (ST-MoE); 0 disables it.
  TORCH_ARG(double, z_loss_coef) = 0.0;
  /// Seed of the gate's private generator (noise, random routing); < 0 uses the global one.
  TORCH_ARG(int64_t, seed) = -1;

  // ---- "topk" ----
  /// Top-k on the logits, then softmax over the k chosen logits (FastMoE's naive gate,
  /// Megatron-Core's default moe_router_pre_softmax = false) instead of softmax over all
  /// experts then top-k. The k weights then sum to one before capacity. Default false; a
  /// routing rule (set by convention megatron).
  TORCH_ARG(c10::optional<bool>, softmax_over_topk) = c10::nullopt;
  /// Auxiliary-loss-free balancing (DeepSeek-V3): > 0 enables a per-expert bias added to the
  /// scores for selection only, updated by after_step(): bias_e += rate * sign(mean_load - load_e)
  /// with the loads counted over the training forwards since the previous step. 0 disables it.
  TORCH_ARG(double, bias_update_rate) = 0.0;
  /// Router scores: softmax over all experts (Mixtral, Qwen-MoE, OLMoE) or an element-wise
  /// sigmoid of the logits (DeepSeek-V3). With sigmoid the chosen experts' weights are their
  /// scores; normalized before capacity they are divided by their sum + 1e-20. The balance loss
  /// and the statistics then read the scores normalized over the experts.
  TORCH_ARG(ScoreFunction, score_function) = ScoreFunction::kSoftmax;
  /// Add the per-expert bias (the `expert_bias` buffer, DeepSeek-V3's e_score_correction_bias)
  /// to the scores for selection only even when bias_update_rate is 0 (a loaded, fixed bias).
  TORCH_ARG(bool, selection_bias) = false;
  /// Group-limited selection (DeepSeek-V3): the experts in n_group equal groups, a group's score
  /// the sum of its two largest selection scores, the topk_group best groups kept and the
  /// scores of the others set to 0 before the top-k. n_group = 1: no groups.
  TORCH_ARG(int64_t, n_group) = 1;
  /// Groups kept with n_group > 1 (1 <= topk_group <= n_group).
  TORCH_ARG(int64_t, topk_group) = 1;
  /// The routed experts' weights are multiplied by this (DeepSeek-V3's routed_scaling_factor).
  TORCH_ARG(double, routed_scaling_factor) = 1.0;

  // ---- "gshard" ----
  /// Pick the second expert by argmax of logits + Gumbel noise (DeepSpeed's 2nd-expert
  /// sampling) instead of the plain argmax; training only.
  TORCH_ARG(bool, gumbel_second_expert) = false;
  /// GShard random routing: keep the second expert only if 2 * w2 > u, u ~ U[0, 1), with
  /// w2 = p2 / (p1 + p2); training only. Unrouted second choices take no capacity and are not
  /// counted in `dropped`.
  TORCH_ARG(bool, random_routing) = false;

  // ---- "switch" ----
  /// Multiplicative jitter on the router input in training: x * U[1 - eps, 1 + eps]; 0 = off.
  TORCH_ARG(double, jitter_eps) = 0.0;
  /// Random token selection (DeepSpeed RTS): an over-full expert keeps a uniformly random
  /// subset of its tokens instead of following drop_policy; training only.
  TORCH_ARG(bool, random_token_selection) = false;

  // ---- "cosine" ----
  /// Width of the projection before the cosine similarity (Tutel's proj_dim).
  TORCH_ARG(int64_t, cosine_projection_dim) = 256;
  /// Initial temperature t: the learned log-scale starts at log(1 / t) (Tutel's init_t).
  TORCH_ARG(double, cosine_init_temperature) = 0.5;

  // ---- "noisy" ----
  /// Added to softplus(x W_noise) to form the noise standard deviation (tensor2tensor uses
  /// 1e-2); 0 gives the paper's plain softplus.
  TORCH_ARG(double, noise_epsilon) = 1e-2;

  // ---- "sinkhorn" ----
  /// Stop when mean |d1_new - d1_old| <= tolerance (Megatron-Core's convergence test).
  TORCH_ARG(double, sinkhorn_tolerance) = 1e-4;
  /// Upper bound on the number of Sinkhorn iterations.
  TORCH_ARG(int64_t, sinkhorn_max_iterations) = 1000;
};

/// Every choice a gate made in one forward call, kept or dropped, as N parallel lists. Top-k
/// gates list all T * k choices token-major (token 0's choices in rank order, then token 1's,
/// ...); "expert_choice" lists the (token, expert) pairs the experts chose, all kept.
///
/// Example:
///   MoEOutput out = moe(x);
///   auto dropped = out.stats.choices.kept.logical_not();   // which choices the capacity dropped
///   auto their_tokens = out.stats.choices.token.masked_select(dropped);
struct RoutingTable {
  torch::Tensor token;   // [N] int64: the token (row of the routed input)
  torch::Tensor expert;  // [N] int64: the chosen expert; -1 when not routed (GShard random routing)
  torch::Tensor weight;  // [N] detached: the combine weight; 0 for a dropped choice
  torch::Tensor slot;    // [N] int64: slot in the expert's capacity buffer; -1 dropped or dropless
  torch::Tensor kept;    // [N] bool: survived the capacity
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
  /// [A] int64: slot of each kept assignment in its expert's capacity buffer (its rank in the
  /// expert's drop order, < capacity); undefined when dropless.
  torch::Tensor position;
  int64_t capacity = -1;  ///< per-expert capacity; -1 when dropless
  int64_t dropped = 0;    ///< assignments dropped by capacity
  /// Named loss terms before their coefficient (e.g. "balance", "z"), detached.
  std::map<std::string, double> loss_terms;
  /// Every choice, kept or dropped (filled by flatten_assignments; a gate that leaves it
  /// undefined has the MoE layer derive it from the kept list).
  RoutingTable choices;
};

/// Routing statistics of one forward call, returned by the MoE layer.
struct RoutingStats {
  torch::Tensor tokens_per_expert;  // [E] int64: kept assignments per expert
  int64_t tokens_dropped = 0;       ///< assignments dropped by capacity
  int64_t capacity = -1;            ///< per-expert capacity; -1 when dropless
  double router_entropy = 0.0;      ///< mean entropy (nats) of the router distribution
  std::map<std::string, double> loss_terms;
  /// Every choice of the tokens this process routed (its slice in a distributed layer): expert,
  /// combine weight, slot, kept or dropped. See RoutingTable.
  RoutingTable choices;
  /// Rows this rank's experts computed in the call (after any exchange and replication): the
  /// load a skewed routing puts on this rank. -1 where the layer did not say.
  int64_t expert_rows = -1;
  /// The experts replicated for the call (replicate.h), ascending; empty without replication.
  std::vector<int64_t> replicated;
};

/// Base class of every gate. A gate owns its router parameters and maps tokens to assignments.
/// Its parameters are replicated over the stage (every tp, dp and ep rank routes with them):
/// their gradients are summed over GroupKind::kStage.
class GateImpl : public torch::nn::Module, public GradientGroupDeclarer {
 public:
  GateImpl(int64_t d_model, int64_t num_experts, GateOptions options);
  c10::optional<GroupKind> gradient_group() const override { return GroupKind::kStage; }
  /// x: [T, d_model] → assignments, weights and losses.
  virtual RouterOutput route(const torch::Tensor& x) = 0;
  /// Called by the trainer after each optimizer step (e.g. loss-free balancing bias update).
  virtual void after_step() {}
  /// Whether route() may run on several threads at once with the results it gives one call after
  /// another: it draws no random numbers and writes no member (counters excepted, which it
  /// guards). Micro-batches side by side (PipelineOptions::threads) need it of every gate.
  virtual bool route_is_reentrant() const { return true; }

  const GateOptions& options() const { return options_; }
  /// The routing rules in force (resolve_routing_rules of the options, at construction).
  const RoutingRules& rules() const { return rules_; }
  int64_t d_model() const { return d_model_; }
  int64_t num_experts() const { return num_experts_; }
  /// The capacity factor in force (train or eval), <= 0 meaning dropless.
  double active_capacity_factor() const;

  /// Restarts the gate's private generator from `seed` (>= 0), or switches to the global
  /// generator (< 0). Example: gate->reseed(3); auto a = gate->route(x); gate->reseed(3);
  /// auto b = gate->route(x);  // same noise, same routing
  void reseed(int64_t seed);
  /// Samples of U[0, 1) with the given shape, drawn from the private generator (on the CPU in
  /// float64, then moved to opts) or, without a seed, from the global generator of opts' device.
  torch::Tensor sample_uniform(at::IntArrayRef sizes, const torch::TensorOptions& opts);
  /// Standard normal samples, drawn like sample_uniform.
  torch::Tensor sample_normal(at::IntArrayRef sizes, const torch::TensorOptions& opts);

 protected:
  int64_t d_model_;
  int64_t num_experts_;
  GateOptions options_;
  RoutingRules rules_;
  c10::optional<at::Generator> generator_;
};

/// The holder of any gate (like every LibTorch module's holder): `gate->route(x)`,
/// `gate.ptr()`, registrable with register_module.
///
/// Example:
///   Gate gate = make_gate(512, 8, GateOptions().type("topk").top_k(2));
///   RouterOutput r = gate->route(x);
TORCH_MODULE(Gate);

using GateFactory = std::function<std::shared_ptr<GateImpl>(int64_t d_model, int64_t num_experts,
                                                            const GateOptions&)>;

/// Builds the gate named options.type(); unknown names raise an error that lists the known ones.
Gate make_gate(int64_t d_model, int64_t num_experts, const GateOptions& options);
/// Registers (or replaces) a gate under a name.
void register_gate(const std::string& name, GateFactory factory);
/// Names of every registered gate, sorted.
std::vector<std::string> known_gate_names();

// ---- building blocks shared by gates (src/router/common.cpp) ---------------------------------

/// The per-expert capacity; factor must be > 0. kCeilKTOverE (the default):
/// max(min_capacity, ceil(top_k * tokens / experts * factor)); kTutel:
/// max(min_capacity, top_k * floor(factor * ceil(tokens / experts))).
/// Example: compute_capacity(10, 4, 2, 1.0, 0, CapacityFormula::kTutel) == 6 (ceil: 5).
int64_t compute_capacity(int64_t tokens, int64_t experts, int64_t top_k, double factor,
                         int64_t min_capacity,
                         CapacityFormula formula = CapacityFormula::kCeilKTOverE);

/// The capacity of one routing group's [T, k] choices under a non-zero factor. factor > 0:
/// compute_capacity(T, E, top_k, factor, ...). factor < 0 (Tutel's dynamic capacity):
/// min(the largest number of choices any expert received in this group, which drops nothing,
/// compute_capacity(T, E, top_k, |factor|, ...)), so a balanced group drops nothing and a skewed
/// one is bounded. expert_index: [T, k] int64, num_experts marks an unrouted choice (not
/// counted). The bound alone decides what is dropped (a count above the capacity is above the
/// bound), so a negative factor keeps exactly what |factor| keeps; the capacity, a padded
/// buffer's size, shrinks to what the group needs. A group is one process's tokens: a
/// distributed layer's groups are its ranks' slices (MoEImpl::forward_grouped), each with its
/// own capacity, as with a positive factor.
/// Example: expert_index {{0}, {0}, {1}} (E = 4, k = 1): factor -2 → min(2, ceil(2 * 3 / 4)) = 2.
int64_t routed_capacity(const torch::Tensor& expert_index, int64_t num_experts, int64_t top_k,
                        double factor, int64_t min_capacity,
                        CapacityFormula formula = CapacityFormula::kCeilKTOverE);

/// How capacity_slots orders and drops: the rules' drop policy and slot order, and with
/// batch_prioritized the [T] scores (descending) that order the tokens.
struct SlotRules {
  DropPolicy drop_policy = DropPolicy::kPosition;
  SlotOrder slot_order = SlotOrder::kFirstChoicesFirst;
  torch::Tensor token_priority;  ///< [T] or undefined (token order)
};

/// Capacity slots of [T, k] assignments under `rules`: (keep [T, k] bool, position [T, k]
/// int64). The slot order numbers each expert's assignments (tokens ordered by token_priority
/// when given); kPosition keeps the first `capacity` of them; kProbs keeps the `capacity`
/// largest weights (ties: slot order) and numbers the kept ones in slot order. position is the
/// slot of a kept assignment and, for a dropped one, a number >= capacity (its rank in the drop
/// order). Rows of expert_index equal to num_experts are never kept (position -1).
///
/// Example:
///   auto [keep, slot] = capacity_slots(idx, w, E, 4, SlotRules{DropPolicy::kProbs,
///                                                             SlotOrder::kTokenMajor, {}});
std::tuple<torch::Tensor, torch::Tensor> capacity_slots(const torch::Tensor& expert_index,
                                                        const torch::Tensor& weight,
                                                        int64_t num_experts, int64_t capacity,
                                                        const SlotRules& rules);

/// Capacity slots of [T, k] assignments with the slot order that matches `policy` (first choices
/// first for kPosition, by weight for kProbs): (keep [T, k] bool, position [T, k] int64), where
/// position is the rank of the assignment in its expert's drop order (see capacity_keep_mask)
/// and keep = position < capacity. Rows of expert_index equal to num_experts are ignored
/// (never kept, position -1): use it for choices that are not routed at all.
std::tuple<torch::Tensor, torch::Tensor> capacity_slots(const torch::Tensor& expert_index,
                                                        const torch::Tensor& weight,
                                                        int64_t num_experts, int64_t capacity,
                                                        DropPolicy policy);

/// Which of the [T, k] assignments survive a per-expert capacity.
/// expert_index: [T, k] int64; weight: [T, k]; returns keep: [T, k] bool.
/// kPosition keeps, per expert, the first `capacity` assignments in the order (k-slot major,
/// then token); kProbs keeps the `capacity` largest weights (ties: that same order).
torch::Tensor capacity_keep_mask(const torch::Tensor& expert_index, const torch::Tensor& weight,
                                 int64_t num_experts, int64_t capacity, DropPolicy policy);

/// Flattens [T, k] choices into the token-major assignment list, skipping keep == false.
/// expert_index, weight: [T, k]; keep: [T, k] bool or undefined (keep all); position: [T, k]
/// int64 capacity slots or undefined (out.position stays undefined).
/// out.dropped = T * k - kept. Also fills out.choices with all T * k choices; with
/// num_experts > 0, entries equal to num_experts are reported as not routed (expert -1).
void flatten_assignments(const torch::Tensor& expert_index, const torch::Tensor& weight,
                         const torch::Tensor& keep, RouterOutput& out,
                         const torch::Tensor& position = torch::Tensor(), int64_t num_experts = -1);

/// The choice table of a routing result: out.choices when the gate filled it, otherwise built
/// from the kept assignments (all kept; slot = position, or -1 when dropless).
/// Example: auto table = choice_table(gate->route(x)); auto n_dropped = (~table.kept).sum();
RoutingTable choice_table(const RouterOutput& out);

/// Router z-loss of ST-MoE: mean over tokens of logsumexp(logits)^2. logits: [T, E].
torch::Tensor router_z_loss(const torch::Tensor& logits);

/// Switch/GShard balance loss E * sum_e f_e * P_e, where f_e is the fraction of `choices`
/// (first choices for GShard and BalanceLossChoices::kFirstChoice, all k for kAllChoices)
/// routed to e and P_e the mean probability.
/// probs: [T, E]; choices: [T, c] int64 (before capacity).
torch::Tensor load_balancing_loss(const torch::Tensor& probs, const torch::Tensor& choices);

/// Fills out.z_loss (coefficient applied) and, when coef > 0, out.loss_terms["z"].
/// logits: [T, E].
void apply_z_loss(const torch::Tensor& logits, double coef, RouterOutput& out);

/// Squared coefficient of variation var(x) / (mean(x)^2 + 1e-10) with the population
/// variance (tensor2tensor's cv_squared); 0 for fewer than two entries. x: [n].
torch::Tensor cv_squared(const torch::Tensor& x);

/// Mean entropy of the rows of probs: [T, E].
double mean_entropy(const torch::Tensor& probs);

/// The dtype the router computes in: float32, or wider when x is wider.
torch::ScalarType router_dtype(torch::ScalarType x_dtype);

}  // namespace hybridmoe
