// model_presets.cpp — see model_presets.h: the families' architectures at a tiny size. The
// routing and architecture facts are those of Hugging Face's modeling_*.py / configuration_*.py
// for each family; the sizes are hmoe's.
#include "hybridmoe/model_presets.h"

#include "core/enum_names.h"

namespace hybridmoe {

namespace {

const detail::EnumNames<ModelFamily> kFamilyNames{"model",
                                                  {{ModelFamily::kGPT, "gpt"},
                                                   {ModelFamily::kMixtral, "mixtral"},
                                                   {ModelFamily::kQwen2MoE, "qwen2_moe"},
                                                   {ModelFamily::kQwen3MoE, "qwen3_moe"},
                                                   {ModelFamily::kOLMoE, "olmoe"},
                                                   {ModelFamily::kDeepSeekV3, "deepseek_v3"}}};

// What every MoE family shares: RMSNorm, RoPE, SwiGLU MLPs and experts without biases, an untied
// head, and softmax top-k routing over 8 experts with every block MoE.
GPTOptions family_base(double norm_eps) {
  GPTOptions o;
  o.vocab_size(256).context(64).d_model(64).n_layers(4).n_heads(4);
  o.norm(NormType::kRMSNorm).norm_eps(norm_eps).position(PositionType::kRope).rope_theta(10000.0);
  o.qkv_bias(false).attn_out_bias(false);
  o.mlp_activation(Activation::kSwiGLU).mlp_bias(false).d_mlp(128);
  o.moe_every(1).tie_embeddings(false);
  o.num_experts(8).expert_hidden(64).expert_activation(Activation::kSwiGLU).expert_bias(false);
  return o;
}

GateOptions softmax_gate(bool renormalize, double aux_loss_coef) {
  return GateOptions()
      .type("topk")
      .top_k(2)
      .normalize_top_k_weights(renormalize)
      .aux_loss_coef(aux_loss_coef);
}

}  // namespace

ModelFamily parse_model_family(const std::string& name) {
  return kFamilyNames.parse(name);
}
std::string to_string(ModelFamily family) {
  return kFamilyNames.name_of(family);
}

const std::vector<ModelFamily>& moe_families() {
  static const std::vector<ModelFamily> kFamilies = {ModelFamily::kMixtral, ModelFamily::kQwen2MoE,
                                                     ModelFamily::kQwen3MoE, ModelFamily::kOLMoE,
                                                     ModelFamily::kDeepSeekV3};
  return kFamilies;
}

GPTOptions model_preset(ModelFamily family) {
  switch (family) {
    case ModelFamily::kGPT:
      // The trainer's defaults: topk, top-2, balance loss 0.01, z-loss 0.001.
      return GPTOptions().d_model(64).n_layers(4).n_heads(4).moe_every(2).num_experts(4).gate(
          GateOptions().type("topk").top_k(2).aux_loss_coef(0.01).z_loss_coef(1e-3));
    case ModelFamily::kMixtral:
      // Softmax over the experts, top-k, the k weights renormalized; router_aux_loss_coef 0.001.
      return family_base(1e-5).rope_theta(1e6).n_kv_heads(2).gate(softmax_gate(true, 1e-3));
    case ModelFamily::kQwen2MoE:
      // Biases on q, k, v only; norm_topk_prob false; a shared expert scaled by sigmoid(x · g).
      return family_base(1e-6)
          .qkv_bias(true)
          .shared_expert_hidden(128)
          .shared_expert_gate(true)
          .gate(softmax_gate(false, 1e-3));
    case ModelFamily::kQwen3MoE:
      // head_dim apart from d_model / heads; q/k RMSNorm per head before RoPE.
      return family_base(1e-6)
          .n_kv_heads(2)
          .head_dim(32)
          .qk_norm(QKNorm::kPerHead)
          .gate(softmax_gate(true, 1e-3));
    case ModelFamily::kOLMoE:
      // q/k RMSNorm over the whole projections; norm_topk_prob false; router_aux_loss_coef 0.01.
      return family_base(1e-5).qk_norm(QKNorm::kWhole).gate(softmax_gate(false, 1e-2));
    case ModelFamily::kDeepSeekV3: {
      // Sigmoid scores, e_score_correction_bias for selection (updated loss-free), group-limited
      // selection, norm_topk_prob true, routed_scaling_factor 2.5; one ungated shared expert;
      // first_k_dense_replace dense blocks; latent attention with interleaved RoPE.
      auto gate = GateOptions()
                      .type("topk")
                      .top_k(2)
                      .score_function(ScoreFunction::kSigmoid)
                      .selection_bias(true)
                      .bias_update_rate(1e-3)
                      .n_group(4)
                      .topk_group(2)
                      .normalize_top_k_weights(true)
                      .routed_scaling_factor(2.5)
                      .aux_loss_coef(1e-4);
      return family_base(1e-6)
          .attention(AttentionType::kLatent)
          .q_lora_rank(32)
          .kv_lora_rank(16)
          .qk_nope_head_dim(16)
          .qk_rope_head_dim(8)
          .v_head_dim(16)
          .rope_interleaved(true)
          .first_k_dense(1)
          .shared_expert_hidden(64)
          .gate(gate);
    }
  }
  C10_THROW_ERROR(Error, c10::str("model_preset: unknown family ", static_cast<int>(family)));
}

}  // namespace hybridmoe
