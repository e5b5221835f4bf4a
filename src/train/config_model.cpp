// config_model.cpp — see train.h: the model a configuration describes (TrainConfig's GPTOptions)
// and the model families' presets as configuration keys (apply_model_preset).
#include <string>

#include "hybridmoe/hf.h"
#include "hybridmoe/train.h"

namespace hybridmoe {

namespace {

// The tables a family preset sets: every key of [model] and [moe].
bool is_preset_group(const char* group) {
  const std::string g = group;
  return g == "model" || g == "moe";
}

// Copies every key of the preset tables (but `model`) from `from` to `to`.
void copy_preset_keys(const TrainConfig& from, TrainConfig& to) {
#define HMOE_COPY_PRESET_KEY(type, member, key, init, group, help) \
  if (is_preset_group(group) && std::string(key) != "model") to.member = from.member;
  HMOE_TRAIN_CONFIG_KEYS(HMOE_COPY_PRESET_KEY)
#undef HMOE_COPY_PRESET_KEY
}

// The keys of the preset tables that give `o` (the inverse of TrainConfig::model_options for
// them); the other keys keep their defaults.
TrainConfig keys_of(const GPTOptions& o) {
  TrainConfig c;
  c.vocab_size = o.vocab_size();
  c.d_model = o.d_model();
  c.n_layers = o.n_layers();
  c.n_heads = o.n_heads();
  c.d_mlp = o.d_mlp();
  c.context = o.context();
  c.moe_every = o.moe_every();
  c.norm = o.norm();
  c.norm_eps = o.norm_eps();
  c.position = o.position();
  c.rope_theta = o.rope_theta();
  c.rotary_dim = o.rotary_dim();
  c.rope_interleaved = o.rope_interleaved();
  c.rope_scaling = o.rope_scaling();
  c.rope_factor = o.rope_factor();
  c.rope_original_max_positions = o.rope_original_max_positions();
  c.yarn_beta_fast = o.yarn_beta_fast();
  c.yarn_beta_slow = o.yarn_beta_slow();
  c.yarn_attention_factor = o.yarn_attention_factor();
  c.yarn_mscale = o.yarn_mscale();
  c.yarn_mscale_all_dim = o.yarn_mscale_all_dim();
  c.yarn_truncate = o.yarn_truncate();
  c.attention = o.attention();
  c.n_kv_heads = o.n_kv_heads();
  c.head_dim = o.head_dim();
  c.qkv_bias = o.qkv_bias();
  c.attn_out_bias = o.attn_out_bias();
  c.qk_norm = o.qk_norm();
  c.clip_qkv = o.clip_qkv();
  c.q_lora_rank = o.q_lora_rank();
  c.kv_lora_rank = o.kv_lora_rank();
  c.qk_nope_head_dim = o.qk_nope_head_dim();
  c.qk_rope_head_dim = o.qk_rope_head_dim();
  c.v_head_dim = o.v_head_dim();
  c.latent_norm_eps = o.latent_norm_eps();
  c.mlp_activation = o.mlp_activation();
  c.mlp_bias = o.mlp_bias();
  c.first_k_dense = o.first_k_dense();
  c.mlp_only_layers = o.mlp_only_layers();
  c.tie_embeddings = o.tie_embeddings();
  c.num_experts = o.num_experts();
  c.expert_hidden = o.expert_hidden();
  c.expert_activation = o.expert_activation();
  c.expert_bias = o.expert_bias();
  c.shared_expert_hidden = o.shared_expert_hidden();
  c.shared_expert_gate = o.shared_expert_gate();
  const GateOptions& g = o.gate();
  c.top_k = g.top_k();
  c.gate = g.type();
  c.convention = to_string(g.convention());
  c.capacity_factor = g.capacity_factor();
  c.aux_loss_coef = g.aux_loss_coef();
  c.z_loss_coef = g.z_loss_coef();
  c.score_function = g.score_function();
  c.selection_bias = g.selection_bias();
  c.n_group = g.n_group();
  c.topk_group = g.topk_group();
  c.routed_scaling_factor = g.routed_scaling_factor();
  c.bias_update_rate = g.bias_update_rate();
  c.normalize_top_k_weights = g.normalize_top_k_weights();
  return c;
}

}  // namespace

GPTOptions TrainConfig::model_options() const {
  GateOptions g;
  // auto starts at r = 1 (the trainer times the others); every-step (which check_config
  // refuses) too.
  const int64_t r = adaptive_r.is_value() ? adaptive_r.value() : 1;
  g.type(gate)
      .convention(parse_convention(convention))
      .top_k(top_k)
      .capacity_factor(capacity_factor)
      .aux_loss_coef(aux_loss_coef)
      .z_loss_coef(z_loss_coef)
      .score_function(score_function)
      .selection_bias(selection_bias)
      .n_group(n_group)
      .topk_group(topk_group)
      .routed_scaling_factor(routed_scaling_factor)
      .bias_update_rate(bias_update_rate);
  // false leaves the rule to the gate and the convention (the gshard gate renormalizes after
  // capacity, the switch gate never; a convention may set it).
  if (normalize_top_k_weights) g.normalize_top_k_weights(true);
  return GPTOptions()
      .vocab_size(vocab_size)
      .context(context)
      .d_model(d_model)
      .n_layers(n_layers)
      .n_heads(n_heads)
      .norm(norm)
      .norm_eps(norm_eps)
      .position(position)
      .rope_theta(rope_theta)
      .rotary_dim(rotary_dim)
      .rope_interleaved(rope_interleaved)
      .rope_scaling(rope_scaling)
      .rope_factor(rope_factor)
      .rope_original_max_positions(rope_original_max_positions)
      .yarn_beta_fast(yarn_beta_fast)
      .yarn_beta_slow(yarn_beta_slow)
      .yarn_attention_factor(yarn_attention_factor)
      .yarn_mscale(yarn_mscale)
      .yarn_mscale_all_dim(yarn_mscale_all_dim)
      .yarn_truncate(yarn_truncate)
      .attention(attention)
      .n_kv_heads(n_kv_heads)
      .head_dim(head_dim)
      .qkv_bias(qkv_bias)
      .attn_out_bias(attn_out_bias)
      .qk_norm(qk_norm)
      .clip_qkv(clip_qkv)
      .q_lora_rank(q_lora_rank)
      .kv_lora_rank(kv_lora_rank)
      .qk_nope_head_dim(qk_nope_head_dim)
      .qk_rope_head_dim(qk_rope_head_dim)
      .v_head_dim(v_head_dim)
      .latent_norm_eps(latent_norm_eps)
      .d_mlp(d_mlp)
      .mlp_activation(mlp_activation)
      .mlp_bias(mlp_bias)
      .moe_every(moe_every)
      .first_k_dense(first_k_dense)
      .mlp_only_layers(mlp_only_layers)
      .tie_embeddings(tie_embeddings)
      .num_experts(num_experts)
      .expert_hidden(expert_hidden)
      .expert_activation(expert_activation)
      .expert_bias(expert_bias)
      .shared_expert_hidden(shared_expert_hidden)
      .shared_expert_gate(shared_expert_gate)
      .gate(g)
      .expert_layout(expert_layout)
      .adaptive_r(r)
      .a2a_overlap_degree(a2a_overlap_degree)
      .replicate(parse_replicate(replicate).placement(replicate_placement))
      .a2a_algorithm(a2a_algorithm)
      .recompute(recompute)
      .recompute_cache_comm(recompute_cache_comm);
}

void apply_model_preset(TrainConfig& config, ModelFamily family) {
  // kGPT is the trainer's own defaults (the example GPT, with its z-loss); the MoE families are
  // their model_preset().
  const TrainConfig preset =
      family == ModelFamily::kGPT ? TrainConfig() : keys_of(model_preset(family));
  copy_preset_keys(preset, config);
  config.model = family;
}

void apply_hf_model(TrainConfig& config, const std::string& dir) {
  const hf::Config hc = hf::read_config(dir);
  copy_preset_keys(keys_of(hc.options), config);
  config.model = hc.family;
  config.hf_dtype = hf::dtype_name(hc.dtype);
}

}  // namespace hybridmoe
