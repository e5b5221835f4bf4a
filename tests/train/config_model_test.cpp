// config_model_test.cpp — the model families in the trainer's configuration (train.h): key
// `model` sets the family's preset (model_preset, model_presets.h) under every key given
// explicitly, whatever their order; the defaults keep the example GPT; the architecture and
// routing keys reach GPTOptions / GateOptions; check_config refuses what GPTOptions::check and
// the gates refuse, naming the key, with the model's and the gate's own message.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "hybridmoe/train.h"
#include "train/train_fixtures.h"

namespace hybridmoe {
namespace {

using testing::error_of;

// Every field of the two gates' options, and the routing rules they resolve to. The k weights'
// renormalization is compared as the gate reads it (normalize_top_k_weights() and the resolved
// rule): the key `normalize_top_k_weights` = false leaves the rule unset where a preset may
// spell out its default (none).
void expect_same_gate(const GateOptions& a, const GateOptions& b, const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_EQ(a.type(), b.type());
  EXPECT_EQ(a.top_k(), b.top_k());
  EXPECT_EQ(a.capacity_factor(), b.capacity_factor());
  EXPECT_EQ(a.eval_capacity_factor(), b.eval_capacity_factor());
  EXPECT_EQ(a.min_capacity(), b.min_capacity());
  EXPECT_EQ(a.convention(), b.convention());
  EXPECT_EQ(a.drop_policy(), b.drop_policy());
  EXPECT_EQ(a.slot_order(), b.slot_order());
  EXPECT_EQ(a.capacity_formula(), b.capacity_formula());
  EXPECT_EQ(a.balance_loss_choices(), b.balance_loss_choices());
  EXPECT_EQ(a.batch_prioritized(), b.batch_prioritized());
  EXPECT_EQ(a.normalize_top_k_weights(), b.normalize_top_k_weights());
  EXPECT_EQ(a.aux_loss_coef(), b.aux_loss_coef());
  EXPECT_EQ(a.z_loss_coef(), b.z_loss_coef());
  EXPECT_EQ(a.seed(), b.seed());
  EXPECT_EQ(a.softmax_over_topk(), b.softmax_over_topk());
  EXPECT_EQ(a.bias_update_rate(), b.bias_update_rate());
  EXPECT_EQ(a.score_function(), b.score_function());
  EXPECT_EQ(a.selection_bias(), b.selection_bias());
  EXPECT_EQ(a.n_group(), b.n_group());
  EXPECT_EQ(a.topk_group(), b.topk_group());
  EXPECT_EQ(a.routed_scaling_factor(), b.routed_scaling_factor());
  EXPECT_EQ(a.gumbel_second_expert(), b.gumbel_second_expert());
  EXPECT_EQ(a.random_routing(), b.random_routing());
  EXPECT_EQ(a.jitter_eps(), b.jitter_eps());
  EXPECT_EQ(a.random_token_selection(), b.random_token_selection());
  EXPECT_EQ(a.cosine_projection_dim(), b.cosine_projection_dim());
  EXPECT_EQ(a.cosine_init_temperature(), b.cosine_init_temperature());
  EXPECT_EQ(a.noise_epsilon(), b.noise_epsilon());
  EXPECT_EQ(a.sinkhorn_tolerance(), b.sinkhorn_tolerance());
  EXPECT_EQ(a.sinkhorn_max_iterations(), b.sinkhorn_max_iterations());
  const RoutingRules ra = resolve_routing_rules(a), rb = resolve_routing_rules(b);
  EXPECT_EQ(ra.drop_policy, rb.drop_policy);
  EXPECT_EQ(ra.slot_order, rb.slot_order);
  EXPECT_EQ(ra.weight_normalization, rb.weight_normalization);
  EXPECT_EQ(ra.capacity_formula, rb.capacity_formula);
  EXPECT_EQ(ra.balance_loss_choices, rb.balance_loss_choices);
  EXPECT_EQ(ra.batch_prioritized, rb.batch_prioritized);
  EXPECT_EQ(ra.softmax_over_topk, rb.softmax_over_topk);
}

// Every field of the two models' options (the gate's with expect_same_gate).
void expect_same_model(const GPTOptions& a, const GPTOptions& b, const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_EQ(a.vocab_size(), b.vocab_size());
  EXPECT_EQ(a.context(), b.context());
  EXPECT_EQ(a.d_model(), b.d_model());
  EXPECT_EQ(a.n_layers(), b.n_layers());
  EXPECT_EQ(a.n_heads(), b.n_heads());
  EXPECT_EQ(a.norm(), b.norm());
  EXPECT_EQ(a.norm_eps(), b.norm_eps());
  EXPECT_EQ(a.position(), b.position());
  EXPECT_EQ(a.rope_theta(), b.rope_theta());
  EXPECT_EQ(a.rotary_dim(), b.rotary_dim());
  EXPECT_EQ(a.rope_interleaved(), b.rope_interleaved());
  EXPECT_EQ(a.rope_scaling(), b.rope_scaling());
  EXPECT_EQ(a.rope_factor(), b.rope_factor());
  EXPECT_EQ(a.rope_original_max_positions(), b.rope_original_max_positions());
  EXPECT_EQ(a.yarn_beta_fast(), b.yarn_beta_fast());
  EXPECT_EQ(a.yarn_beta_slow(), b.yarn_beta_slow());
  EXPECT_EQ(a.yarn_attention_factor(), b.yarn_attention_factor());
  EXPECT_EQ(a.yarn_mscale(), b.yarn_mscale());
  EXPECT_EQ(a.yarn_mscale_all_dim(), b.yarn_mscale_all_dim());
  EXPECT_EQ(a.yarn_truncate(), b.yarn_truncate());
  EXPECT_EQ(a.attention(), b.attention());
  EXPECT_EQ(a.n_kv_heads(), b.n_kv_heads());
  EXPECT_EQ(a.head_dim(), b.head_dim());
  EXPECT_EQ(a.qkv_bias(), b.qkv_bias());
  EXPECT_EQ(a.attn_out_bias(), b.attn_out_bias());
  EXPECT_EQ(a.qk_norm(), b.qk_norm());
  EXPECT_EQ(a.clip_qkv(), b.clip_qkv());
  EXPECT_EQ(a.q_lora_rank(), b.q_lora_rank());
  EXPECT_EQ(a.kv_lora_rank(), b.kv_lora_rank());
  EXPECT_EQ(a.qk_nope_head_dim(), b.qk_nope_head_dim());
  EXPECT_EQ(a.qk_rope_head_dim(), b.qk_rope_head_dim());
  EXPECT_EQ(a.v_head_dim(), b.v_head_dim());
  EXPECT_EQ(a.latent_norm_eps(), b.latent_norm_eps());
  EXPECT_EQ(a.d_mlp(), b.d_mlp());
  EXPECT_EQ(a.mlp_activation(), b.mlp_activation());
  EXPECT_EQ(a.mlp_bias(), b.mlp_bias());
  EXPECT_EQ(a.moe_every(), b.moe_every());
  EXPECT_EQ(a.first_k_dense(), b.first_k_dense());
  EXPECT_EQ(a.mlp_only_layers(), b.mlp_only_layers());
  EXPECT_EQ(a.tie_embeddings(), b.tie_embeddings());
  EXPECT_EQ(a.num_experts(), b.num_experts());
  EXPECT_EQ(a.expert_hidden(), b.expert_hidden());
  EXPECT_EQ(a.expert_activation(), b.expert_activation());
  EXPECT_EQ(a.expert_bias(), b.expert_bias());
  EXPECT_EQ(a.shared_expert_hidden(), b.shared_expert_hidden());
  EXPECT_EQ(a.shared_expert_gate(), b.shared_expert_gate());
  EXPECT_EQ(a.expert_layout(), b.expert_layout());
  EXPECT_EQ(a.adaptive_r(), b.adaptive_r());
  EXPECT_EQ(a.a2a_overlap_degree(), b.a2a_overlap_degree());
  EXPECT_EQ(a.recompute(), b.recompute());
  EXPECT_EQ(a.recompute_cache_comm(), b.recompute_cache_comm());
  for (int64_t i = 0; i < std::max(a.n_layers(), b.n_layers()); ++i)
    EXPECT_EQ(a.is_moe_block(i), b.is_moe_block(i)) << "block " << i;
  expect_same_gate(a.gate(), b.gate(), what + " gate");
}

// One process, no parallelism: the layout keys a preset leaves alone.
TrainConfig one_process() {
  TrainConfig c;
  c.nproc = c.tp = c.dp = c.pp = c.ep = c.etp = 1;
  return c;
}

// Every key's text of two configurations.
void expect_same_keys(const TrainConfig& a, const TrainConfig& b, const std::string& what) {
  for (const auto& k : train_config_keys())
    EXPECT_EQ(get_config_value(a, k.name), get_config_value(b, k.name)) << what << ": " << k.name;
}

TEST(ConfigPreset, OnlyModelGivesTheFamilysPresetExactly) {
  for (ModelFamily f : moe_families()) {
    const std::string name = to_string(f);
    TrainConfig c = one_process();
    apply_config_values(c, {{"model", name}});
    EXPECT_EQ(c.model, f);
    expect_same_model(c.model_options(), model_preset(f), name);
    EXPECT_EQ(check_config(c), "") << name;
    // The same from a TOML file, at the top level or in [model].
    TrainConfig t = one_process(), u = one_process();
    apply_toml_text(t, "model = \"" + name + "\"\n", "t.toml");
    apply_toml_text(u, "[model]\nmodel = \"" + name + "\"\n", "u.toml");
    expect_same_keys(t, c, name + " from TOML");
    expect_same_keys(u, c, name + " from [model]");
  }
}

TEST(ConfigPreset, DefaultsKeepTheExampleGPT) {
  // Today's model: the options the trainer built before the family keys (the example GPT:
  // LayerNorm, learned positions, GELU, biases, tied head), every new option at its default.
  const TrainConfig c;
  EXPECT_EQ(c.model, ModelFamily::kGPT);
  GateOptions g;
  g.type(c.gate)
      .convention(parse_convention(c.convention))
      .top_k(c.top_k)
      .capacity_factor(c.capacity_factor)
      .aux_loss_coef(c.aux_loss_coef)
      .z_loss_coef(c.z_loss_coef);
  const GPTOptions before = GPTOptions()
                                .context(c.context)
                                .d_model(c.d_model)
                                .n_layers(c.n_layers)
                                .n_heads(c.n_heads)
                                .d_mlp(c.d_mlp)
                                .moe_every(c.moe_every)
                                .num_experts(c.num_experts)
                                .expert_hidden(c.expert_hidden)
                                .gate(g);
  expect_same_model(c.model_options(), before, "defaults");
  // model = gpt is model_preset(gpt), and choosing it changes no key.
  expect_same_model(c.model_options(), model_preset(ModelFamily::kGPT), "gpt");
  TrainConfig d;
  apply_config_values(d, {{"model", "gpt"}});
  expect_same_keys(d, c, "model = gpt");
}

TEST(ConfigPreset, ExplicitKeysWinWhateverTheirOrder) {
  const GPTOptions want = model_preset(ModelFamily::kMixtral).n_layers(6);
  TrainConfig before = one_process(), after = one_process();
  apply_config_values(before, {{"n_layers", "6"}, {"model", "mixtral"}});
  apply_config_values(after, {{"model", "mixtral"}, {"n_layers", "6"}});
  expect_same_model(before.model_options(), want, "n_layers then model");
  expect_same_model(after.model_options(), want, "model then n_layers");
  // In a TOML file, in either order and either table; and the file's keys under a flag's model.
  TrainConfig t = one_process(), u = one_process(), v = one_process();
  apply_toml_text(t, "n_layers = 6\nmodel = \"mixtral\"\n", "t.toml");
  apply_toml_text(u, "[model]\nn_layers = 6\nmodel = \"mixtral\"\n", "u.toml");
  ConfigValues file_then_flags = read_toml_text("[model]\nn_layers = 6\n", "v.toml");
  file_then_flags.emplace_back("model", "mixtral");
  apply_config_values(v, file_then_flags);
  expect_same_keys(t, after, "TOML");
  expect_same_keys(u, after, "TOML [model]");
  expect_same_keys(v, after, "file, then flags");
  // A later value of a key wins (a flag over the file).
  TrainConfig w = one_process();
  apply_config_values(w, {{"model", "mixtral"}, {"n_layers", "5"}, {"n_layers", "6"}});
  expect_same_keys(w, after, "later wins");
}

TEST(ConfigPreset, ModelOfTheSameFamilyKeepsKeysAndAnotherResetsThem) {
  // Over a configuration of that family (a resumed checkpoint's), `model` changes nothing.
  TrainConfig c = one_process();
  apply_config_values(c, {{"model", "deepseek_v3"}, {"n_layers", "6"}, {"top_k", "3"}});
  const TrainConfig kept = c;
  apply_config_values(c, {{"model", "deepseek_v3"}});
  expect_same_keys(c, kept, "same family");
  // Another family sets all of its preset again; back to gpt gives the defaults.
  apply_config_values(c, {{"model", "olmoe"}});
  TrainConfig olmoe = one_process();
  apply_config_values(olmoe, {{"model", "olmoe"}});
  expect_same_keys(c, olmoe, "deepseek_v3 then olmoe");
  apply_config_values(c, {{"model", "gpt"}});
  expect_same_keys(c, one_process(), "olmoe then gpt");
  // set_config_value sets the field only: a configuration read back key by key keeps its keys.
  TrainConfig d = kept;
  set_config_value(d, "model", "mixtral");
  EXPECT_EQ(d.model, ModelFamily::kMixtral);
  EXPECT_EQ(d.n_layers, kept.n_layers);
  EXPECT_EQ(d.attention, kept.attention);
}

TEST(ConfigPreset, PresetSetsTheModelAndMoeTablesOnly) {
  TrainConfig c;  // the default layout, with some other keys changed
  c.steps = 7;
  c.lr = 0.01;
  c.dtype = DType::kFloat64;
  c.recompute = Recompute::kBlock;
  for (ModelFamily f : moe_families()) {
    TrainConfig p = c;
    apply_model_preset(p, f);
    TrainConfig reference;
    apply_model_preset(reference, f);
    for (const auto& k : train_config_keys()) {
      const bool preset = k.group == "model" || k.group == "moe";
      EXPECT_EQ(get_config_value(p, k.name), get_config_value(preset ? reference : c, k.name))
          << to_string(f) << ": " << k.name;
    }
  }
}

TEST(ConfigPreset, PrintedFamilyConfigurationReadsBack) {
  for (ModelFamily f : moe_families()) {
    TrainConfig c = one_process();
    apply_config_values(c, {{"model", to_string(f)}, {"n_layers", "3"}, {"mlp_only_layers", "1"}});
    const std::string toml = config_to_toml(c);
    EXPECT_NE(toml.find("model = \"" + to_string(f) + "\""), std::string::npos) << toml;
    TrainConfig d;
    apply_toml_text(d, toml, "printed");
    expect_same_keys(d, c, to_string(f));
  }
}

// The first line of an error (the message without LibTorch's context lines).
std::string first_line(const std::string& what) {
  return what.substr(0, what.find('\n'));
}

// check_config of `c` holds `key` and, when given, the reference message (the first line of the
// model's or the gate's own error) — and validate_config raises it.
void expect_refused(const TrainConfig& c, const std::string& key, const std::string& reference,
                    const std::string& what) {
  SCOPED_TRACE(what);
  const std::string why = check_config(c);
  EXPECT_NE(why.find(key), std::string::npos) << why;
  EXPECT_FALSE(reference.empty());
  EXPECT_NE(why.find(reference), std::string::npos) << why << "\nreference: " << reference;
  EXPECT_NE(error_of([&] { validate_config(c); }).find(key), std::string::npos);
}

// The architecture's own refusal of `c` (GPTOptions::check at the configuration's tp).
std::string model_error(const TrainConfig& c) {
  return first_line(error_of([&] { c.model_options().check(c.tp); }));
}
// The gate's own refusal of `c` (the gate built as the model builds it).
std::string gate_error(const TrainConfig& c) {
  return first_line(
      error_of([&] { make_gate(c.d_model, c.num_experts, c.model_options().gate()); }));
}

TrainConfig with(const std::function<void(TrainConfig&)>& f) {
  TrainConfig c = one_process();
  f(c);
  return c;
}

TEST(ConfigRefusal, HeadsAndKvHeads) {
  // n_heads not divisible by n_kv_heads.
  auto c = with([](TrainConfig& c) { c.n_kv_heads = 3; });
  expect_refused(c, "n_kv_heads=3", model_error(c), "n_heads % n_kv_heads");
  // tp neither dividing nor a multiple of the kv heads: 12 heads, 4 kv heads, tp 3.
  c = with([](TrainConfig& c) {
    c.d_model = 48;
    c.n_heads = 12;
    c.n_kv_heads = 4;
    c.nproc = c.tp = 3;
  });
  expect_refused(c, "n_kv_heads=4", model_error(c), "tp and n_kv_heads");
  EXPECT_NE(check_config(c).find("tp=3"), std::string::npos);
  // tp dividing the kv heads, or a multiple of them: accepted.
  c.tp = c.nproc = 2;
  EXPECT_EQ(check_config(c), "");
  c.n_kv_heads = 2;
  c.tp = c.nproc = 4;
  EXPECT_EQ(check_config(c), "");
  // head_dim frees d_model from n_heads; without it they must divide.
  c = with([](TrainConfig& c) {
    c.n_heads = 6;
    c.head_dim = 16;
  });
  EXPECT_EQ(check_config(c), "");
  c.head_dim = 0;
  EXPECT_NE(check_config(c).find("config key `n_heads` = 6 must divide `d_model` = 64"),
            std::string::npos)
      << check_config(c);
  // Latent attention needs its ranks; a block index out of range in mlp_only_layers.
  c = with([](TrainConfig& c) {
    c.attention = AttentionType::kLatent;
    c.position = PositionType::kRope;
  });
  expect_refused(c, "kv_lora_rank", model_error(c), "latent ranks");
  c = with([](TrainConfig& c) { c.mlp_only_layers = {1, 7}; });
  expect_refused(c, "mlp_only_layers", model_error(c), "mlp_only_layers");
}

TEST(ConfigRefusal, ExpertGroups) {
  // n_group not dividing num_experts.
  auto c = with([](TrainConfig& c) { c.n_group = 3; });
  expect_refused(c, "n_group", gate_error(c), "n_group | num_experts");
  // topk_group > n_group.
  c = with([](TrainConfig& c) {
    c.num_experts = 8;
    c.n_group = 4;
    c.topk_group = 5;
  });
  expect_refused(c, "topk_group", gate_error(c), "topk_group > n_group");
  // top_k beyond the experts of the kept groups: 8 experts in 4 groups of 2, 1 group kept.
  c = with([](TrainConfig& c) {
    c.num_experts = 8;
    c.n_group = 4;
    c.topk_group = 1;
    c.top_k = 3;
  });
  expect_refused(c, "top_k=3", gate_error(c), "top_k > topk_group * num_experts / n_group");
  c.topk_group = 2;  // 4 experts kept: top_k 3 fits
  EXPECT_EQ(check_config(c), "");
}

TEST(ConfigRefusal, FamilyRoutingOnAnotherGate) {
  const std::vector<std::pair<std::string, std::function<void(TrainConfig&)>>> cases = {
      {"score_function", [](TrainConfig& c) { c.score_function = ScoreFunction::kSigmoid; }},
      {"selection_bias", [](TrainConfig& c) { c.selection_bias = true; }},
      {"n_group", [](TrainConfig& c) { c.n_group = 2; }},
      {"routed_scaling_factor", [](TrainConfig& c) { c.routed_scaling_factor = 2.5; }},
  };
  for (const auto& [key, set] : cases) {
    auto c = with([&](TrainConfig& c) {
      c.gate = "noisy";
      set(c);
    });
    expect_refused(c, key, gate_error(c), key + " on the noisy gate");
    c.gate = "topk";
    EXPECT_EQ(check_config(c), "") << key;
  }
  // The balancing rate and the kept groups (with their n_group) too.
  for (const std::string key : {"bias_update_rate", "topk_group"}) {
    auto c = with([&](TrainConfig& c) {
      c.gate = "noisy";
      set_config_value(c, key, key == "topk_group" ? "2" : "0.001");
      if (key == "topk_group") c.n_group = 2;
    });
    expect_refused(c, key, gate_error(c), key + " on the noisy gate");
    c.gate = "topk";
    EXPECT_EQ(check_config(c), "") << key;
  }
  // normalize_top_k_weights = false leaves the gshard gate its own rule; true is refused by it.
  auto g = with([](TrainConfig& c) { c.gate = "gshard"; });
  EXPECT_EQ(check_config(g), "");
  g.normalize_top_k_weights = true;
  expect_refused(g, "weight_normalization", gate_error(g), "normalize on gshard");
}

TEST(ConfigRefusal, AnUnknownConventionIsTheGatesProblemOnly) {
  const auto c = with([](TrainConfig& c) { c.convention = "fastmoe"; });
  const std::string why = check_config(c);
  EXPECT_NE(why.find("`convention` = \"fastmoe\""), std::string::npos) << why;
  EXPECT_NE(why.find(gate_error(c)), std::string::npos) << why;
  EXPECT_EQ(why.find("architecture"), std::string::npos) << why;
}

TEST(ConfigPreset, EveryFamilyPassesTheChecksWithTensorParallelism) {
  // The presets on two tensor-parallel ranks (kv heads split or whole).
  for (ModelFamily f : moe_families()) {
    TrainConfig c = one_process();
    c.nproc = c.tp = 2;
    apply_config_values(c, {{"model", to_string(f)}});
    EXPECT_EQ(check_config(c), "") << to_string(f);
  }
}

}  // namespace
}  // namespace hybridmoe
