// model_options.cpp — see model_options.h: the decoder options' names, the layer placement of
// the MoE layers, the MoE options they imply, and the checks that refuse inconsistent options.
#include <algorithm>
#include <cmath>

#include "core/enum_names.h"
#include "hybridmoe/model_options.h"

namespace hybridmoe {

namespace {

const detail::EnumNames<NormType> kNormNames{
    "norm", {{NormType::kLayerNorm, "layernorm"}, {NormType::kRMSNorm, "rmsnorm"}}};
const detail::EnumNames<PositionType> kPositionNames{
    "position", {{PositionType::kLearned, "learned"}, {PositionType::kRope, "rope"}}};
const detail::EnumNames<RopeScaling> kRopeScalingNames{
    "rope_scaling",
    {{RopeScaling::kNone, "none"}, {RopeScaling::kLinear, "linear"}, {RopeScaling::kYarn, "yarn"}}};
const detail::EnumNames<AttentionType> kAttentionNames{
    "attention", {{AttentionType::kMultiHead, "mha"}, {AttentionType::kLatent, "mla"}}};
const detail::EnumNames<QKNorm> kQKNormNames{
    "qk_norm", {{QKNorm::kNone, "none"}, {QKNorm::kPerHead, "head"}, {QKNorm::kWhole, "whole"}}};

}  // namespace

NormType parse_norm_type(const std::string& name) {
  return kNormNames.parse(name);
}
std::string to_string(NormType type) {
  return kNormNames.name_of(type);
}
PositionType parse_position_type(const std::string& name) {
  return kPositionNames.parse(name);
}
std::string to_string(PositionType type) {
  return kPositionNames.name_of(type);
}
RopeScaling parse_rope_scaling(const std::string& name) {
  return kRopeScalingNames.parse(name);
}
std::string to_string(RopeScaling scaling) {
  return kRopeScalingNames.name_of(scaling);
}
AttentionType parse_attention_type(const std::string& name) {
  return kAttentionNames.parse(name);
}
std::string to_string(AttentionType type) {
  return kAttentionNames.name_of(type);
}
QKNorm parse_qk_norm(const std::string& name) {
  return kQKNormNames.parse(name);
}
std::string to_string(QKNorm norm) {
  return kQKNormNames.name_of(norm);
}

bool GPTOptions::is_moe_block(int64_t i) const {
  if (moe_every_ <= 0 || (i + 1) % moe_every_ != 0 || i < first_k_dense_) return false;
  return std::find(mlp_only_layers_.begin(), mlp_only_layers_.end(), i) == mlp_only_layers_.end();
}

int64_t GPTOptions::rope_dims() const {
  if (attention_ == AttentionType::kLatent) return qk_rope_head_dim_;
  return rotary_dim_ > 0 ? rotary_dim_ : head_size();
}

MoEOptions GPTOptions::moe_options() const {
  MoEOptions m(d_model_, num_experts_);
  m.d_hidden(expert_hidden_ > 0 ? expert_hidden_ : mlp_hidden());
  m.activation(expert_activation_).bias(expert_bias_);
  m.shared_expert_hidden(shared_expert_hidden_).shared_expert_gate(shared_expert_gate_);
  m.gate(gate_);
  m.expert_layout(expert_layout_).adaptive_r(adaptive_r_).a2a_overlap_degree(a2a_overlap_degree_);
  m.replicate(replicate_).a2a_algorithm(a2a_algorithm_);
  return m;
}

GPTOptions GPTOptions::single_process() const {
  GPTOptions o = *this;
  o.expert_layout(ExpertLayout::kFixed).adaptive_r(1).a2a_overlap_degree(1);
  o.replicate(ReplicateOptions()).a2a_algorithm(A2AAlgorithm::kFlat);
  return o;
}

void GPTOptions::check_rope_scaling() const {
  const std::string scaling = to_string(rope_scaling_);
  TORCH_CHECK(std::isfinite(rope_factor_), "model: rope_factor must be finite, got ", rope_factor_);
  if (rope_scaling_ == RopeScaling::kNone) {
    TORCH_CHECK(rope_factor_ == 1.0, "model: rope_factor=", rope_factor_,
                " has no effect with rope_scaling none; set rope_scaling linear or yarn, or "
                "rope_factor 1");
    return;
  }
  TORCH_CHECK(position_ == PositionType::kRope, "model: rope_scaling=", scaling,
              " scales RoPE; position must be rope, got ", to_string(position_));
  TORCH_CHECK(rope_factor_ >= 1.0, "model: rope_factor must be >= 1 with rope_scaling ", scaling,
              " (it stretches the context), got ", rope_factor_);
  TORCH_CHECK(std::isfinite(yarn_mscale_all_dim_) && yarn_mscale_all_dim_ >= 0.0,
              "model: yarn_mscale_all_dim must be >= 0 (0: off), got ", yarn_mscale_all_dim_);
  if (rope_scaling_ != RopeScaling::kYarn) return;
  TORCH_CHECK(rope_original_max_positions_ > 0,
              "model: rope_scaling yarn needs rope_original_max_positions > 0 (the pretrained "
              "context, original_max_position_embeddings), got ",
              rope_original_max_positions_);
  TORCH_CHECK(std::isfinite(yarn_beta_fast_) && std::isfinite(yarn_beta_slow_) &&
                  yarn_beta_slow_ > 0.0 && yarn_beta_fast_ >= yarn_beta_slow_,
              "model: yarn needs 0 < yarn_beta_slow <= yarn_beta_fast, got yarn_beta_fast=",
              yarn_beta_fast_, ", yarn_beta_slow=", yarn_beta_slow_);
  TORCH_CHECK(std::isfinite(yarn_attention_factor_) && yarn_attention_factor_ >= 0.0,
              "model: yarn_attention_factor must be >= 0 (0: from the mscales), got ",
              yarn_attention_factor_);
  TORCH_CHECK(std::isfinite(yarn_mscale_) && yarn_mscale_ >= 0.0,
              "model: yarn_mscale must be >= 0, got ", yarn_mscale_);
}

void GPTOptions::check(int64_t tp) const {
  TORCH_CHECK(vocab_size_ > 0 && context_ > 0 && d_model_ > 0 && n_layers_ > 0 && n_heads_ > 0,
              "model: sizes must be positive, got vocab_size ", vocab_size_, ", context ", context_,
              ", d_model ", d_model_, ", n_layers ", n_layers_, ", n_heads ", n_heads_);
  TORCH_CHECK(norm_eps_ > 0.0, "model: norm_eps must be > 0, got ", norm_eps_);
  TORCH_CHECK(rope_theta_ > 0.0, "model: rope_theta must be > 0, got ", rope_theta_);
  TORCH_CHECK(n_heads_ % tp == 0, "model: n_heads=", n_heads_, " must be divisible by tp=", tp);
  check_rope_scaling();
  if (attention_ == AttentionType::kMultiHead) {
    // 1. Heads, kv heads and their split over tp.
    TORCH_CHECK(n_kv_heads_ >= 0, "model: n_kv_heads must be >= 0 (0: n_heads), got ", n_kv_heads_);
    TORCH_CHECK(n_heads_ % kv_heads() == 0, "model: n_heads=", n_heads_,
                " must be divisible by n_kv_heads=", kv_heads());
    TORCH_CHECK(kv_heads() % tp == 0 || tp % kv_heads() == 0, "model: tp=", tp,
                " must divide n_kv_heads=", kv_heads(),
                " (kv heads split over tp) or be a multiple of it (kv heads whole on every rank)");
    TORCH_CHECK(head_dim_ > 0 || d_model_ % n_heads_ == 0, "model: d_model=", d_model_,
                " must be divisible by n_heads=", n_heads_, " unless head_dim is given");
    TORCH_CHECK(head_dim_ >= 0, "model: head_dim must be >= 0 (0: d_model / n_heads), got ",
                head_dim_);
    const int64_t rot = rotary_dim_ > 0 ? rotary_dim_ : head_size();
    TORCH_CHECK(position_ != PositionType::kRope || (rot % 2 == 0 && rot <= head_size()),
                "model: rotary_dim=", rot, " must be even and at most the head size ", head_size());
  } else {
    // 2. Latent attention.
    TORCH_CHECK(kv_lora_rank_ > 0 && qk_rope_head_dim_ > 0 && v_head_dim_ > 0,
                "model: latent attention needs kv_lora_rank, qk_rope_head_dim and v_head_dim > 0, "
                "got ",
                kv_lora_rank_, ", ", qk_rope_head_dim_, ", ", v_head_dim_);
    TORCH_CHECK(q_lora_rank_ >= 0 && qk_nope_head_dim_ >= 0,
                "model: q_lora_rank and qk_nope_head_dim must be >= 0, got ", q_lora_rank_, ", ",
                qk_nope_head_dim_);
    TORCH_CHECK(qk_rope_head_dim_ % 2 == 0, "model: qk_rope_head_dim must be even, got ",
                qk_rope_head_dim_);
    TORCH_CHECK(rotary_dim_ == 0 || rotary_dim_ == qk_rope_head_dim_,
                "model: with latent attention RoPE rotates qk_rope_head_dim=", qk_rope_head_dim_,
                " dimensions; rotary_dim must be 0 or that, got ", rotary_dim_);
    TORCH_CHECK(position_ == PositionType::kRope,
                "model: latent attention carries positions in its rotary key; position must be "
                "rope, got ",
                to_string(position_));
    TORCH_CHECK(n_kv_heads_ == 0 || n_kv_heads_ == n_heads_,
                "model: latent attention has no kv heads of its own; n_kv_heads must be 0, got ",
                n_kv_heads_);
    TORCH_CHECK(qk_norm_ == QKNorm::kNone && clip_qkv_ == 0.0,
                "model: latent attention normalizes its latents; qk_norm must be none and clip_qkv "
                "0, got ",
                to_string(qk_norm_), ", ", clip_qkv_);
    TORCH_CHECK(latent_norm_eps_ > 0.0, "model: latent_norm_eps must be > 0, got ",
                latent_norm_eps_);
  }
  TORCH_CHECK(clip_qkv_ >= 0.0, "model: clip_qkv must be >= 0 (0: off), got ", clip_qkv_);
  // 3. Where the MoE layers are.
  TORCH_CHECK(moe_every_ >= 0 && first_k_dense_ >= 0,
              "model: moe_every and first_k_dense must be >= 0, got ", moe_every_, ", ",
              first_k_dense_);
  for (int64_t i : mlp_only_layers_)
    TORCH_CHECK(i >= 0 && i < n_layers_, "model: mlp_only_layers holds ", i,
                ", expected a block index in [0, ", n_layers_, ")");
  TORCH_CHECK(mlp_activation_ == Activation::kGelu || mlp_activation_ == Activation::kSwiGLU,
              "model: mlp_activation must be gelu or swiglu, got ", to_string(mlp_activation_));
  TORCH_CHECK(shared_expert_hidden_ >= 0, "model: shared_expert_hidden must be >= 0, got ",
              shared_expert_hidden_);
  TORCH_CHECK(shared_expert_hidden_ % tp == 0,
              "model: shared_expert_hidden=", shared_expert_hidden_,
              " must be divisible by tp=", tp, " (the shared expert is split over tp)");
  TORCH_CHECK(!shared_expert_gate_ || shared_expert_hidden_ > 0,
              "model: shared_expert_gate needs shared_expert_hidden > 0");
}

}  // namespace hybridmoe
