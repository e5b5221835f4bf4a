// attention.h — the decoder's normalization, rotary position embedding and two attentions:
// causal multi-head / grouped-query attention (optional q/k norms, clipping, RoPE) and DeepSeek's
// multi-head latent attention. Both are tensor parallel over tp by heads (Megatron style) when
// built with ParallelGroups, and plain layers on one process.
#pragma once

#include <memory>

#include <torch/torch.h>

#include "hybridmoe/model_options.h"
#include "hybridmoe/parallel.h"
#include "hybridmoe/tensor_parallel.h"

namespace hybridmoe {

/// LayerNorm (weight and bias) or RMSNorm (weight only; x / sqrt(mean(x²) + eps) · weight,
/// computed in float32 at least) over the last dimension.
///
/// Example:
///   Norm n(NormType::kRMSNorm, 64, 1e-6);
///   auto y = n(x);                         // x: [..., 64] → [..., 64]
class NormImpl : public torch::nn::Module, public TensorParallelShards {
 public:
  NormImpl(NormType type, int64_t dim, double eps);
  /// x: [..., dim] → [..., dim].
  torch::Tensor forward(const torch::Tensor& x);
  /// {"weight"} when this norm holds a tp rank's part of a wider norm's weight (OLMoE's q/k
  /// norm over a split projection; set split_over_tp), else nothing.
  std::vector<std::string> tp_shard_names() const override;

  bool split_over_tp = false;
  NormType type;
  int64_t dim;
  double eps;
  torch::Tensor weight;  // [dim], starts at 1
  torch::Tensor bias;    // [dim], starts at 0; LayerNorm only
};
TORCH_MODULE(Norm);

/// The RMSNorm formula alone: x / sqrt(mean over the last dim of x² + eps) · weight, computed in
/// float32 (float64 for float64 input) and returned in x's dtype. x: [..., n], weight: [n].
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

/// RoPE's rotation speeds and size, made from the options by rope_frequencies(): position p
/// turns pair j by the angle p · inv_freq[j], and cos and sin are multiplied by attention_factor.
struct RopeFrequencies {
  torch::Tensor inv_freq;         ///< [rotary_dim / 2] float64
  double attention_factor = 1.0;  ///< YaRN's factor on cos and sin; 1 without YaRN
};

/// The frequencies of `rotary_dim` rotated dimensions under the options' rope_theta and
/// rope_scaling (float64, on `device`), as transformers' modeling_rope_utils.py computes them:
///   none:   inv_freq[j] = theta^(-2j / rotary_dim);
///   linear: the same divided by rope_factor;
///   yarn:   (1 - ramp_j) · inv_freq[j] + ramp_j · inv_freq[j] / rope_factor, ramp_j =
///           clamp((j - low) / (high - low), 0, 1), where low / high are the dimensions turning
///           yarn_beta_fast / yarn_beta_slow times over rope_original_max_positions (rounded out
///           with yarn_truncate, clamped to [0, rotary_dim - 1]); attention_factor as the options
///           describe (model_options.h).
/// rope_scaling's options are the caller's to check (GPTOptions::check).
///
/// Example:
///   auto o = GPTOptions().position(PositionType::kRope).rope_scaling(RopeScaling::kYarn)
///                .rope_factor(40).rope_original_max_positions(4096).yarn_mscale_all_dim(1);
///   auto f = rope_frequencies(o, 64);                  // DeepSeek-V3's rotary dims
///   auto y = apply_rope(x, f, /*interleaved=*/true);   // x: [..., S, 64]
RopeFrequencies rope_frequencies(const GPTOptions& options, int64_t rotary_dim,
                                 torch::Device device = torch::kCPU);

/// The factor on latent attention's softmax scale 1 / sqrt(qk_nope_head_dim + qk_rope_head_dim):
/// mscale(rope_factor, yarn_mscale_all_dim)² when rope_scaling is not none and
/// yarn_mscale_all_dim is non-zero (DeepSeek-V3's attention in transformers), else 1.
double latent_softmax_mscale(const GPTOptions& options);

/// Rotary position embedding of the first 2 · f.inv_freq.size(0) dimensions of every row of x
/// (the rest pass through): position p rotates pair j by the angle p · f.inv_freq[j], and the
/// rotated pairs are multiplied by f.attention_factor. The pairs are (j, j + rotary_dim / 2) (the
/// Llama / Mistral / Qwen layout) or, interleaved, (2j, 2j + 1) (DeepSeek's layout).
/// x: [..., S, head_dim] with positions start .. start + S - 1 along dim -2 → same shape.
torch::Tensor apply_rope(const torch::Tensor& x, const RopeFrequencies& f, bool interleaved,
                         int64_t start = 0);
/// Unscaled RoPE with base theta over rotary_dim dimensions (0: all of head_dim): position p
/// rotates pair j by p · theta^(-2j / rotary_dim).
torch::Tensor apply_rope(const torch::Tensor& x, double theta, int64_t rotary_dim, bool interleaved,
                         int64_t start = 0);

/// Causal multi-head or grouped-query self-attention:
///   q, k, v = x W_q (+ b), x W_k (+ b), x W_v (+ b); optional clip, q/k RMSNorm and RoPE;
///   softmax(q kᵀ / sqrt(head_dim) + causal mask) v, heads concatenated, W_o (+ b).
/// With tp > 1 q and the output projection are split by heads; k and v by kv heads when tp
/// divides n_kv_heads, or held whole on every rank (each rank using the kv heads its q heads
/// need) when n_kv_heads divides tp.
///
/// Parameters (single process): q_proj [H·hd, d], k_proj / v_proj [KV·hd, d], o_proj [d, H·hd],
/// biases as the options say; q_norm / k_norm (per head: [hd]; whole: [H·hd] / [KV·hd]).
///
/// Example:
///   CausalSelfAttention attn(GPTOptions().d_model(64).n_heads(8).n_kv_heads(2), groups);
///   auto y = attn(x);                      // x: [B, S, 64] → [B, S, 64]
class CausalSelfAttentionImpl : public torch::nn::Module {
 public:
  CausalSelfAttentionImpl(const GPTOptions& options,
                          std::shared_ptr<const ParallelGroups> groups = nullptr);
  /// x: [B, S, d_model] (replicated over tp) → [B, S, d_model] (replicated over tp).
  torch::Tensor forward(const torch::Tensor& x);
  /// Copies this rank's shard of every parameter from a single-process attention of the same
  /// options.
  void load_shard_from(CausalSelfAttentionImpl& full);
  /// Fills `full` (single-process, same options) with the whole attention gathered from the tp
  /// group's shards. Collective over tp.
  void gather_full(CausalSelfAttentionImpl& full);

  ColumnParallelLinear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr};
  RowParallelLinear o_proj{nullptr};
  Norm q_norm{nullptr}, k_norm{nullptr};  ///< null without q/k norms

 private:
  /// OLMoE's RMSNorm over the whole projection; x: [B, S, width held here].
  torch::Tensor whole_norm(const torch::Tensor& x, Norm& norm, bool split) const;

  GPTOptions options_;
  std::shared_ptr<const ParallelGroups> groups_;
  int64_t tp_ = 1, tp_rank_ = 0, local_heads_ = 1, held_kv_heads_ = 1;
  bool kv_whole_ = false;   ///< k, v held whole on every tp rank (n_kv_heads < tp)
  torch::Tensor kv_index_;  ///< [local_heads] the held kv head of each local q head
};
TORCH_MODULE(CausalSelfAttention);

/// DeepSeek-V3's multi-head latent attention (causal):
///   q  = (q_lora_rank ? q_b(rmsnorm(q_a x)) : q_proj x), per head [nope | rope];
///   kv = kv_a x = [c (kv_lora_rank) | k_rope (qk_rope_head_dim, one for all heads)];
///   [k_nope | v] per head = kv_b(rmsnorm(c));
///   RoPE on q's rope part and k_rope; key = [k_nope | k_rope]; softmax scale
///   latent_softmax_mscale / sqrt(qk_nope_head_dim + qk_rope_head_dim); output o_proj(heads of v).
/// With tp > 1 the per-head projections (q_b or q_proj, kv_b) are column parallel and o_proj row
/// parallel; q_a, kv_a and the latents' norms are held whole on every rank.
///
/// Example:
///   auto o = GPTOptions().attention(AttentionType::kLatent).d_model(64).n_heads(4)
///                .q_lora_rank(32).kv_lora_rank(16).qk_nope_head_dim(16)
///                .qk_rope_head_dim(8).v_head_dim(16);
///   MultiHeadLatentAttention attn(o, groups);
///   auto y = attn(x);                      // x: [B, S, 64] → [B, S, 64]
class MultiHeadLatentAttentionImpl : public torch::nn::Module {
 public:
  MultiHeadLatentAttentionImpl(const GPTOptions& options,
                               std::shared_ptr<const ParallelGroups> groups = nullptr);
  /// x: [B, S, d_model] (replicated over tp) → [B, S, d_model] (replicated over tp).
  torch::Tensor forward(const torch::Tensor& x);
  void load_shard_from(MultiHeadLatentAttentionImpl& full);
  /// Collective over tp; see CausalSelfAttentionImpl::gather_full.
  void gather_full(MultiHeadLatentAttentionImpl& full);

  /// q_proj (q_lora_rank = 0) or q_a_proj → q_a_norm → q_b_proj; kv_a_proj → kv_a_norm (of its
  /// first kv_lora_rank outputs) → kv_b_proj; o_proj. Held whole over tp: q_a_proj, q_a_norm,
  /// kv_a_proj, kv_a_norm (ColumnParallelLinear built without groups).
  ColumnParallelLinear q_proj{nullptr}, q_a_proj{nullptr}, q_b_proj{nullptr};
  ColumnParallelLinear kv_a_proj{nullptr}, kv_b_proj{nullptr};
  RowParallelLinear o_proj{nullptr};
  Norm q_a_norm{nullptr}, kv_a_norm{nullptr};

 private:
  GPTOptions options_;
  std::shared_ptr<const ParallelGroups> groups_;
};
TORCH_MODULE(MultiHeadLatentAttention);

}  // namespace hybridmoe
