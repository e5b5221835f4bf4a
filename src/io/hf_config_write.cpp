// hf_config_write.cpp — see hf.h: config.json written from GPTOptions in a family's keys, then
// read back (hf_config.cpp) and compared, so that an option the family's config cannot express is
// refused by name instead of exported wrong.
#include <sstream>

#include <nlohmann/json.hpp>

#include "hybridmoe/hf.h"

namespace hybridmoe::hf {

using json = nlohmann::json;

std::string config_json(ModelFamily family, const GPTOptions& o, torch::ScalarType dtype) {
  TORCH_CHECK(family != ModelFamily::kGPT,
              "hf: the byte-level gpt family has no Hugging Face model type; export needs one of "
              "mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v3");
  const GateOptions& g = o.gate();
  json j;
  j["model_type"] = to_string(family);
  j["torch_dtype"] = dtype_name(dtype);
  j["vocab_size"] = o.vocab_size();
  j["hidden_size"] = o.d_model();
  j["num_hidden_layers"] = o.n_layers();
  j["num_attention_heads"] = o.n_heads();
  j["max_position_embeddings"] = o.context();
  j["rms_norm_eps"] = o.norm_eps();
  j["rope_theta"] = o.rope_theta();
  if (o.rope_scaling() == RopeScaling::kLinear)
    j["rope_scaling"] = {{"type", "linear"}, {"factor", o.rope_factor()}};
  if (o.rope_scaling() == RopeScaling::kYarn) {
    json y = {{"type", "yarn"},
              {"factor", o.rope_factor()},
              {"original_max_position_embeddings", o.rope_original_max_positions()},
              {"beta_fast", o.yarn_beta_fast()},
              {"beta_slow", o.yarn_beta_slow()},
              {"truncate", o.yarn_truncate()}};
    if (o.yarn_mscale() != 0.0) y["mscale"] = o.yarn_mscale();
    if (o.yarn_mscale_all_dim() != 0.0) y["mscale_all_dim"] = o.yarn_mscale_all_dim();
    if (o.yarn_attention_factor() != 0.0) y["attention_factor"] = o.yarn_attention_factor();
    j["rope_scaling"] = y;
  }
  j["tie_word_embeddings"] = o.tie_embeddings();
  j["hidden_act"] = "silu";
  j["num_experts_per_tok"] = g.top_k();
  j["router_aux_loss_coef"] = g.aux_loss_coef();
  j["intermediate_size"] = o.d_mlp() > 0 ? o.d_mlp() : 4 * o.d_model();
  const int64_t kv = o.n_kv_heads() > 0 ? o.n_kv_heads() : o.n_heads();
  const int64_t head_dim = o.head_dim() > 0 ? o.head_dim() : o.d_model() / o.n_heads();
  switch (family) {
    case ModelFamily::kMixtral:
      j["architectures"] = {"MixtralForCausalLM"};
      j["num_key_value_heads"] = kv;
      j["head_dim"] = head_dim;
      j["num_local_experts"] = o.num_experts();
      j["intermediate_size"] = o.expert_hidden();
      j["sliding_window"] = nullptr;
      break;
    case ModelFamily::kQwen2MoE:
    case ModelFamily::kQwen3MoE: {
      const bool qwen2 = family == ModelFamily::kQwen2MoE;
      j["architectures"] = {qwen2 ? "Qwen2MoeForCausalLM" : "Qwen3MoeForCausalLM"};
      j["num_key_value_heads"] = kv;
      if (qwen2) {
        j["qkv_bias"] = o.qkv_bias();
        j["shared_expert_intermediate_size"] = o.shared_expert_hidden();
      } else {
        j["head_dim"] = head_dim;
        j["attention_bias"] = o.qkv_bias();
      }
      j["num_experts"] = o.num_experts();
      j["moe_intermediate_size"] = o.expert_hidden();
      j["decoder_sparse_step"] = o.moe_every();
      j["mlp_only_layers"] = o.mlp_only_layers();
      j["norm_topk_prob"] = g.normalize_top_k_weights();
      j["use_sliding_window"] = false;
      break;
    }
    case ModelFamily::kOLMoE:
      j["architectures"] = {"OlmoeForCausalLM"};
      j["num_key_value_heads"] = kv;
      j["attention_bias"] = o.qkv_bias();
      j["clip_qkv"] = o.clip_qkv() > 0 ? json(o.clip_qkv()) : json(nullptr);
      j["num_experts"] = o.num_experts();
      j["intermediate_size"] = o.expert_hidden();
      j["norm_topk_prob"] = g.normalize_top_k_weights();
      break;
    case ModelFamily::kDeepSeekV3:
      j["architectures"] = {"DeepseekV3ForCausalLM"};
      j["num_key_value_heads"] = o.n_heads();
      j["q_lora_rank"] = o.q_lora_rank() > 0 ? json(o.q_lora_rank()) : json(nullptr);
      j["kv_lora_rank"] = o.kv_lora_rank();
      j["qk_nope_head_dim"] = o.qk_nope_head_dim();
      j["qk_rope_head_dim"] = o.qk_rope_head_dim();
      j["v_head_dim"] = o.v_head_dim();
      j["rope_interleave"] = o.rope_interleaved();
      j["n_routed_experts"] = o.num_experts();
      j["moe_intermediate_size"] = o.expert_hidden();
      j["n_shared_experts"] =
          o.expert_hidden() > 0 ? o.shared_expert_hidden() / o.expert_hidden() : 0;
      j["first_k_dense_replace"] = o.first_k_dense();
      j["n_group"] = g.n_group();
      j["topk_group"] = g.topk_group();
      j["routed_scaling_factor"] = g.routed_scaling_factor();
      j["norm_topk_prob"] = g.normalize_top_k_weights();
      j["attention_bias"] = false;
      break;
    case ModelFamily::kGPT:
      break;
  }
  std::string text = j.dump(2) + "\n";
  // What the family's keys cannot express is refused: the written config must describe o.
  const GPTOptions back = parse_config(text, "the exported config.json").options;
  std::vector<std::string> differ;
  auto same = [&](const char* name, auto a, auto b) {
    if (a != b) differ.push_back(c10::str(name, " (", a, " here, ", b, " as exported)"));
  };
  // The dense MLP's options matter only where a block is dense, the heads' only for mha.
  bool dense = false;
  for (int64_t i = 0; i < o.n_layers(); ++i) dense = dense || !o.is_moe_block(i);
  const bool mha = o.attention() == AttentionType::kMultiHead;
  same("vocab_size", o.vocab_size(), back.vocab_size());
  same("norm_eps", o.norm_eps(), back.norm_eps());
  same("rope_theta", o.rope_theta(), back.rope_theta());
  same("rope_scaling", to_string(o.rope_scaling()), to_string(back.rope_scaling()));
  same("rope_factor", o.rope_factor(), back.rope_factor());
  same("rope_original_max_positions", o.rope_original_max_positions(),
       back.rope_original_max_positions());
  same("yarn_beta_fast", o.yarn_beta_fast(), back.yarn_beta_fast());
  same("yarn_beta_slow", o.yarn_beta_slow(), back.yarn_beta_slow());
  same("yarn_mscale", o.yarn_mscale(), back.yarn_mscale());
  same("yarn_mscale_all_dim", o.yarn_mscale_all_dim(), back.yarn_mscale_all_dim());
  same("yarn_attention_factor", o.yarn_attention_factor(), back.yarn_attention_factor());
  same("yarn_truncate", o.yarn_truncate(), back.yarn_truncate());
  same("norm", static_cast<int>(o.norm()), static_cast<int>(back.norm()));
  same("position", static_cast<int>(o.position()), static_cast<int>(back.position()));
  same("rotary_dim", o.rotary_dim(), back.rotary_dim());
  same("rope_interleaved", o.rope_interleaved(), back.rope_interleaved());
  same("attention", static_cast<int>(o.attention()), static_cast<int>(back.attention()));
  if (mha) {
    same("n_kv_heads", kv, back.n_kv_heads() > 0 ? back.n_kv_heads() : back.n_heads());
    same("head_dim", head_dim,
         back.head_dim() > 0 ? back.head_dim() : back.d_model() / back.n_heads());
  }
  same("qkv_bias", o.qkv_bias(), back.qkv_bias());
  same("attn_out_bias", o.attn_out_bias(), back.attn_out_bias());
  same("qk_norm", static_cast<int>(o.qk_norm()), static_cast<int>(back.qk_norm()));
  same("clip_qkv", o.clip_qkv(), back.clip_qkv());
  same("latent_norm_eps", o.latent_norm_eps(), back.latent_norm_eps());
  if (dense) {
    same("mlp_activation", static_cast<int>(o.mlp_activation()),
         static_cast<int>(back.mlp_activation()));
    same("mlp_bias", o.mlp_bias(), back.mlp_bias());
    same("d_mlp", o.d_mlp() > 0 ? o.d_mlp() : 4 * o.d_model(), back.d_mlp());
  }
  for (int64_t i = 0; i < o.n_layers(); ++i)
    if (o.is_moe_block(i) != back.is_moe_block(i))
      differ.push_back(c10::str("block ", i, " (", o.is_moe_block(i) ? "MoE" : "dense", " here, ",
                                back.is_moe_block(i) ? "MoE" : "dense", " as exported)"));
  same("expert_activation", static_cast<int>(o.expert_activation()),
       static_cast<int>(back.expert_activation()));
  same("expert_bias", o.expert_bias(), back.expert_bias());
  same("shared_expert_hidden", o.shared_expert_hidden(), back.shared_expert_hidden());
  same("shared_expert_gate", o.shared_expert_gate(), back.shared_expert_gate());
  same("gate", g.type(), back.gate().type());
  same("score_function", static_cast<int>(g.score_function()),
       static_cast<int>(back.gate().score_function()));
  same("selection_bias", g.selection_bias(), back.gate().selection_bias());
  same("normalize_top_k_weights", g.normalize_top_k_weights(),
       back.gate().normalize_top_k_weights());
  same("n_group", g.n_group(), back.gate().n_group());
  same("topk_group", g.topk_group(), back.gate().topk_group());
  same("routed_scaling_factor", g.routed_scaling_factor(), back.gate().routed_scaling_factor());
  // A negative factor is the dynamic capacity, which no config.json expresses.
  same("capacity_factor", g.capacity_factor(), back.gate().capacity_factor());
  std::ostringstream list;
  for (const auto& d : differ) list << "\n  " << d;
  TORCH_CHECK(differ.empty(), "hf: a ", to_string(family),
              " config.json cannot express this model; options that differ:", list.str());
  return text;
}

}  // namespace hybridmoe::hf
