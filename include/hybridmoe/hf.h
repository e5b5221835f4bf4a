// hf.h — Hugging Face checkpoints in and out: a model directory's config.json read as (and
// written from) hybridmoe's options for the five MoE families, its safetensors files (one file or
// shards named by model.safetensors.index.json) loaded into a model of any parallel layout — each
// rank reading only the slices it holds — and a whole model written back in either expert layout.
// Every tensor is accounted for: each source tensor is consumed exactly once, each target
// parameter written exactly once; a leftover or missing tensor stops before anything is modified.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/model.h"
#include "hybridmoe/model_presets.h"
#include "hybridmoe/safetensors.h"

namespace hybridmoe::hf {

/// A config.json as hybridmoe options.
struct Config {
  ModelFamily family = ModelFamily::kMixtral;
  GPTOptions options;  ///< the single-process model the file describes (family preset + its keys)
  torch::ScalarType dtype = torch::kFloat32;  ///< `torch_dtype` (v4) or `dtype` (v5)
};

/// Parses config.json text of model_type mixtral, qwen2_moe, qwen3_moe, olmoe or deepseek_v3:
/// every key the Hugging Face model reads, with that family's own defaults where a key is absent
/// (e.g. norm_topk_prob: false for qwen2_moe / qwen3_moe / olmoe, true for deepseek_v3;
/// rope_interleave true). Refused, naming `origin` and the key: an unknown model_type, a wrongly
/// typed value, and any value this code cannot honour (quantization_config, a sliding window, a
/// rope scaling type other than default / linear / yarn, an activation other than silu, router
/// jitter, attention dropout, ...).
Config parse_config(const std::string& json_text, const std::string& origin);
/// parse_config of dir/config.json.
Config read_config(const std::string& dir);
/// config.json for `options` of `family` (keys in the family's names; the weights' dtype as
/// torch_dtype). Refuses options the family's config cannot express (naming the option), so
/// parse_config(config_json(f, o)) describes the model o describes.
std::string config_json(ModelFamily family, const GPTOptions& options, torch::ScalarType dtype);

/// A torch_dtype name ("float32", "bfloat16", "float16", "float64"; also "float", "half",
/// "double") as a ScalarType; refused naming `origin` otherwise.
torch::ScalarType parse_dtype(const std::string& name, const std::string& origin);
/// The inverse, for those four dtypes.
std::string dtype_name(torch::ScalarType dtype);

/// How a checkpoint stores a layer's routed experts.
enum class ExpertLayout {
  kPerExpert,  ///< experts.N.{gate,up,down}_proj.weight (Mixtral: experts.N.w1 / w3 / w2)
  kFused,      ///< Transformers v5: experts.gate_up_proj [E, 2I, H] (gate rows first),
               ///< experts.down_proj [E, H, I]
};
ExpertLayout parse_expert_layout(const std::string& name);  ///< "per-expert" | "fused"
std::string to_string(ExpertLayout layout);

/// The tensors of a model directory: model.safetensors, or the shards model.safetensors.index.json
/// names (every shard it names must exist and hold exactly the tensors the index maps to it).
///
/// Example:
///   auto ckpt = hf::Checkpoint::open("OLMoE-1B-7B");
///   torch::Tensor w = ckpt.get("model.norm.weight");  // over the mapped file, no copy
class Checkpoint {
 public:
  static Checkpoint open(const std::string& dir);
  const std::string& dir() const { return dir_; }
  std::vector<std::string> names() const;  ///< sorted
  bool contains(const std::string& name) const { return where_.count(name) > 0; }
  const safetensors::TensorInfo& info(const std::string& name) const;
  torch::Tensor get(const std::string& name) const;
  /// The file that holds `name` (a path under dir).
  const std::string& file_of(const std::string& name) const;
  const std::vector<std::string>& files() const { return paths_; }

 private:
  std::string dir_;
  std::vector<std::string> paths_;
  std::vector<std::shared_ptr<safetensors::File>> files_;
  std::map<std::string, size_t> where_;
};

/// What a load or a save touched.
struct Coverage {
  int64_t tensors = 0;              ///< source tensors read from (load) or written (save)
  int64_t bytes = 0;                ///< bytes of them read (this rank's slices) or written
  int64_t parameters = 0;           ///< target parameters (and state buffers) written
  int64_t elements = 0;             ///< their elements
  int64_t files = 0;                ///< files written (save)
  std::vector<std::string> unused;  ///< source tensors left unused by --allow-unused
  std::string text() const;         ///< one line
};

/// Loads a checkpoint's tensors into `model` — single-process or this rank's shard of any layout
/// (the model's options must be those of the checkpoint's config, e.g. read_config(dir).options
/// with sizes unchanged). The rank reads only the elements it holds. Before modifying anything it
/// checks, and refuses listing the names: source tensors the model does not consume (unless their
/// name matches `allow_unused`, an ECMAScript regex; they are then listed in the result), tensors
/// the model needs that are missing, a shape other than the one expected, a fused expert tensor
/// with the wrong inner size. Not collective (every rank reads independently).
Coverage load(GPTImpl& model, ModelFamily family, const Checkpoint& checkpoint,
              const std::string& allow_unused = "");

/// Options of save.
struct SaveOptions {
  ExpertLayout layout = ExpertLayout::kPerExpert;
  int64_t max_shard_bytes = 0;  ///< 0: one model.safetensors; else shards + index.json
  torch::ScalarType dtype = torch::kFloat32;  ///< the tensors' dtype on disk
};

/// Writes a single-process model as a Hugging Face model directory `dir`: config.json and the
/// tensors in the family's names, in one file or shards of at most max_shard_bytes (a tensor
/// larger than that gets a shard of its own) with model.safetensors.index.json. Every parameter
/// (and state buffer) is written exactly once and every written tensor is filled completely. The
/// directory appears whole or not at all (written under a temporary name, then renamed); `dir`
/// must not exist.
Coverage save(GPTImpl& model, ModelFamily family, const std::string& dir,
              const SaveOptions& options);

}  // namespace hybridmoe::hf
