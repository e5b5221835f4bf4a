// hf_test.cpp — Hugging Face checkpoints in one process: config.json defaults and refusals per
// family, the config written back, a model saved and loaded back exactly (both expert layouts,
// one file and shards), and every damaged checkpoint refused before the model is touched, the
// message naming the tensor or file. (Agreement with transformers' semantics is proven against
// the independent Python reference by the hf.roundtrip_* tests; layouts by hf_dist_test.cpp.)
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "hybridmoe/hf.h"
#include "hybridmoe/npy.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

namespace fs = std::filesystem;
using testing::throws_with;

// A fresh directory under the temp dir, removed at the end of the test.
struct TempDir {
  std::string path;
  explicit TempDir(const std::string& name)
      : path((fs::temp_directory_path() / ("hmoe-hf-" + name + "-" + std::to_string(::getpid())))
                 .string()) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& leaf) const { return (fs::path(path) / leaf).string(); }
};

// A small model of the family, float64, seeded; DeepSeek's selection bias made non-zero.
GPT family_model(ModelFamily f, uint64_t seed) {
  torch::manual_seed(seed);
  GPT m(model_preset(f).n_layers(3).vocab_size(300));
  m->to(torch::kFloat64);
  torch::NoGradGuard ng;
  if (m->options.gate().selection_bias())
    for (auto& kv : m->named_buffers())
      if (kv.key().find("expert_bias") != std::string::npos) kv.value().uniform_(-0.1, 0.1);
  return m;
}

// Every parameter and the selection biases equal bit for bit.
void expect_same_state(GPTImpl& a, GPTImpl& b) {
  auto pb = b.named_parameters();
  for (auto& kv : a.named_parameters())
    EXPECT_TRUE(torch::equal(kv.value(), pb[kv.key()])) << kv.key();
  auto bb = b.named_buffers();
  for (auto& kv : a.named_buffers())
    if (kv.key().find("expert_bias") != std::string::npos) {
      EXPECT_TRUE(torch::equal(kv.value(), bb[kv.key()])) << kv.key();
    }
}

std::string write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

TEST(HfConfig, EachFamilyTakesItsOwnDefaults) {
  auto parse = [](const std::string& type) {
    return hf::parse_config(R"({"model_type": ")" + type +
                                R"(", "hidden_size": 64, "num_attention_heads": 4,
                                "num_hidden_layers": 2, "vocab_size": 100,
                                "intermediate_size": 96, "moe_intermediate_size": 32,
                                "num_key_value_heads": 2, "q_lora_rank": 16,
                                "kv_lora_rank": 16, "qk_nope_head_dim": 8,
                                "qk_rope_head_dim": 8, "v_head_dim": 8, "n_group": 4,
                                "topk_group": 2, "first_k_dense_replace": 1,
                                "num_experts": 8, "n_routed_experts": 8,
                                "num_local_experts": 8, "num_experts_per_tok": 2})",
                            type);
  };
  // norm_topk_prob: false for qwen2_moe / qwen3_moe / olmoe, true for deepseek_v3; Mixtral always.
  EXPECT_FALSE(parse("qwen2_moe").options.gate().normalize_top_k_weights());
  EXPECT_FALSE(parse("qwen3_moe").options.gate().normalize_top_k_weights());
  EXPECT_FALSE(parse("olmoe").options.gate().normalize_top_k_weights());
  EXPECT_TRUE(parse("deepseek_v3").options.gate().normalize_top_k_weights());
  EXPECT_TRUE(parse("mixtral").options.gate().normalize_top_k_weights());
  // rope_theta: 1e6 for Mixtral, 1e4 for the others; rope_interleave true for DeepSeek.
  EXPECT_EQ(parse("mixtral").options.rope_theta(), 1e6);
  EXPECT_EQ(parse("olmoe").options.rope_theta(), 1e4);
  EXPECT_TRUE(parse("deepseek_v3").options.rope_interleaved());
  // qwen2_moe: q/k/v biases by default, none on the output, shared expert of 5632.
  const auto q2 = parse("qwen2_moe").options;
  EXPECT_TRUE(q2.qkv_bias());
  EXPECT_FALSE(q2.attn_out_bias());
  EXPECT_EQ(q2.shared_expert_hidden(), 5632);
  EXPECT_EQ(parse("deepseek_v3").options.gate().routed_scaling_factor(), 2.5);
  EXPECT_EQ(parse("deepseek_v3").options.shared_expert_hidden(), 32);  // 1 * moe_intermediate
  EXPECT_EQ(parse("olmoe").options.expert_hidden(), 96);               // intermediate_size
  EXPECT_EQ(parse("olmoe").options.gate().aux_loss_coef(), 1e-2);
  // v5's rope_parameters and dtype spellings are read too.
  auto v5 = hf::parse_config(R"({"model_type": "olmoe", "hidden_size": 64, "num_attention_heads":
      4, "num_hidden_layers": 1, "dtype": "bfloat16",
      "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0}})",
                             "v5");
  EXPECT_EQ(v5.options.rope_theta(), 5000.0);
  EXPECT_EQ(v5.dtype, torch::kBFloat16);
  // DeepSeek-V3's released rope scaling: YaRN, factor 40 over 4096 positions.
  auto yarn = hf::parse_config(R"({"model_type": "deepseek_v3", "hidden_size": 64,
      "num_attention_heads": 4, "num_hidden_layers": 1, "max_position_embeddings": 163840,
      "q_lora_rank": 16, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8,
      "v_head_dim": 8, "n_routed_experts": 8, "n_group": 4, "topk_group": 2,
      "first_k_dense_replace": 0, "moe_intermediate_size": 16, "num_experts_per_tok": 2,
      "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
        "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}})",
                               "yarn");
  EXPECT_EQ(yarn.options.rope_scaling(), RopeScaling::kYarn);
  EXPECT_EQ(yarn.options.rope_factor(), 40.0);
  EXPECT_EQ(yarn.options.rope_original_max_positions(), 4096);
  EXPECT_EQ(yarn.options.yarn_mscale_all_dim(), 1.0);
  const std::string back =
      hf::config_json(ModelFamily::kDeepSeekV3, yarn.options, torch::kBFloat16);
  EXPECT_EQ(hf::parse_config(back, "back").options.rope_factor(), 40.0);
}

TEST(HfConfig, RefusesWhatItCannotHonourByName) {
  auto refuse = [](const std::string& extra, const std::string& needle,
                   const std::string& type = "qwen2_moe") {
    return throws_with(
        [&] {
          hf::parse_config(R"({"model_type": ")" + type +
                               R"(", "hidden_size": 64, "num_attention_heads": 4)" + extra + "}",
                           "cfg.json");
        },
        needle);
  };
  EXPECT_TRUE(refuse("", "model_type \"llama\" is not supported", "llama"));
  EXPECT_TRUE(refuse(R"(, "quantization_config": {"quant_method": "fp8"})", "quantization_config"));
  EXPECT_TRUE(refuse(R"(, "use_sliding_window": true)", "use_sliding_window"));
  EXPECT_TRUE(refuse(R"(, "sliding_window": 4096)", "sliding_window 4096", "mixtral"));
  EXPECT_TRUE(refuse(R"(, "router_jitter_noise": 0.1)", "router_jitter_noise 0.1", "mixtral"));
  EXPECT_TRUE(refuse(R"(, "rope_scaling": {"type": "dynamic", "factor": 2.0})",
                     "type \"dynamic\" is not supported"));
  EXPECT_TRUE(refuse(R"(, "hidden_act": "gelu")", "hidden_act \"gelu\""));
  EXPECT_TRUE(refuse(R"(, "max_position_embeddings": 100, "rope_scaling": {"type": "yarn",
      "factor": 4.0, "original_max_position_embeddings": 16})",
                     "factor 4 disagrees with max_position_embeddings 100"));
  EXPECT_TRUE(refuse(R"(, "num_hidden_layers": "2")", "`num_hidden_layers` must be an integer"));
  EXPECT_TRUE(refuse(R"(, "attention_dropout": 0.1)", "attention_dropout 0.1"));
  EXPECT_TRUE(refuse(R"(, "scoring_func": "softmax")", "scoring_func", "deepseek_v3"));
  EXPECT_TRUE(
      throws_with([] { hf::parse_config("[1, 2]", "x.json"); }, "x.json: expected a JSON object"));
  EXPECT_TRUE(throws_with([] { hf::parse_config("{", "x.json"); }, "x.json: not valid JSON"));
}

TEST(HfConfig, WrittenConfigDescribesTheSameModel) {
  for (auto f : moe_families()) {
    const GPTOptions o = model_preset(f).vocab_size(300);
    const auto back = hf::parse_config(hf::config_json(f, o, torch::kBFloat16), "exported");
    EXPECT_EQ(back.family, f);
    EXPECT_EQ(back.dtype, torch::kBFloat16);
    // The same parameters, of the same shapes.
    GPT a(o), b(back.options);
    auto pb = b->named_parameters();
    ASSERT_EQ(a->named_parameters().size(), pb.size()) << to_string(f);
    for (auto& kv : a->named_parameters())
      EXPECT_EQ(kv.value().sizes(), pb[kv.key()].sizes()) << to_string(f) << " " << kv.key();
  }
  // A Mixtral with q/k/v biases has no Mixtral config.json.
  EXPECT_TRUE(throws_with(
      [] {
        hf::config_json(ModelFamily::kMixtral, model_preset(ModelFamily::kMixtral).qkv_bias(true),
                        torch::kFloat32);
      },
      "qkv_bias"));
}

TEST(HfCheckpoint, SavedModelLoadsBackExactlyInEveryLayoutOnDisk) {
  for (auto f : moe_families())
    for (auto layout : {hf::ExpertLayout::kPerExpert, hf::ExpertLayout::kFused})
      for (int64_t shard : {int64_t{0}, int64_t{20000}}) {
        SCOPED_TRACE(to_string(f) + " " + hf::to_string(layout) + " shard " +
                     std::to_string(shard));
        TempDir tmp("save");
        GPT src = family_model(f, 1);
        hf::SaveOptions so;
        so.layout = layout;
        so.max_shard_bytes = shard;
        so.dtype = torch::kFloat64;
        const auto wrote = hf::save(*src, f, tmp / "m", so);
        EXPECT_EQ(wrote.parameters, static_cast<int64_t>(src->parameters().size()) +
                                        (f == ModelFamily::kDeepSeekV3 ? 2 : 0));
        EXPECT_EQ(fs::exists(tmp / "m/model.safetensors.index.json"), shard > 0);
        auto ckpt = hf::Checkpoint::open(tmp / "m");
        // Names as the family writes them.
        const bool fused = layout == hf::ExpertLayout::kFused;
        const std::string moe_block = f == ModelFamily::kDeepSeekV3 ? "1" : "0";
        const std::string prefix =
            "model.layers." + moe_block + "." +
            (f == ModelFamily::kMixtral && !fused ? "block_sparse_moe." : "mlp.");
        EXPECT_TRUE(
            ckpt.contains(prefix + (fused                        ? "experts.gate_up_proj"
                                    : f == ModelFamily::kMixtral ? "experts.7.w1.weight"
                                                                 : "experts.7.gate_proj.weight")));
        const auto cfg = hf::read_config(tmp / "m");
        GPT dst(cfg.options);
        dst->to(torch::kFloat64);
        const auto read = hf::load(*dst, f, ckpt);
        EXPECT_EQ(read.parameters, wrote.parameters);
        EXPECT_EQ(read.elements, wrote.elements);
        EXPECT_EQ(read.tensors, wrote.tensors);
        expect_same_state(*src, *dst);
      }
}

// Rewrites dir's single model.safetensors with `edit` applied to its tensors.
void rewrite(const std::string& dir,
             const std::function<void(std::vector<std::pair<std::string, torch::Tensor>>&)>& edit) {
  const std::string path = dir + "/model.safetensors";
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  {
    auto f = safetensors::File::open(path);
    for (const auto& t : f.tensors()) tensors.emplace_back(t.name, f.get(t.name).clone());
  }
  edit(tensors);
  fs::remove(path);
  safetensors::save(path, tensors);
}

TEST(HfCheckpoint, DamagedCheckpointsAreRefusedBeforeAnythingIsLoaded) {
  TempDir tmp("damaged");
  const auto f = ModelFamily::kQwen2MoE;
  GPT src = family_model(f, 2);
  auto save = [&](const std::string& name, hf::ExpertLayout layout, int64_t shard) {
    hf::SaveOptions so;
    so.layout = layout;
    so.max_shard_bytes = shard;
    hf::save(*src, f, tmp / name, so);
    return tmp / name;
  };
  auto refused = [&](const std::string& dir, const std::string& needle) {
    GPT dst = family_model(f, 3);
    GPT before = family_model(f, 3);
    auto r = throws_with([&] { hf::load(*dst, f, hf::Checkpoint::open(dir)); }, needle);
    expect_same_state(*dst, *before);  // nothing was modified
    return r;
  };
  const std::string e3 = "model.layers.0.mlp.experts.3.up_proj.weight";
  // 1. A missing expert tensor.
  const auto missing = save("missing", hf::ExpertLayout::kPerExpert, 0);
  rewrite(missing, [&](auto& ts) {
    ts.erase(std::remove_if(ts.begin(), ts.end(), [&](auto& t) { return t.first == e3; }),
             ts.end());
  });
  EXPECT_TRUE(refused(missing, "lacks 1 tensor(s)"));
  EXPECT_TRUE(refused(missing, e3));
  // 2. An extra tensor; accepted, and listed, with --allow-unused.
  const auto extra = save("extra", hf::ExpertLayout::kPerExpert, 0);
  rewrite(extra,
          [](auto& ts) { ts.emplace_back("model.layers.9.mlp.gate.weight", torch::ones({2})); });
  EXPECT_TRUE(refused(extra, "model.layers.9.mlp.gate.weight"));
  {
    GPT dst = family_model(f, 3);
    const auto cov = hf::load(*dst, f, hf::Checkpoint::open(extra), R"(model\.layers\.9\..*)");
    ASSERT_EQ(cov.unused.size(), 1u);
    EXPECT_EQ(cov.unused[0], "model.layers.9.mlp.gate.weight");
  }
  // 3. A wrong shape.
  const auto shape = save("shape", hf::ExpertLayout::kPerExpert, 0);
  rewrite(shape, [&](auto& ts) {
    for (auto& t : ts)
      if (t.first == e3) t.second = t.second.narrow(0, 0, t.second.size(0) - 1).contiguous();
  });
  EXPECT_TRUE(refused(shape, e3 + " (" + shape + "/model.safetensors): expected shape"));
  // 4. A fused gate_up_proj of the wrong inner size.
  const auto inner = save("inner", hf::ExpertLayout::kFused, 0);
  rewrite(inner, [](auto& ts) {
    for (auto& t : ts)
      if (t.first == "model.layers.0.mlp.experts.gate_up_proj")
        t.second = torch::cat({t.second, t.second.narrow(1, 0, 2)}, 1);
  });
  EXPECT_TRUE(refused(inner, "model.layers.0.mlp.experts.gate_up_proj"));
  // 5. A truncated shard.
  const auto trunc = save("trunc", hf::ExpertLayout::kPerExpert, 20000);
  // The shards' names, from the index's directory.
  std::vector<std::string> shards;
  for (const auto& e : fs::directory_iterator(trunc))
    if (e.path().extension() == ".safetensors") shards.push_back(e.path().filename().string());
  std::sort(shards.begin(), shards.end());
  ASSERT_GE(shards.size(), 3u);
  const std::string shard1 = trunc + "/" + shards[0];
  fs::resize_file(shard1, fs::file_size(shard1) - 5);
  EXPECT_TRUE(refused(trunc, shards[0]));
  // 6. An index naming a file that is not there.
  const auto gone = save("gone", hf::ExpertLayout::kPerExpert, 20000);
  fs::remove(gone + "/" + shards[1]);
  EXPECT_TRUE(refused(gone, shards[1] + " is missing"));
  // 7. A shard holding a tensor its index does not name (its line taken out of the index).
  const auto stray = save("stray", hf::ExpertLayout::kPerExpert, 20000);
  const std::string index = stray + "/model.safetensors.index.json";
  std::string text, line;
  {
    std::ifstream in(index);
    while (std::getline(in, line))
      if (line.find("\"model.layers.0.input_layernorm.weight\"") == std::string::npos)
        text += line + "\n";
  }
  write(index, text);
  EXPECT_TRUE(refused(stray, "holds tensor model.layers.0.input_layernorm.weight which " + index +
                                 " does not name"));
  // 8. An export never overwrites, and a model without a family name is refused.
  EXPECT_TRUE(throws_with([&] { save("stray", hf::ExpertLayout::kPerExpert, 0); }, "exists"));
}

TEST(HfCheckpoint, FailedExportLeavesNoDirectory) {
  TempDir tmp("fault");
  GPT src = family_model(ModelFamily::kOLMoE, 4);
  hf::SaveOptions so;
  so.max_shard_bytes = 20000;
  // A full disk while the third shard is written (the durable writer's test hook).
  ::setenv("HMOE_FAULT_WRITE", "model-00003-of", 1);
  EXPECT_TRUE(
      throws_with([&] { hf::save(*src, ModelFamily::kOLMoE, tmp / "out", so); }, "model-00003-of"));
  ::unsetenv("HMOE_FAULT_WRITE");
  EXPECT_FALSE(fs::exists(tmp / "out"));
  EXPECT_TRUE(fs::is_empty(tmp.path));  // no temporary left either
}

TEST(Npy, HeaderAndDataAsNumPyWritesThem) {
  auto t = torch::arange(6, torch::kFloat64).view({2, 3});
  const std::string b = npy::serialize(t);
  ASSERT_GE(b.size(), 10u);
  EXPECT_EQ(b.substr(0, 6), std::string("\x93NUMPY", 6));
  EXPECT_EQ(b[6], 1);
  EXPECT_EQ(b[7], 0);
  const size_t header = static_cast<unsigned char>(b[8]) | (static_cast<unsigned char>(b[9]) << 8);
  EXPECT_EQ((10 + header) % 64, 0u);
  const std::string h = b.substr(10, header);
  EXPECT_NE(h.find("'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }"), std::string::npos)
      << h;
  EXPECT_EQ(h.back(), '\n');
  ASSERT_EQ(b.size(), 10 + header + 6 * sizeof(double));
  EXPECT_EQ(std::memcmp(b.data() + 10 + header, t.data_ptr<double>(), 6 * sizeof(double)), 0);
  EXPECT_NE(npy::serialize(torch::zeros({4}, torch::kInt64)).find("'shape': (4,)"),
            std::string::npos);
  EXPECT_TRUE(throws_with([] { npy::serialize(torch::zeros({2}, torch::kBool)); },
                          "npy: expected float32, float64, int64 or int32"));
}

}  // namespace
}  // namespace hybridmoe
