// config_keys_test.cpp — the typed configuration keys of `hmoe train` (train.h): the enum names
// (dtype, layout mode, pipeline schedule, recompute) round trip and refuse bad text naming it and
// the accepted names; the typed keys keep their TOML / flag spelling (defaults, every accepted
// value set and read back, printed and re-read as TOML); a bad value is refused naming the key;
// the key table made from HMOE_TRAIN_CONFIG_KEYS sets the field of its name. The model families'
// keys: in their tables, reaching GPTOptions / GateOptions, mlp_only_layers as a list.
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "hybridmoe/train.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

using testing::throws_with;

TEST(TypedNames, RoundTripAndRefusalNamingTheTextAndTheNames) {
  for (DType d : {DType::kFloat32, DType::kFloat64}) EXPECT_EQ(parse_dtype(to_string(d)), d);
  EXPECT_EQ(scalar_type(DType::kFloat32), torch::kFloat32);
  EXPECT_EQ(scalar_type(DType::kFloat64), torch::kFloat64);
  EXPECT_TRUE(throws_with([] { parse_dtype("half"); },
                          "dtype: expected one of \"float32\", \"float64\", got \"half\""));
  for (LayoutMode m : {LayoutMode::kManual, LayoutMode::kAuto})
    EXPECT_EQ(parse_layout_mode(to_string(m)), m);
  EXPECT_TRUE(throws_with([] { parse_layout_mode("planned"); },
                          "layout: expected one of \"manual\", \"auto\", got \"planned\""));
  for (PipelineSchedule s : {PipelineSchedule::kOneFOneB, PipelineSchedule::kGPipe})
    EXPECT_EQ(parse_pipeline_schedule(to_string(s)), s);
  EXPECT_TRUE(
      throws_with([] { parse_pipeline_schedule("zigzag"); },
                  "pipeline_schedule: expected one of \"1f1b\", \"gpipe\", got \"zigzag\""));
  for (Recompute r : {Recompute::kNone, Recompute::kBlock, Recompute::kMoE})
    EXPECT_EQ(parse_recompute(recompute_name(r)), r);
  for (ConfigKind k : {ConfigKind::kInt, ConfigKind::kFloat, ConfigKind::kBool})
    EXPECT_NE(to_string(k), to_string(ConfigKind::kString));
  EXPECT_EQ(to_string(ConfigKind::kFloat), "float");
}

TEST(TypedConfigKeys, DefaultsKeepTheirSpelling) {
  const TrainConfig c;
  EXPECT_EQ(get_config_value(c, "expert_layout"), "fixed");
  EXPECT_EQ(get_config_value(c, "adaptive_r"), "1");
  EXPECT_EQ(get_config_value(c, "dtype"), "float32");
  EXPECT_EQ(get_config_value(c, "pipeline_schedule"), "1f1b");
  EXPECT_EQ(get_config_value(c, "recompute"), "none");
  EXPECT_EQ(get_config_value(c, "layout"), "manual");
  EXPECT_EQ(c.expert_layout, ExpertLayout::kFixed);
  EXPECT_EQ(c.adaptive_r, AdaptiveR::value(1));
  EXPECT_EQ(c.dtype, DType::kFloat32);
  EXPECT_EQ(c.layout_mode, LayoutMode::kManual);
  // The model families' typed keys keep the example GPT.
  EXPECT_EQ(get_config_value(c, "model"), "gpt");
  EXPECT_EQ(get_config_value(c, "norm"), "layernorm");
  EXPECT_EQ(get_config_value(c, "position"), "learned");
  EXPECT_EQ(get_config_value(c, "attention"), "mha");
  EXPECT_EQ(get_config_value(c, "qk_norm"), "none");
  EXPECT_EQ(get_config_value(c, "mlp_activation"), "gelu");
  EXPECT_EQ(get_config_value(c, "expert_activation"), "gelu");
  EXPECT_EQ(get_config_value(c, "score_function"), "softmax");
  EXPECT_EQ(get_config_value(c, "mlp_only_layers"), "[]");
  // Typed keys are strings in TOML and on the command line; mlp_only_layers an int list.
  const std::set<std::string> typed = {
      "expert_layout",     "adaptive_r",     "dtype",        "pipeline_schedule",
      "recompute",         "layout",         "model",        "norm",
      "position",          "attention",      "qk_norm",      "mlp_activation",
      "expert_activation", "score_function", "rope_scaling", "token_dtype"};
  for (const auto& k : train_config_keys()) {
    if (typed.count(k.name) > 0) {
      EXPECT_EQ(k.kind, ConfigKind::kString) << k.name;
    }
  }
  for (const auto& k : train_config_keys())
    EXPECT_EQ(k.kind == ConfigKind::kIntList, k.name == "mlp_only_layers") << k.name;
  EXPECT_EQ(to_string(ConfigKind::kIntList), "int list");
}

TEST(ConfigKeysModel, EveryFamilyKeyIsInItsTable) {
  // The architecture in [model], the experts and their routing in [moe].
  const std::vector<std::string> model = {"model",
                                          "norm",
                                          "norm_eps",
                                          "position",
                                          "rope_theta",
                                          "rotary_dim",
                                          "rope_interleaved",
                                          "vocab_size",
                                          "rope_scaling",
                                          "rope_factor",
                                          "rope_original_max_positions",
                                          "yarn_beta_fast",
                                          "yarn_beta_slow",
                                          "yarn_attention_factor",
                                          "yarn_mscale",
                                          "yarn_mscale_all_dim",
                                          "yarn_truncate",
                                          "attention",
                                          "n_kv_heads",
                                          "head_dim",
                                          "qkv_bias",
                                          "attn_out_bias",
                                          "qk_norm",
                                          "clip_qkv",
                                          "q_lora_rank",
                                          "kv_lora_rank",
                                          "qk_nope_head_dim",
                                          "qk_rope_head_dim",
                                          "v_head_dim",
                                          "latent_norm_eps",
                                          "mlp_activation",
                                          "mlp_bias",
                                          "first_k_dense",
                                          "mlp_only_layers",
                                          "tie_embeddings"};
  const std::vector<std::string> moe = {"expert_activation",
                                        "expert_bias",
                                        "shared_expert_hidden",
                                        "shared_expert_gate",
                                        "score_function",
                                        "selection_bias",
                                        "n_group",
                                        "topk_group",
                                        "routed_scaling_factor",
                                        "bias_update_rate",
                                        "normalize_top_k_weights"};
  auto group_of = [](const std::string& name) {
    for (const auto& k : train_config_keys())
      if (k.name == name) return k.group;
    return std::string("(none)");
  };
  for (const auto& k : model) EXPECT_EQ(group_of(k), "model") << k;
  for (const auto& k : moe) EXPECT_EQ(group_of(k), "moe") << k;
}

TEST(ConfigKeysModel, ValuesReachTheModelAndGateOptions) {
  TrainConfig c;
  const ConfigValues given = {{"norm", "rmsnorm"},
                              {"norm_eps", "1e-06"},
                              {"position", "rope"},
                              {"rope_theta", "500000.0"},
                              {"rotary_dim", "8"},
                              {"rope_interleaved", "true"},
                              {"n_kv_heads", "2"},
                              {"head_dim", "32"},
                              {"qkv_bias", "false"},
                              {"attn_out_bias", "false"},
                              {"qk_norm", "head"},
                              {"clip_qkv", "8.0"},
                              {"mlp_activation", "swiglu"},
                              {"mlp_bias", "false"},
                              {"first_k_dense", "1"},
                              {"mlp_only_layers", "2"},
                              {"tie_embeddings", "false"},
                              {"expert_activation", "swiglu"},
                              {"expert_bias", "false"},
                              {"shared_expert_hidden", "32"},
                              {"shared_expert_gate", "true"},
                              {"score_function", "sigmoid"},
                              {"selection_bias", "true"},
                              {"n_group", "2"},
                              {"topk_group", "2"},
                              {"routed_scaling_factor", "2.5"},
                              {"bias_update_rate", "0.001"},
                              {"normalize_top_k_weights", "true"}};
  apply_config_values(c, given);
  const GPTOptions o = c.model_options();
  // Each key's value, read back through the options of the same name.
  EXPECT_EQ(to_string(o.norm()), "rmsnorm");
  EXPECT_EQ(o.norm_eps(), c.norm_eps);
  EXPECT_EQ(to_string(o.position()), "rope");
  EXPECT_EQ(o.rope_theta(), c.rope_theta);
  EXPECT_EQ(o.rotary_dim(), c.rotary_dim);
  EXPECT_TRUE(o.rope_interleaved());
  EXPECT_EQ(o.n_kv_heads(), c.n_kv_heads);
  EXPECT_EQ(o.head_dim(), c.head_dim);
  EXPECT_FALSE(o.qkv_bias());
  EXPECT_FALSE(o.attn_out_bias());
  EXPECT_EQ(to_string(o.qk_norm()), "head");
  EXPECT_EQ(o.clip_qkv(), c.clip_qkv);
  EXPECT_EQ(o.mlp_activation(), parse_activation("swiglu"));
  EXPECT_FALSE(o.mlp_bias());
  EXPECT_EQ(o.first_k_dense(), c.first_k_dense);
  EXPECT_EQ(o.mlp_only_layers(), c.mlp_only_layers);
  EXPECT_FALSE(o.tie_embeddings());
  EXPECT_EQ(o.expert_activation(), parse_activation("swiglu"));
  EXPECT_FALSE(o.expert_bias());
  EXPECT_EQ(o.shared_expert_hidden(), c.shared_expert_hidden);
  EXPECT_TRUE(o.shared_expert_gate());
  EXPECT_EQ(to_string(o.gate().score_function()), "sigmoid");
  EXPECT_TRUE(o.gate().selection_bias());
  EXPECT_EQ(o.gate().n_group(), c.n_group);
  EXPECT_EQ(o.gate().topk_group(), c.topk_group);
  EXPECT_EQ(o.gate().routed_scaling_factor(), c.routed_scaling_factor);
  EXPECT_EQ(o.gate().bias_update_rate(), c.bias_update_rate);
  EXPECT_TRUE(o.gate().normalize_top_k_weights());
  for (const auto& [key, text] : given) {
    TrainConfig d;
    set_config_value(d, key, text);
    EXPECT_EQ(get_config_value(d, key), get_config_value(c, key)) << key;
    EXPECT_NE(get_config_value(d, key), get_config_value(TrainConfig(), key)) << key;
  }
  // The latent attention keys.
  TrainConfig m;
  apply_config_values(m, {{"attention", "mla"},
                          {"q_lora_rank", "32"},
                          {"kv_lora_rank", "16"},
                          {"qk_nope_head_dim", "16"},
                          {"qk_rope_head_dim", "8"},
                          {"v_head_dim", "16"},
                          {"latent_norm_eps", "1e-05"}});
  const GPTOptions l = m.model_options();
  EXPECT_EQ(to_string(l.attention()), "mla");
  EXPECT_EQ(l.q_lora_rank(), m.q_lora_rank);
  EXPECT_EQ(l.kv_lora_rank(), m.kv_lora_rank);
  EXPECT_EQ(l.qk_nope_head_dim(), m.qk_nope_head_dim);
  EXPECT_EQ(l.qk_rope_head_dim(), m.qk_rope_head_dim);
  EXPECT_EQ(l.v_head_dim(), m.v_head_dim);
  EXPECT_EQ(l.latent_norm_eps(), m.latent_norm_eps);
  // The RoPE scaling keys (Hugging Face's rope_scaling) and the vocabulary.
  TrainConfig y;
  const ConfigValues yarn = {
      {"vocab_size", "50304"},          {"rope_scaling", "yarn"},
      {"rope_factor", "40.0"},          {"rope_original_max_positions", "4096"},
      {"yarn_beta_fast", "16.0"},       {"yarn_beta_slow", "2.0"},
      {"yarn_attention_factor", "0.5"}, {"yarn_mscale", "0.707"},
      {"yarn_mscale_all_dim", "0.707"}, {"yarn_truncate", "false"}};
  apply_config_values(y, yarn);
  const GPTOptions r = y.model_options();
  EXPECT_EQ(r.vocab_size(), 50304);
  EXPECT_EQ(r.rope_scaling(), RopeScaling::kYarn);
  EXPECT_EQ(r.rope_factor(), 40.0);
  EXPECT_EQ(r.rope_original_max_positions(), 4096);
  EXPECT_EQ(r.yarn_beta_fast(), 16.0);
  EXPECT_EQ(r.yarn_beta_slow(), 2.0);
  EXPECT_EQ(r.yarn_attention_factor(), 0.5);
  EXPECT_EQ(r.yarn_mscale(), 0.707);
  EXPECT_EQ(r.yarn_mscale_all_dim(), 0.707);
  EXPECT_FALSE(r.yarn_truncate());
  for (const auto& [key, text] : yarn) {
    TrainConfig d;
    set_config_value(d, key, text);
    EXPECT_EQ(get_config_value(d, key), get_config_value(y, key)) << key;
    EXPECT_NE(get_config_value(d, key), get_config_value(TrainConfig(), key)) << key;
  }
  // check_config refuses the scaling as the model does, naming the option.
  TrainConfig bad;
  apply_config_values(bad, {{"position", "rope"}, {"rope_scaling", "yarn"}, {"rope_factor", "4"}});
  EXPECT_NE(check_config(bad).find("rope_scaling yarn needs rope_original_max_positions > 0"),
            std::string::npos)
      << check_config(bad);
  apply_config_values(bad, {{"rope_original_max_positions", "-1"}});
  EXPECT_NE(check_config(bad).find("config key `rope_original_max_positions` must be >= 0"),
            std::string::npos)
      << check_config(bad);
}

TEST(ConfigKeysModel, MlpOnlyLayersIsAListOnTheCommandLineAndAnArrayInToml) {
  const std::vector<int64_t> want = {1, 3};
  for (const std::string text : {"1,3", "1, 3", "[1, 3]", " [1,3] "}) {
    TrainConfig c;
    set_config_value(c, "mlp_only_layers", text);
    EXPECT_EQ(c.mlp_only_layers, want) << text;
    EXPECT_EQ(get_config_value(c, "mlp_only_layers"), "[1, 3]") << text;
  }
  for (const std::string text : {"", "[]", " [ ] "}) {
    TrainConfig c;
    c.mlp_only_layers = want;
    set_config_value(c, "mlp_only_layers", text);
    EXPECT_TRUE(c.mlp_only_layers.empty()) << text;
  }
  for (const std::string text : {"1,x", "1,,3", "1,", "[1, 3", "1.5"}) {
    TrainConfig c;
    EXPECT_TRUE(throws_with([&] { set_config_value(c, "mlp_only_layers", text); },
                            "config key `mlp_only_layers`"))
        << text;
    EXPECT_TRUE(c.mlp_only_layers.empty()) << text;
  }
  TrainConfig t;
  apply_toml_text(t, "[model]\nmlp_only_layers = [1, 3]\n", "t.toml");
  EXPECT_EQ(t.mlp_only_layers, want);
  apply_toml_text(t, "mlp_only_layers = []\n", "t.toml");
  EXPECT_TRUE(t.mlp_only_layers.empty());
  EXPECT_TRUE(throws_with([&] { apply_toml_text(t, "mlp_only_layers = \"1,3\"\n", "t.toml"); },
                          "t.toml: config key `mlp_only_layers` expects an array of integers"));
  EXPECT_TRUE(throws_with([&] { apply_toml_text(t, "mlp_only_layers = [1, 2.5]\n", "t.toml"); },
                          "t.toml: config key `mlp_only_layers` expects an array of integers"));
  EXPECT_TRUE(throws_with([&] { apply_toml_text(t, "n_layers = [1, 2]\n", "t.toml"); },
                          "t.toml: config key `n_layers`"));
  // The printout is a TOML array that reads back.
  TrainConfig p;
  p.mlp_only_layers = want;
  const std::string toml = config_to_toml(p);
  EXPECT_NE(toml.find("mlp_only_layers = [1, 3]"), std::string::npos) << toml;
  TrainConfig q;
  apply_toml_text(q, toml, "printed");
  EXPECT_EQ(q.mlp_only_layers, want);
}

TEST(TypedConfigKeys, EveryAcceptedValueSetsTheFieldAndReadsBack) {
  struct Values {
    std::string key;
    std::vector<std::string> accepted;
  };
  const std::vector<Values> typed = {
      {"expert_layout", {"fixed", "adaptive"}},
      {"adaptive_r", {"0", "1", "2", "16", "auto", "every-step"}},
      {"dtype", {"float32", "float64"}},
      {"pipeline_schedule", {"1f1b", "gpipe"}},
      {"recompute", {"none", "block", "moe"}},
      {"layout", {"manual", "auto"}},
      {"model", {"gpt", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3"}},
      {"norm", {"layernorm", "rmsnorm"}},
      {"position", {"learned", "rope"}},
      {"attention", {"mha", "mla"}},
      {"qk_norm", {"none", "head", "whole"}},
      {"mlp_activation", {"gelu", "relu", "swiglu"}},
      {"expert_activation", {"gelu", "relu", "swiglu"}},
      {"score_function", {"softmax", "sigmoid"}},
  };
  for (const auto& t : typed)
    for (const auto& v : t.accepted) {
      TrainConfig c;
      set_config_value(c, t.key, v);
      EXPECT_EQ(get_config_value(c, t.key), v) << t.key;
    }
  // The key of each name sets the field of that name.
  TrainConfig c;
  set_config_value(c, "expert_layout", "adaptive");
  set_config_value(c, "adaptive_r", "auto");
  set_config_value(c, "dtype", "float64");
  set_config_value(c, "pipeline_schedule", "gpipe");
  set_config_value(c, "recompute", "moe");
  set_config_value(c, "layout", "auto");
  EXPECT_EQ(c.expert_layout, ExpertLayout::kAdaptive);
  EXPECT_EQ(c.adaptive_r, AdaptiveR::automatic());
  EXPECT_EQ(c.dtype, DType::kFloat64);
  EXPECT_EQ(c.pipeline_schedule, PipelineSchedule::kGPipe);
  EXPECT_EQ(c.recompute, Recompute::kMoE);
  EXPECT_EQ(c.layout_mode, LayoutMode::kAuto);
  set_config_value(c, "adaptive_r", "4");
  EXPECT_EQ(c.adaptive_r, AdaptiveR::value(4));
}

TEST(TypedConfigKeys, BadValuesAreRefusedNamingKeyValueAndAcceptedNames) {
  TrainConfig c;
  EXPECT_TRUE(throws_with([&] { set_config_value(c, "expert_layout", "tiled"); },
                          "config key `expert_layout`: expert_layout: expected one of \"fixed\", "
                          "\"adaptive\", got \"tiled\""));
  EXPECT_TRUE(throws_with([&] { set_config_value(c, "dtype", "half"); },
                          "config key `dtype`: dtype: expected one of \"float32\", \"float64\", "
                          "got \"half\""));
  EXPECT_TRUE(throws_with([&] { set_config_value(c, "layout", "planned"); },
                          "config key `layout`: layout: expected one of"));
  EXPECT_TRUE(throws_with([&] { set_config_value(c, "recompute", "all"); },
                          "config key `recompute`: recompute must be"));
  EXPECT_TRUE(throws_with([&] { set_config_value(c, "adaptive_r", "-1"); },
                          "config key `adaptive_r`: adaptive_r: expected auto, every-step or an "
                          "integer >= 0, got \"-1\""));
  EXPECT_TRUE(
      throws_with([&] { set_config_value(c, "pipeline_schedule", "zigzag"); }, "got \"zigzag\""));
  EXPECT_TRUE(throws_with([&] { set_config_value(c, "model", "llama"); },
                          "config key `model`: model: expected one of \"gpt\", \"mixtral\""));
  EXPECT_TRUE(throws_with([&] { set_config_value(c, "norm", "batchnorm"); },
                          "config key `norm`: norm: expected one of \"layernorm\", \"rmsnorm\", "
                          "got \"batchnorm\""));
  EXPECT_TRUE(throws_with([&] { set_config_value(c, "position", "alibi"); },
                          "config key `position`: position: expected one of"));
  EXPECT_TRUE(throws_with([&] { set_config_value(c, "attention", "mqa"); },
                          "config key `attention`: attention: expected one of"));
  EXPECT_TRUE(throws_with([&] { set_config_value(c, "qk_norm", "layer"); },
                          "config key `qk_norm`: qk_norm: expected one of"));
  EXPECT_TRUE(throws_with([&] { set_config_value(c, "mlp_activation", "tanh"); },
                          "config key `mlp_activation`: activation: expected one of"));
  EXPECT_TRUE(throws_with([&] { set_config_value(c, "score_function", "sparsemax"); },
                          "config key `score_function`: score_function: expected one of"));
  EXPECT_TRUE(throws_with([&] { apply_toml_text(c, "[model]\nmodel = \"gpt4\"\n", "t.toml"); },
                          "t.toml: config key `model`: model: expected one of"));
  EXPECT_TRUE(throws_with([&] { apply_toml_text(c, "[moe]\nnorm = \"rmsnorm\"\n", "t.toml"); },
                          "config key `norm` belongs in table [model]"));
  EXPECT_EQ(get_config_value(c, "expert_layout"), "fixed");  // unchanged by the refusals
  EXPECT_EQ(get_config_value(c, "model"), "gpt");
  // TOML: typed values are strings; another TOML type is refused naming the key.
  EXPECT_TRUE(throws_with([&] { apply_toml_text(c, "adaptive_r = 2\n", "t.toml"); },
                          "t.toml: config key `adaptive_r` expects a string value"));
  EXPECT_TRUE(throws_with([&] { apply_toml_text(c, "[memory]\ndtype = \"bf16\"\n", "t.toml"); },
                          "t.toml: config key `dtype`"));
}

TEST(TypedConfigKeys, NonDefaultTypedValuesSurviveTheTomlPrintout) {
  TrainConfig c;
  c.ep = 1;
  c.expert_layout = ExpertLayout::kAdaptive;
  c.adaptive_r = AdaptiveR::value(0);
  c.dtype = DType::kFloat64;
  c.pipeline_schedule = PipelineSchedule::kGPipe;
  c.recompute = Recompute::kBlock;
  c.layout_mode = LayoutMode::kAuto;
  const std::string toml = config_to_toml(c);
  EXPECT_NE(toml.find("expert_layout = \"adaptive\""), std::string::npos) << toml;
  EXPECT_NE(toml.find("adaptive_r = \"0\""), std::string::npos) << toml;
  EXPECT_NE(toml.find("layout = \"auto\""), std::string::npos) << toml;
  TrainConfig d;
  apply_toml_text(d, toml, "printed");
  EXPECT_EQ(d.expert_layout, c.expert_layout);
  EXPECT_EQ(d.adaptive_r, c.adaptive_r);
  EXPECT_EQ(d.dtype, c.dtype);
  EXPECT_EQ(d.pipeline_schedule, c.pipeline_schedule);
  EXPECT_EQ(d.recompute, c.recompute);
  EXPECT_EQ(d.layout_mode, c.layout_mode);
}

TEST(TypedConfigKeys, KeyTableIsTheOneListInOrderWithUniqueNames) {
  const auto& keys = train_config_keys();
  std::set<std::string> names;
  for (const auto& k : keys) {
    EXPECT_TRUE(names.insert(k.name).second) << "duplicate key " << k.name;
    EXPECT_FALSE(k.help.empty()) << k.name;
    EXPECT_FALSE(k.group.empty()) << k.name;
  }
  // The list's first and last keys, and the renamed field (key `layout`,
  // TrainConfig::layout_mode).
  ASSERT_FALSE(keys.empty());
  EXPECT_EQ(keys.front().name, "model");
  EXPECT_EQ(keys.back().name, "eval");
  EXPECT_EQ(names.count("layout"), 1u);
  EXPECT_EQ(names.count("layout_mode"), 0u);
  // Every key reads back what the printout gives it (no key without a field or a printer).
  const TrainConfig defaults;
  for (const auto& k : keys) {
    TrainConfig c;
    set_config_value(c, k.name, get_config_value(defaults, k.name));
    EXPECT_EQ(get_config_value(c, k.name), get_config_value(defaults, k.name)) << k.name;
  }
}

TEST(TypedConfigKeys, CheckConfigRefusesAdaptiveRTheTrainerCannotRun) {
  TrainConfig c;  // 4 ranks, tp 1, dp 2, pp 2: a stage of 2 ranks, 4 experts: S = 1
  c.ep = 1;
  c.expert_layout = ExpertLayout::kAdaptive;
  c.adaptive_r = AdaptiveR::every_step();  // verify's, not the trainer's
  const std::string why = check_config(c);
  EXPECT_NE(why.find("config key `adaptive_r` = \"every-step\": expected auto or one of 0, 1 "
                     "(S = 1 ranks per expert)"),
            std::string::npos)
      << why;
  c.adaptive_r = AdaptiveR::value(1);
  EXPECT_EQ(check_config(c), "");
  c.expert_layout = ExpertLayout::kFixed;
  c.ep = 2;
  c.adaptive_r = AdaptiveR::automatic();
  EXPECT_NE(check_config(c).find("`adaptive_r` = \"auto\" needs `expert_layout` = \"adaptive\""),
            std::string::npos);
  // The trainer's placement: W = tp * dp.
  TrainConfig w;
  w.dp = 4;
  w.pp = 1;
  w.num_experts = 2;
  w.expert_layout = ExpertLayout::kAdaptive;
  w.ep = 1;
  EXPECT_EQ(w.placement().stage_size, 4);
  EXPECT_EQ(w.placement().valid_r, (std::vector<int64_t>{0, 1, 2}));
}

}  // namespace
}  // namespace hybridmoe
