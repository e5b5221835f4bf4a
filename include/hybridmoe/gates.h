// gates.h — the concrete gates: "topk", "gshard", "switch", "noisy", "sinkhorn" and
// "expert_choice". Each is also buildable by name through make_gate(), and each reports its
// loss terms in RouterOutput::loss_terms ("balance", "importance", "load", "z", ...).
#pragma once

#include <tuple>

#include <torch/torch.h>

#include "hybridmoe/gate.h"

namespace hybridmoe {

/// A gate with a linear router without bias: logits = x W^T, W: [E, d_model], computed in the
/// router dtype (float32, or float64 for float64 inputs).
class LinearGateImpl : public GateImpl {
 public:
  LinearGateImpl(int64_t d_model, int64_t num_experts, GateOptions options);
  /// W ~ U(-1/sqrt(d_model), 1/sqrt(d_model)).
  virtual void reset_parameters();

  torch::Tensor weight;  // [E, d_model]

 protected:
  /// Checks x: [T, d_model] and returns its logits [T, E]; `who` names the gate in errors.
  torch::Tensor logits_of(const torch::Tensor& x, const char* who) const;
};

/// "topk": linear router, softmax over experts, the k largest (ties go to the lower expert
/// index), optionally renormalized over the k before or after capacity (weight_normalization;
/// normalize_top_k_weights is Mixtral's before-capacity renormalization). With
/// softmax_over_topk the k largest logits are chosen and the weights are the softmax over
/// those k (FastMoE's naive gate, Megatron-Core's default). Optional capacity: capacity_formula,
/// drop_policy, slot_order and batch_prioritized decide its size, who is dropped and the slots.
/// Balance loss: aux_loss_coef * E * sum_e f_e P_e, f_e over all k choices before capacity, or
/// over first choices (balance_loss_choices). Every convention applies (routing_rules.h).
/// With bias_update_rate > 0, a per-expert bias (DeepSeek-V3's auxiliary-loss-free balancing)
/// is added to the scores (probabilities, or logits with softmax_over_topk) for the selection
/// only; the weights stay the unbiased scores; after_step() moves the bias toward balance.
///
/// Example:
///   auto gate = std::make_shared<TopKGateImpl>(512, 8, GateOptions().top_k(2));
///   RouterOutput r = gate->route(x);   // x: [T, 512]
class TopKGateImpl : public LinearGateImpl {
 public:
  TopKGateImpl(int64_t d_model, int64_t num_experts, GateOptions options);
  RouterOutput route(const torch::Tensor& x) override;
  /// bias_e += bias_update_rate * sign(mean_e' load_e' - load_e); resets the load counters.
  void after_step() override;

  torch::Tensor expert_bias;  // [E] buffer, router dtype float32
  torch::Tensor step_load;    // [E] buffer: choices per expert since the last after_step()

 private:
  /// Group-limited selection: the scores of the groups not kept set to 0. select: [T, E].
  torch::Tensor limit_to_groups(const torch::Tensor& select) const;
};

/// "cosine": Tutel's cosine router (tutel/gates/cosine_top.py, CosineTopKGate) with the
/// top-k routing of "topk" (every routing rule, e.g. convention tutel). Logits:
///   logits = normalize(x P^T + b) · normalize(S, over the projection dim) * exp(min(tau, log 100))
/// with P: [proj, d_model], b: [proj] (Tutel's cosine_projector, a Linear with bias),
/// S: [proj, E] (sim_matrix, init N(0, 0.01)), tau a learned scalar initialized to
/// log(1 / cosine_init_temperature) and clamped at log(1 / 0.01) (Tutel's clamp_max);
/// normalize(v) = v / max(||v||, 1e-12) as torch's F.normalize. No loss-free bias.
///
/// Example:
///   auto gate = make_gate(512, 8, GateOptions().type("cosine").top_k(2)
///                                     .convention(Convention::kTutel).capacity_factor(1.0));
class CosineGateImpl : public GateImpl {
 public:
  CosineGateImpl(int64_t d_model, int64_t num_experts, GateOptions options);
  RouterOutput route(const torch::Tensor& x) override;
  /// P, b ~ U(-1/sqrt(d_model), 1/sqrt(d_model)) (torch's Linear), S ~ N(0, 0.01),
  /// tau = log(1 / cosine_init_temperature).
  void reset_parameters();
  /// The scaled cosine logits [T, E] of x: [T, d_model], in the router dtype, checked finite.
  torch::Tensor logits_of(const torch::Tensor& x) const;

  torch::Tensor projection_weight;  // [proj, d_model]
  torch::Tensor projection_bias;    // [proj]
  torch::Tensor sim_matrix;         // [proj, E]
  torch::Tensor temperature;        // [1]: the learned log of the logit scale
};

/// "gshard": top-2 as in GShard / DeepSpeed's top2gating. Steps: softmax; first expert =
/// argmax; second = argmax over the others (of logits + Gumbel noise with
/// gumbel_second_expert, in training); optional random routing of the second expert (kept if
/// 2 * p2 / (p1 + p2) > u, in training); capacity slots to all first choices in token order,
/// then to the second choices (drop_policy position) or by weight (probs); the kept weights of
/// each token renormalized to sum to one. top_k must be 2.
/// Balance loss: aux_loss_coef * E * sum_e mean_t(p_te) * fraction of first choices to e.
///
/// Example:
///   auto gate = make_gate(512, 8, GateOptions().type("gshard").capacity_factor(1.0));
class GShardGateImpl : public LinearGateImpl {
 public:
  GShardGateImpl(int64_t d_model, int64_t num_experts, GateOptions options);
  RouterOutput route(const torch::Tensor& x) override;
  bool route_is_reentrant() const override { return false; }  // draws noise, keeps it

  /// The Gumbel noise [T, E] and the uniforms [T] of the last training forward (undefined when
  /// not drawn), for tests and debugging.
  torch::Tensor last_gumbel, last_uniform;
};

/// "switch": top-1 as in the Switch Transformer. In training the router input is multiplied
/// by jitter ~ U[1 - jitter_eps, 1 + jitter_eps] (elementwise). The weight is the softmax
/// probability of the chosen expert. Capacity uses top_k = 1. Without random token selection
/// an over-full expert keeps its tokens in slot order — token order by default (DeepSpeed's
/// top1gating leaves that choice to torch.topk over equal mask values), or by descending top
/// probability with batch_prioritized, or the most probable with drop_policy probs. With
/// random_token_selection (DeepSpeed's use_rts, training only) it keeps the tokens of highest
/// uniform score and numbers the kept ones in token order (DeepSpeed's cumsum of the kept mask).
/// Conventions: deepspeed and tutel (k = 1).
/// Balance loss: aux_loss_coef * E * sum_e f_e P_e (f_e: fraction of tokens whose argmax is e).
///
/// Example:
///   auto gate = make_gate(512, 8, GateOptions().type("switch").top_k(1).jitter_eps(0.01)
///                                     .capacity_factor(1.25).aux_loss_coef(0.01));
class SwitchGateImpl : public LinearGateImpl {
 public:
  SwitchGateImpl(int64_t d_model, int64_t num_experts, GateOptions options);
  RouterOutput route(const torch::Tensor& x) override;
  bool route_is_reentrant() const override { return false; }  // draws jitter, keeps it

  /// The jitter [T, d_model] and RTS scores [T] of the last training forward, when drawn.
  torch::Tensor last_jitter, last_rts_scores;
};

/// "noisy": Shazeer et al. 2017 noisy top-k. H = x W^T + n * softplus(x W_noise^T) (+
/// noise_epsilon), n ~ N(0, 1) in training (H = x W^T in evaluation); the k largest H; weights
/// = softmax over those k. Losses (coefficient aux_loss_coef on their sum, as tensor2tensor):
/// importance = cv²(sum_t g_t), load = cv²(sum_t P(t, e)) with
/// P(t, e) = Φ((clean_te - kth_excluding(H_t, k, e)) / std_te) in training; in evaluation the
/// load is the count of tokens per expert. cv² = population variance / (mean² + 1e-10).
///
/// Example:
///   auto gate = make_gate(512, 16, GateOptions().type("noisy").top_k(4).aux_loss_coef(0.1));
class NoisyTopKGateImpl : public LinearGateImpl {
 public:
  NoisyTopKGateImpl(int64_t d_model, int64_t num_experts, GateOptions options);
  RouterOutput route(const torch::Tensor& x) override;
  bool route_is_reentrant() const override { return false; }  // draws noise, keeps it
  /// W as LinearGateImpl, W_noise = 0 (the paper's initialization).
  void reset_parameters() override;

  torch::Tensor noise_weight;  // [E, d_model]
  /// The standard normal noise [T, E] of the last training forward.
  torch::Tensor last_noise;
};

/// "sinkhorn": selection of the k largest entries of sinkhorn(logits) (Megatron-Core's
/// Sinkhorn load balancing; training only, plain top-k of the scores in evaluation); the
/// weights are the softmax probabilities of the chosen experts. No balance loss. Optional
/// capacity as in "topk".
///
/// Example:
///   auto gate = make_gate(512, 8, GateOptions().type("sinkhorn").top_k(1));
class SinkhornGateImpl : public LinearGateImpl {
 public:
  SinkhornGateImpl(int64_t d_model, int64_t num_experts, GateOptions options);
  RouterOutput route(const torch::Tensor& x) override;
  bool route_is_reentrant() const override { return false; }  // keeps its last iterations

  int64_t last_iterations = 0;  ///< Sinkhorn iterations of the last training forward
  double last_error = 0.0;      ///< its final convergence error
};

/// Result of sinkhorn().
struct SinkhornResult {
  torch::Tensor scores;    // [T, E] float64
  int64_t iterations = 0;  ///< iterations run
  double error = 0.0;      ///< mean |d1_new - d1_old| at the last iteration
};

/// Sinkhorn normalization of exp(logits) (computed in float64) toward uniform row sums 1/T and
/// column sums 1/E, as Megatron-Core: repeat d0 = 1/T / (exp(L) d1 + 1e-8), d1 = 1/E / (d0^T exp(L)
/// + 1e-8) until mean |Δd1| <= tolerance or max_iterations; returns d1 * exp(L) * d0. logits: [T,
/// E]; no grad. Example: auto s = sinkhorn(logits, 1e-4, 100).scores;
SinkhornResult sinkhorn(const torch::Tensor& logits, double tolerance, int64_t max_iterations);

/// "expert_choice" (Zhou et al. 2022): softmax over experts, then each expert takes its
/// C = min(T, max(min_capacity, ceil(T * capacity_factor / E))) tokens of highest probability
/// (ties to the lower token index); weight = that probability. A token may get zero or several
/// experts. capacity_factor (and eval_capacity_factor) must be > 0. Assignments are listed
/// token-major (by token, then expert); `dropped` counts the tokens that no expert chose; no
/// balance loss. `position` is the rank of the token in its expert's choice.
///
/// Example:
///   auto gate = make_gate(512, 8, GateOptions().type("expert_choice").capacity_factor(2.0));
class ExpertChoiceGateImpl : public LinearGateImpl {
 public:
  ExpertChoiceGateImpl(int64_t d_model, int64_t num_experts, GateOptions options);
  RouterOutput route(const torch::Tensor& x) override;
};

/// Router logits in the router dtype, checked finite. x: [T, d]; weight: [E, d] → [T, E].
torch::Tensor router_logits(const torch::Tensor& x, const torch::Tensor& weight);

/// The k largest entries of each row, ties broken toward the lower column (stable).
/// scores: [T, E] → (values [T, k], indices [T, k] int64).
std::tuple<torch::Tensor, torch::Tensor> stable_topk(const torch::Tensor& scores, int64_t k);

}  // namespace hybridmoe
