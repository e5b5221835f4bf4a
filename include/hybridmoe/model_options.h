// model_options.h — the options of the decoder (GPTOptions): sizes, norms, positions, attention
// (multi-head / grouped-query or DeepSeek's multi-head latent attention), dense MLPs, where the
// MoE layers sit and how they route. One configurable decoder covers the byte-level GPT of the
// examples and the open MoE families (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V3); the
// family presets are model_preset()'s.
#pragma once

#include <string>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/moe.h"
#include "hybridmoe/recompute.h"

namespace hybridmoe {

/// The normalization of the blocks and of the final norm.
enum class NormType { kLayerNorm, kRMSNorm };
NormType parse_norm_type(const std::string& name);  ///< "layernorm" | "rmsnorm"
std::string to_string(NormType type);

/// How token positions enter the model: a learned position embedding added to the token
/// embedding, or rotary position embedding (RoPE) applied to queries and keys.
enum class PositionType { kLearned, kRope };
PositionType parse_position_type(const std::string& name);  ///< "learned" | "rope"
std::string to_string(PositionType type);

/// How RoPE reaches past the context it was trained on (Hugging Face's rope_scaling "type"):
/// none; linear position interpolation (every inverse frequency divided by rope_factor); or YaRN
/// (arXiv 2309.00071): the inverse frequencies blended between interpolation and extrapolation by
/// a linear ramp over the dimensions between the correction range of yarn_beta_fast and
/// yarn_beta_slow, and cos / sin multiplied by an attention factor.
enum class RopeScaling { kNone, kLinear, kYarn };
RopeScaling parse_rope_scaling(const std::string& name);  ///< "none" | "linear" | "yarn"
std::string to_string(RopeScaling scaling);

/// The attention of the blocks: multi-head (grouped-query when n_kv_heads < n_heads), or
/// DeepSeek's multi-head latent attention (low-rank q and kv with a shared rotary key).
enum class AttentionType { kMultiHead, kLatent };
AttentionType parse_attention_type(const std::string& name);  ///< "mha" | "mla"
std::string to_string(AttentionType type);

/// RMSNorm of queries and keys before RoPE: none; per head over head_dim (Qwen3); or over the
/// whole q / k projection before the head split (OLMoE).
enum class QKNorm { kNone, kPerHead, kWhole };
QKNorm parse_qk_norm(const std::string& name);  ///< "none" | "head" | "whole"
std::string to_string(QKNorm norm);

/// Sizes and architecture of the decoder and of its MoE layers.
///
/// Example:
///   auto opts = GPTOptions().d_model(64).n_layers(4).n_heads(4).moe_every(2).num_experts(4);
///   GPT model(opts);                       // blocks 1 and 3 hold MoE layers
///   auto mixtral = model_preset(ModelFamily::kMixtral);  // tiny Mixtral (model_presets.h)
struct GPTOptions {
  /// Token vocabulary (bytes).
  TORCH_ARG(int64_t, vocab_size) = 256;
  /// Longest sequence (rows of the position embedding).
  TORCH_ARG(int64_t, context) = 64;
  TORCH_ARG(int64_t, d_model) = 64;
  TORCH_ARG(int64_t, n_layers) = 2;
  TORCH_ARG(int64_t, n_heads) = 4;

  // ---- norms ----
  TORCH_ARG(NormType, norm) = NormType::kLayerNorm;
  /// eps of the blocks' norms, the final norm and q/k norms.
  TORCH_ARG(double, norm_eps) = 1e-5;

  // ---- positions ----
  TORCH_ARG(PositionType, position) = PositionType::kLearned;
  TORCH_ARG(double, rope_theta) = 10000.0;
  /// Leading dimensions of each head that RoPE rotates; 0: all of them (with latent attention:
  /// all of qk_rope_head_dim).
  TORCH_ARG(int64_t, rotary_dim) = 0;
  /// RoPE on adjacent pairs (2i, 2i + 1) (DeepSeek's layout) instead of (i, i + rotary_dim / 2).
  TORCH_ARG(bool, rope_interleaved) = false;
  /// RoPE scaling (Hugging Face's config.json `rope_scaling`): kLinear divides every inverse
  /// frequency by rope_factor; kYarn as _compute_yarn_parameters of transformers'
  /// modeling_rope_utils.py. rope_factor must be 1 with kNone and >= 1 otherwise.
  TORCH_ARG(RopeScaling, rope_scaling) = RopeScaling::kNone;
  TORCH_ARG(double, rope_factor) = 1.0;
  /// YaRN: the context the model was pretrained on (original_max_position_embeddings), which
  /// places the correction range; needed (> 0) with kYarn.
  TORCH_ARG(int64_t, rope_original_max_positions) = 0;
  /// YaRN: the rotations (per original context) that bound the ramp: dimensions turning more than
  /// yarn_beta_fast times keep their frequency (extrapolation), those turning fewer than
  /// yarn_beta_slow times are interpolated (frequency / rope_factor); between them a linear ramp.
  TORCH_ARG(double, yarn_beta_fast) = 32.0;
  TORCH_ARG(double, yarn_beta_slow) = 1.0;
  /// YaRN's attention factor, multiplying cos and sin: yarn_attention_factor when > 0; else
  /// mscale(rope_factor, yarn_mscale) / mscale(rope_factor, yarn_mscale_all_dim) when both are
  /// non-zero, else mscale(rope_factor, 1), with mscale(s, m) = 1 for s <= 1, else
  /// 0.1 · m · ln(s) + 1 (transformers' `if mscale and mscale_all_dim`; DeepSeek-V3's
  /// mscale = mscale_all_dim = 1 gives 1). 0 stands for an absent key: a config.json without
  /// "mscale" maps to yarn_mscale 0 (the default 1 is DeepSeek's own code's default).
  TORCH_ARG(double, yarn_attention_factor) = 0.0;
  TORCH_ARG(double, yarn_mscale) = 1.0;
  /// Non-zero: latent attention's softmax scale is also multiplied by
  /// mscale(rope_factor, yarn_mscale_all_dim)² whenever rope_scaling is not none (DeepSeek-V3's
  /// attention in transformers); multi-head attention's scale is never changed.
  TORCH_ARG(double, yarn_mscale_all_dim) = 0.0;
  /// YaRN: the correction range's bounds rounded outwards to whole dimensions (floor / ceil;
  /// transformers' `truncate`, true unless a config says false, as gpt-oss does).
  TORCH_ARG(bool, yarn_truncate) = true;

  // ---- attention ----
  TORCH_ARG(AttentionType, attention) = AttentionType::kMultiHead;
  /// Key/value heads (grouped-query attention); 0: n_heads.
  TORCH_ARG(int64_t, n_kv_heads) = 0;
  /// Width of one head; 0: d_model / n_heads.
  TORCH_ARG(int64_t, head_dim) = 0;
  /// Biases of the q, k, v projections, and of the output projection. The k bias exists only
  /// where it can change attention (with RoPE, a q/k norm or clip_qkv): otherwise softmax ignores
  /// the per-query constant q·b_k it adds.
  TORCH_ARG(bool, qkv_bias) = true;
  TORCH_ARG(bool, attn_out_bias) = true;
  TORCH_ARG(QKNorm, qk_norm) = QKNorm::kNone;
  /// > 0: q, k and v clamped to [-clip_qkv, clip_qkv] (OLMoE); 0: no clamp.
  TORCH_ARG(double, clip_qkv) = 0.0;
  /// Multi-head latent attention (attention = kLatent): q through a rank-q_lora_rank bottleneck
  /// (0: one direct projection), k and v from a rank-kv_lora_rank latent; each head's query and
  /// key are qk_nope_head_dim unrotated + qk_rope_head_dim rotated dimensions (the rotated key
  /// one for all heads), its value v_head_dim wide. The latents' RMSNorms use latent_norm_eps.
  TORCH_ARG(int64_t, q_lora_rank) = 0;
  TORCH_ARG(int64_t, kv_lora_rank) = 0;
  TORCH_ARG(int64_t, qk_nope_head_dim) = 0;
  TORCH_ARG(int64_t, qk_rope_head_dim) = 0;
  TORCH_ARG(int64_t, v_head_dim) = 0;
  TORCH_ARG(double, latent_norm_eps) = 1e-6;

  // ---- dense MLPs ----
  /// Hidden width of the dense MLP; 0 means 4 * d_model.
  TORCH_ARG(int64_t, d_mlp) = 0;
  /// kGelu: fc2(gelu(fc1 x)); kSwiGLU: down(silu(gate x) * up x) (the names of the layers stay
  /// fc1 = gate, fc3 = up, fc2 = down).
  TORCH_ARG(Activation, mlp_activation) = Activation::kGelu;
  TORCH_ARG(bool, mlp_bias) = true;

  // ---- where the MoE layers are ----
  /// An MoE layer replaces the MLP of every block i with (i + 1) % moe_every == 0 (Qwen's
  /// decoder_sparse_step), i >= first_k_dense (DeepSeek's first_k_dense_replace) and i not in
  /// mlp_only_layers; moe_every = 0: no MoE.
  TORCH_ARG(int64_t, moe_every) = 0;
  TORCH_ARG(int64_t, first_k_dense) = 0;
  TORCH_ARG(std::vector<int64_t>, mlp_only_layers);
  /// The output head shares the token embedding's weight; false: its own lm_head.
  TORCH_ARG(bool, tie_embeddings) = true;

  // ---- the MoE layers ----
  TORCH_ARG(int64_t, num_experts) = 4;
  /// Hidden width of each expert; 0 means the dense MLP's width.
  TORCH_ARG(int64_t, expert_hidden) = 0;
  TORCH_ARG(Activation, expert_activation) = Activation::kGelu;
  TORCH_ARG(bool, expert_bias) = true;
  /// Hidden width of the shared expert every token also passes through; 0: none.
  TORCH_ARG(int64_t, shared_expert_hidden) = 0;
  /// The shared expert's output scaled by sigmoid(x · g) (Qwen2-MoE); false: added as is.
  TORCH_ARG(bool, shared_expert_gate) = false;
  /// The gates of the MoE layers (type, top_k, scores, bias, groups, capacity, losses).
  TORCH_ARG(GateOptions, gate);
  /// Layout options of the distributed MoE layers (MoEOptions of the same names); a
  /// single-process model takes single_process() options.
  TORCH_ARG(ExpertLayout, expert_layout) = ExpertLayout::kFixed;
  TORCH_ARG(int64_t, adaptive_r) = 1;
  TORCH_ARG(int64_t, a2a_overlap_degree) = 1;
  TORCH_ARG(ReplicateOptions, replicate) = ReplicateOptions();
  TORCH_ARG(A2AAlgorithm, a2a_algorithm) = A2AAlgorithm::kFlat;
  /// Activation recomputation in training: kNone, kBlock (each block keeps only its input) or
  /// kMoE (each MoE layer keeps only its input). See recompute.h.
  TORCH_ARG(Recompute, recompute) = Recompute::kNone;
  /// With recompute: replay the collectives' results of the first forward instead of
  /// communicating again (DeepSpeed-TED's communication-aware checkpointing).
  TORCH_ARG(bool, recompute_cache_comm) = true;

 public:
  int64_t mlp_hidden() const { return d_mlp_ > 0 ? d_mlp_ : 4 * d_model_; }
  int64_t kv_heads() const { return n_kv_heads_ > 0 ? n_kv_heads_ : n_heads_; }
  int64_t head_size() const { return head_dim_ > 0 ? head_dim_ : d_model_ / n_heads_; }
  /// The dimensions of each head that RoPE rotates: qk_rope_head_dim with latent attention,
  /// else rotary_dim or, when 0, the head size.
  int64_t rope_dims() const;
  bool is_moe_block(int64_t i) const;
  /// The MoEOptions of the model's MoE layers.
  MoEOptions moe_options() const;
  /// The same model on one process: the layout options reset (fixed experts, no overlap).
  GPTOptions single_process() const;
  /// Refuses inconsistent options by name (heads and kv heads, head sizes, latent ranks, RoPE
  /// scaling, layer placement); tp: the tensor-parallel degree the model is built for.
  void check(int64_t tp = 1) const;

 private:
  void check_rope_scaling() const;
};

}  // namespace hybridmoe
