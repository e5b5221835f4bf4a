// hf_config.cpp — see hf.h: a Hugging Face config.json read as GPTOptions of one of the five MoE
// families (each key with its family's default where absent, every value this code cannot honour
// refused by name). Writing it back is hf_config_write.cpp's. The keys and defaults are those of
// transformers' configuration_<family>.py and what modeling_<family>.py reads from them.
#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "hybridmoe/hf.h"

namespace hybridmoe::hf {

namespace {

using json = nlohmann::json;

// Typed access to the keys of one config.json, each refusal naming the file and the key.
class Keys {
 public:
  Keys(const json& j, std::string origin) : j_(j), origin_(std::move(origin)) {}

  bool has(const std::string& key) const { return j_.contains(key) && !j_.at(key).is_null(); }

  int64_t integer(const std::string& key, int64_t fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    TORCH_CHECK(v.is_number_integer(), origin_, ": key `", key, "` must be an integer, got ",
                v.dump());
    return v.get<int64_t>();
  }
  double number(const std::string& key, double fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    TORCH_CHECK(v.is_number(), origin_, ": key `", key, "` must be a number, got ", v.dump());
    return v.get<double>();
  }
  bool boolean(const std::string& key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    TORCH_CHECK(v.is_boolean(), origin_, ": key `", key, "` must be true or false, got ", v.dump());
    return v.get<bool>();
  }
  std::string text(const std::string& key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    TORCH_CHECK(v.is_string(), origin_, ": key `", key, "` must be a string, got ", v.dump());
    return v.get<std::string>();
  }
  std::vector<int64_t> integers(const std::string& key) const {
    if (!has(key)) return {};
    const json& v = j_.at(key);
    TORCH_CHECK(v.is_array(), origin_, ": key `", key, "` must be a list of integers, got ",
                v.dump());
    std::vector<int64_t> out;
    for (const auto& e : v) {
      TORCH_CHECK(e.is_number_integer(), origin_, ": key `", key,
                  "` must be a list of integers, got ", v.dump());
      out.push_back(e.get<int64_t>());
    }
    return out;
  }
  // The first of `names` present (a family's old and new spelling); both present must agree.
  int64_t integer_of(const std::vector<std::string>& names, int64_t fallback) const {
    std::string found;
    int64_t value = fallback;
    for (const auto& n : names) {
      if (!has(n)) continue;
      const int64_t v = integer(n, fallback);
      TORCH_CHECK(found.empty() || v == value, origin_, ": keys `", found, "` (", value, ") and `",
                  n, "` (", v, ") disagree");
      found = n;
      value = v;
    }
    return value;
  }
  const json& raw(const std::string& key) const { return j_.at(key); }
  const std::string& origin() const { return origin_; }

 private:
  const json& j_;
  std::string origin_;
};

}  // namespace

torch::ScalarType parse_dtype(const std::string& name, const std::string& origin) {
  if (name == "float32" || name == "float") return torch::kFloat32;
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "float16" || name == "half") return torch::kFloat16;
  if (name == "float64" || name == "double") return torch::kFloat64;
  C10_THROW_ERROR(Error, c10::str(origin, ": torch_dtype \"", name,
                                  "\" is not one of float32, bfloat16, float16, float64"));
}

std::string dtype_name(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32:
      return "float32";
    case torch::kBFloat16:
      return "bfloat16";
    case torch::kFloat16:
      return "float16";
    case torch::kFloat64:
      return "float64";
    default:
      C10_THROW_ERROR(Error,
                      c10::str("hf config: weights of dtype ", t,
                               " have no torch_dtype (float32, bfloat16, float16, float64)"));
  }
}

namespace {

// 1. Values no family here honours, refused by name.
void refuse_unsupported(const Keys& k, ModelFamily family) {
  const std::string& o = k.origin();
  TORCH_CHECK(!k.has("quantization_config"), o,
              ": `quantization_config` is set; quantized weights (e.g. fp8) are not supported — "
              "dequantize the checkpoint first");
  const std::string act = k.text("hidden_act", "silu");
  TORCH_CHECK(act == "silu", o, ": hidden_act \"", act, "\" is not supported (expected silu)");
  const double dropout = k.number("attention_dropout", 0.0);
  TORCH_CHECK(dropout == 0.0, o, ": attention_dropout ", dropout,
              " is not supported (expected 0: hmoe has no attention dropout)");
  if (family == ModelFamily::kMixtral) {
    TORCH_CHECK(!k.has("sliding_window"), o, ": sliding_window ", k.raw("sliding_window").dump(),
                " is not supported (sliding-window attention; expected null)");
    const double jitter = k.number("router_jitter_noise", 0.0);
    TORCH_CHECK(jitter == 0.0, o, ": router_jitter_noise ", jitter,
                " is not supported (expected 0: hmoe's router has no jitter)");
  }
  if (family == ModelFamily::kQwen2MoE || family == ModelFamily::kQwen3MoE) {
    TORCH_CHECK(!k.boolean("use_sliding_window", false), o,
                ": use_sliding_window true is not supported (sliding-window attention)");
    if (k.has("layer_types"))
      for (const auto& t : k.raw("layer_types"))
        TORCH_CHECK(t == "full_attention", o, ": layer_types holds ", t.dump(),
                    "; only full_attention is supported");
  }
  if (family == ModelFamily::kDeepSeekV3) {
    TORCH_CHECK(!k.boolean("attention_bias", false), o,
                ": attention_bias true is not supported for deepseek_v3");
    const int64_t freq = k.integer("moe_layer_freq", 1);
    TORCH_CHECK(freq == 1, o, ": moe_layer_freq ", freq,
                " is not supported (expected 1: every block after first_k_dense_replace is MoE, "
                "as transformers' DeepseekV3 builds it)");
    const std::string scoring = k.text("scoring_func", "sigmoid");
    TORCH_CHECK(scoring == "sigmoid", o, ": scoring_func \"", scoring,
                "\" is not supported (expected sigmoid)");
    const std::string method = k.text("topk_method", "noaux_tc");
    TORCH_CHECK(method == "noaux_tc", o, ": topk_method \"", method,
                "\" is not supported (expected noaux_tc)");
  }
}

// 2. RoPE: `rope_theta` and `rope_scaling` (v4) or `rope_parameters` (v5): default, linear or
//    yarn. An absent mscale / mscale_all_dim / attention_factor is 0 (transformers tests them for
//    truth); a factor other than max_position_embeddings / original_max_position_embeddings is
//    refused (transformers versions disagree on which wins).
void read_rope(const Keys& k, double default_theta, GPTOptions& opts) {
  const std::string& o = k.origin();
  double theta = k.number("rope_theta", default_theta);
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!k.has(key)) continue;
    const json& r = k.raw(key);
    TORCH_CHECK(r.is_object(), o, ": `", key, "` must be an object, got ", r.dump());
    Keys rk(r, o + " (" + key + ")");
    const std::string type = rk.text("rope_type", rk.text("type", "default"));
    theta = rk.number("rope_theta", theta);
    if (type == "default") continue;
    TORCH_CHECK(type == "linear" || type == "yarn", o, ": ", key, " type \"", type,
                "\" is not supported (expected default, linear or yarn)");
    const double factor = rk.number("factor", 1.0);
    TORCH_CHECK(rk.has("factor"), o, ": ", key, " of type ", type, " has no `factor`");
    opts.rope_scaling(type == "linear" ? RopeScaling::kLinear : RopeScaling::kYarn)
        .rope_factor(factor);
    if (type == "linear") continue;
    TORCH_CHECK(rk.has("original_max_position_embeddings"), o, ": ", key,
                " of type yarn has no `original_max_position_embeddings`");
    const int64_t original = rk.integer("original_max_position_embeddings", 0);
    TORCH_CHECK(original <= 0 || std::abs(factor * original - opts.context()) < 0.5, o, ": ", key,
                " factor ", factor, " disagrees with max_position_embeddings ", opts.context(),
                " / original_max_position_embeddings ", original,
                " (transformers versions differ on which wins; make them agree)");
    opts.rope_original_max_positions(original)
        .yarn_beta_fast(rk.number("beta_fast", 32.0))
        .yarn_beta_slow(rk.number("beta_slow", 1.0))
        .yarn_mscale(rk.number("mscale", 0.0))
        .yarn_mscale_all_dim(rk.number("mscale_all_dim", 0.0))
        .yarn_attention_factor(rk.number("attention_factor", 0.0))
        .yarn_truncate(rk.boolean("truncate", true));
  }
  opts.rope_theta(theta);
}

}  // namespace

Config parse_config(const std::string& json_text, const std::string& origin) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    C10_THROW_ERROR(Error, c10::str(origin, ": not valid JSON (", e.what(), ")"));
  }
  TORCH_CHECK(j.is_object(), origin, ": expected a JSON object, got ", j.type_name());
  Keys k(j, origin);
  TORCH_CHECK(k.has("model_type"), origin, ": no `model_type`");
  const std::string type = k.text("model_type", "");
  ModelFamily family;
  try {
    family = parse_model_family(type);
  } catch (const c10::Error&) {
    family = ModelFamily::kGPT;
  }
  TORCH_CHECK(family != ModelFamily::kGPT, origin, ": model_type \"", type,
              "\" is not supported (expected mixtral, qwen2_moe, qwen3_moe, olmoe or deepseek_v3)");
  refuse_unsupported(k, family);

  Config c;
  c.family = family;
  c.dtype = parse_dtype(k.text("torch_dtype", k.text("dtype", "float32")), origin);
  GPTOptions o = model_preset(family);
  GateOptions g = o.gate();
  // 3. What every family reads. The defaults are each configuration class's.
  struct Defaults {
    int64_t vocab, hidden, inter, layers, heads, kv_heads, positions, experts, top_k;
    double eps, theta, aux;
    bool norm_topk;
  };
  Defaults d{};
  switch (family) {
    case ModelFamily::kMixtral:
      d = {32000, 4096, 14336, 32, 32, 8, 4096 * 32, 8, 2, 1e-5, 1e6, 1e-3, true};
      break;
    case ModelFamily::kQwen2MoE:
      d = {151936, 2048, 5632, 24, 16, 16, 32768, 60, 4, 1e-6, 1e4, 1e-3, false};
      break;
    case ModelFamily::kQwen3MoE:
      d = {151936, 2048, 6144, 24, 32, 4, 32768, 128, 8, 1e-6, 1e4, 1e-3, false};
      break;
    case ModelFamily::kOLMoE:
      d = {50304, 2048, 2048, 16, 16, -1, 4096, 64, 8, 1e-5, 1e4, 1e-2, false};
      break;
    case ModelFamily::kDeepSeekV3:
      d = {129280, 7168, 18432, 61, 128, 128, 4096, 256, 8, 1e-6, 1e4, 0.0, true};
      break;
    case ModelFamily::kGPT:
      break;
  }
  const int64_t heads = k.integer("num_attention_heads", d.heads);
  const int64_t hidden = k.integer("hidden_size", d.hidden);
  o.vocab_size(k.integer("vocab_size", d.vocab))
      .d_model(hidden)
      .n_layers(k.integer("num_hidden_layers", d.layers))
      .n_heads(heads)
      .context(k.integer("max_position_embeddings", d.positions))
      .norm_eps(k.number("rms_norm_eps", d.eps))
      .tie_embeddings(k.boolean("tie_word_embeddings", false));
  read_rope(k, d.theta, o);
  const int64_t kv = k.integer("num_key_value_heads", d.kv_heads < 0 ? heads : d.kv_heads);
  const int64_t inter = k.integer("intermediate_size", d.inter);
  g.top_k(k.integer("num_experts_per_tok", d.top_k))
      .aux_loss_coef(k.number("router_aux_loss_coef", d.aux))
      .z_loss_coef(0.0)
      .normalize_top_k_weights(
          family == ModelFamily::kMixtral ? true : k.boolean("norm_topk_prob", d.norm_topk));
  // 4. Each family's own keys.
  switch (family) {
    case ModelFamily::kMixtral:
      o.n_kv_heads(kv)
          .head_dim(k.integer("head_dim", hidden / heads))
          .num_experts(k.integer_of({"num_local_experts", "num_experts"}, d.experts))
          .expert_hidden(inter)
          .d_mlp(inter);
      break;
    case ModelFamily::kQwen2MoE:
    case ModelFamily::kQwen3MoE: {
      const bool qwen2 = family == ModelFamily::kQwen2MoE;
      const bool bias = qwen2 ? k.boolean("qkv_bias", true) : k.boolean("attention_bias", false);
      o.n_kv_heads(kv)
          .head_dim(qwen2 ? hidden / heads : k.integer("head_dim", hidden / heads))
          .qkv_bias(bias)
          .attn_out_bias(qwen2 ? false : bias)
          .d_mlp(inter)
          .expert_hidden(k.integer("moe_intermediate_size", qwen2 ? 1408 : 768))
          .moe_every(k.integer("decoder_sparse_step", 1))
          .mlp_only_layers(k.integers("mlp_only_layers"));
      const int64_t experts = k.integer_of({"num_experts", "num_local_experts"}, d.experts);
      o.num_experts(experts > 0 ? experts : 1);
      if (experts == 0) o.moe_every(0);
      if (qwen2) o.shared_expert_hidden(k.integer("shared_expert_intermediate_size", 5632));
      break;
    }
    case ModelFamily::kOLMoE: {
      const bool bias = k.boolean("attention_bias", false);
      const double clip = k.number("clip_qkv", 0.0);
      TORCH_CHECK(clip >= 0.0, origin, ": clip_qkv must be >= 0 or null, got ", clip);
      o.n_kv_heads(kv)
          .head_dim(hidden / heads)
          .qkv_bias(bias)
          .attn_out_bias(bias)
          .clip_qkv(clip)
          .num_experts(k.integer_of({"num_experts", "num_local_experts"}, d.experts))
          .expert_hidden(inter)
          .d_mlp(inter);
      break;
    }
    case ModelFamily::kDeepSeekV3: {
      const int64_t moe_inter = k.integer("moe_intermediate_size", 2048);
      o.q_lora_rank(k.integer("q_lora_rank", 1536))
          .kv_lora_rank(k.integer("kv_lora_rank", 512))
          .qk_nope_head_dim(k.integer("qk_nope_head_dim", 128))
          .qk_rope_head_dim(k.integer("qk_rope_head_dim", 64))
          .v_head_dim(k.integer("v_head_dim", 128))
          .rope_interleaved(k.boolean("rope_interleave", true))
          .latent_norm_eps(1e-6)  // q_a_layernorm / kv_a_layernorm keep RMSNorm's default eps
          .d_mlp(inter)
          .num_experts(k.integer_of({"n_routed_experts", "num_local_experts"}, d.experts))
          .expert_hidden(moe_inter)
          .first_k_dense(k.integer("first_k_dense_replace", 3))
          .shared_expert_hidden(k.integer("n_shared_experts", 1) * moe_inter);
      // q_lora_rank null: a direct q_proj.
      if (j.contains("q_lora_rank") && j.at("q_lora_rank").is_null()) o.q_lora_rank(0);
      g.n_group(k.integer("n_group", 8))
          .topk_group(k.integer("topk_group", 4))
          .routed_scaling_factor(k.number("routed_scaling_factor", 2.5));
      break;
    }
    case ModelFamily::kGPT:
      break;
  }
  o.gate(g);
  try {
    o.check();
  } catch (const c10::Error& e) {
    C10_THROW_ERROR(Error, c10::str(origin, ": the configuration describes no valid model: ",
                                    e.what_without_backtrace()));
  }
  c.options = o;
  return c;
}

Config read_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), "hf: cannot read ", path,
              " (expected a Hugging Face model directory with config.json)");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config(ss.str(), path);
}

}  // namespace hybridmoe::hf
