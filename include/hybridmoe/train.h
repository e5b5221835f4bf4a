// train.h — the trainer behind `hmoe train`: its configuration (TOML file and/or flags, checked
// before any rank starts), the training loop (AdamW, warmup + cosine LR, global-norm clipping
// over sharded and replicated parameters, gradient accumulation, MoE aux and z-losses), metrics,
// the end-of-run summary and report, sharded checkpoints with resume, and greedy generation.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/data.h"
#include "hybridmoe/dist.h"
#include "hybridmoe/grouped_dp.h"
#include "hybridmoe/hf.h"
#include "hybridmoe/model.h"
#include "hybridmoe/model_presets.h"
#include "hybridmoe/parallel.h"
#include "hybridmoe/pipeline.h"
#include "hybridmoe/placement.h"
#include "hybridmoe/recompute.h"
#include "hybridmoe/train_config_keys.h"  // HMOE_TRAIN_CONFIG_KEYS: every key of TrainConfig

namespace hybridmoe {

class ZeroAdamW;

/// The floating-point type of a run's parameters and activations. Text: "float32", "float64".
///
/// Example:
///   parse_dtype("float64");            // DType::kFloat64
///   scalar_type(DType::kFloat64);      // torch::kFloat64
///   parse_dtype("half");               // error: dtype: expected one of "float32", "float64",
///                                      // got "half"
enum class DType { kFloat32, kFloat64 };
std::string to_string(DType dtype);
DType parse_dtype(const std::string& text);
torch::ScalarType scalar_type(DType dtype);

/// Key `layout`: kManual (tp, dp, pp, ep, etp as given) or kAuto (`hmoe train` sets them to the
/// first runnable choice of the planner, plan.h). Text: "manual", "auto".
///
/// Example:
///   parse_layout_mode("auto");         // LayoutMode::kAuto
///   to_string(LayoutMode::kManual);    // "manual"
enum class LayoutMode { kManual, kAuto };
std::string to_string(LayoutMode mode);
LayoutMode parse_layout_mode(const std::string& text);

/// Everything a training run is made of: one field per configuration key of
/// HMOE_TRAIN_CONFIG_KEYS (its help there), with its default.
///
/// Example:
///   TrainConfig c;                              // the defaults: 4 ranks, pp 2, dp 2, ep 2
///   c.expert_layout = ExpertLayout::kAdaptive;
///   c.ep = 1;
///   c.adaptive_r = AdaptiveR::automatic();
///   validate_config(c);
struct TrainConfig {
#define HMOE_TRAIN_CONFIG_FIELD(type, member, key, init, group, help) type member = init;
  HMOE_TRAIN_CONFIG_KEYS(HMOE_TRAIN_CONFIG_FIELD)
#undef HMOE_TRAIN_CONFIG_FIELD

  ParallelConfig layout() const;
  GPTOptions model_options() const;
  /// Where the MoE layers' experts live on one stage: expert_placement(expert_layout, tp * dp,
  /// num_experts, ep, etp). Needs tp, dp, num_experts, ep, etp >= 1.
  ExpertPlacement placement() const;
};

/// The value type of a configuration key as TOML and the flags see it. kIntList: an array of
/// integers in TOML, "1,3" or "[1, 3]" on the command line.
enum class ConfigKind { kInt, kFloat, kBool, kString, kIntList };
/// "int", "float", "bool", "string" or "int list".
std::string to_string(ConfigKind kind);

/// One configuration key: its name, kind, group and help.
struct ConfigKey {
  std::string name;
  ConfigKind kind = ConfigKind::kString;
  std::string group, help;
};
/// Every key, in the order --print-config shows them.
const std::vector<ConfigKey>& train_config_keys();

/// Sets one key from its text form; raises an error naming the key when it is unknown or the
/// value does not parse. Setting `model` sets that field only (no preset): a configuration read
/// back key by key (a checkpoint's) keeps its keys. Presets are apply_model_preset's and
/// apply_config_values's.
void set_config_value(TrainConfig& config, const std::string& key, const std::string& value);
/// The text form of one key's value.
std::string get_config_value(const TrainConfig& config, const std::string& key);

/// Sets `model` to `family` and every key of the [model] and [moe] tables to the family's
/// preset: model_preset(family) for the MoE families, TrainConfig's defaults for kGPT. Other
/// keys (layout, optimizer, ...) are left as they are.
///
/// Example:
///   TrainConfig c;
///   apply_model_preset(c, ModelFamily::kMixtral);  // c.model_options(): model_preset(kMixtral)
void apply_model_preset(TrainConfig& config, ModelFamily family);

/// Sets `model`, every key of the [model] and [moe] tables and `hf_dtype` to what the Hugging Face
/// model directory `dir`'s config.json describes (hf::read_config; refusals name its keys), like a
/// family preset: the model hmoe builds is the one the checkpoint's weights fit.
///
/// Example:
///   TrainConfig c;
///   apply_hf_model(c, "tiny-olmoe");  // c.model == kOLMoE, sizes from its config.json
void apply_hf_model(TrainConfig& config, const std::string& dir);

/// Keys as given (a TOML file's, the flags'), each with its text form, in the order given.
using ConfigValues = std::vector<std::pair<std::string, std::string>>;

/// Applies keys given explicitly over `config`: first the family of the last `model` among them
/// when it differs from config.model (apply_model_preset) — or, with `init_from_hf` among them,
/// that directory's model (apply_hf_model; a `model` naming another family is refused) —
/// then every key in order (a later one
/// wins). So explicit keys override the preset whatever their order: {n_layers 6, model mixtral}
/// and {model mixtral, n_layers 6} agree; over a configuration already of that family (a resumed
/// checkpoint's) `model` changes nothing. Unknown keys and bad values raise an error naming the
/// key.
void apply_config_values(TrainConfig& config, const ConfigValues& given);

/// A TOML document's keys as text, checked but not applied: top-level keys, or keys inside the
/// table of their group ([model], [moe], [optim], [data], [init], [layout], [memory], [output]).
/// Unknown keys, keys in another group's table, wrong types and values that do not parse raise an
/// error naming the key and `origin`.
ConfigValues read_toml_text(const std::string& text, const std::string& origin);
/// The keys of a TOML file (same rules); directories and unreadable files raise an error naming
/// the file.
ConfigValues read_toml_file(const std::string& path);
/// Applies a TOML file's keys over `config`: apply_config_values(config, read_toml_file(path)).
void apply_toml_file(TrainConfig& config, const std::string& path);
/// Applies a TOML document given as text (same rules). `origin` names it in errors.
void apply_toml_text(TrainConfig& config, const std::string& text, const std::string& origin);

/// "" if the configuration can run, else every reason why not, one per line, naming the key(s):
/// sizes, non-finite numbers, degrees that do not
/// divide (world = tp * dp * pp = nproc, ep | num_experts, tp | n_heads, etp | hidden, ...),
/// batch_size not divisible by dp * micro_batches, pp > n_layers, an adaptive r outside the
/// placement's valid r; the architecture as GPTOptions::check(tp) refuses it (heads and kv
/// heads, tp and kv heads, head and latent sizes, mlp_only_layers) and the gate as it refuses to
/// be built (n_group | num_experts, topk_group <= n_group, top_k within the kept groups, the
/// family routing options on a gate other than topk, a convention the gate cannot follow).
std::string check_config(const TrainConfig& config);
/// Raises the error of check_config, if any.
void validate_config(const TrainConfig& config);
/// The configuration as a TOML document (every key, with its group as a comment).
std::string config_to_toml(const TrainConfig& config);

/// What a run ends with (on rank 0; other ranks get the losses too).
struct TrainResult {
  std::vector<double> losses;  ///< global mean task loss of each step run or resumed from metrics
  int64_t first_step = 1;      ///< the step of losses[0] in this process (after a resume: + 1)
  int64_t steps = 0;           ///< the last step done
  double initial_loss = 0.0, final_loss = 0.0;
  double tokens_per_s = 0.0;
  /// The model's parameters, each counted once however many ranks hold a copy.
  int64_t parameters = 0;
  int64_t skipped_steps = 0;  ///< steps skipped for a non-finite loss or gradient norm
  std::map<std::string, double> task_accuracy;
  double wall_s = 0.0;
};

/// Runs training on this process's rank of `world` (world.size() must equal the layout's world
/// size). Collective over the world. Writes metrics, checkpoints, summary and report under
/// config.out (rank 0 writes the shared files).
/// - A fresh run refuses an `out` that holds a run unless config.overwrite (moved aside); a
///   resume continues from find_resume_checkpoint(out) (the newest complete checkpoint).
/// - A step whose global loss or gradient norm is NaN or infinite is skipped (no update; a
///   metrics line with `"loss": null, "skipped": true`); max_nonfinite_steps of them in a row
///   raise an error naming the step and the values. No non-finite value is ever written to
///   metrics.jsonl, summary.json or a checkpoint.
/// `on_step` (optional) is called on every rank after every step with (step, loss); the loss is
/// NaN or infinite on a skipped step, and TrainResult::losses has no entry for it.
TrainResult train(const TrainConfig& config, dist::World& world,
                  const std::function<void(int64_t, double)>& on_step = nullptr);

// ---- pieces of the loop, public for tests ------------------------------------------------------

/// The learning rate of step s (0-based): linear warmup to lr over warmup_steps, then cosine
/// decay to min_lr at the last step.
double learning_rate(const TrainConfig& config, int64_t step);

/// How many ranks of the world hold an identical copy of each parameter's (reduced) gradient:
/// replicated dense parameters tp * dp, tensor-parallel shards dp, gates tp * dp (the stage),
/// experts edp. Keys: the module's parameter names.
std::map<std::string, int64_t> gradient_replicas(GPTImpl& model, const ParallelGroups& groups,
                                                 const GroupedDataParallel& gdp);
/// The global L2 norm of the gradients (after reduce_gradients): every rank adds |g|^2 / replicas
/// of its parameters and the sums are all-reduced over the world. With max_norm > 0 scales every
/// gradient by min(1, max_norm / norm). Returns the norm before clipping. Collective.
double clip_global_grad_norm(GPTImpl& model, const std::map<std::string, int64_t>& replicas,
                             double max_norm, const dist::Group& world);

/// Greedy (temperature 0) or sampled continuation of `prompt` by a model whose ranks all call
/// this together with the same arguments; stops at a newline (not included) or after max_new
/// bytes. Collective over the model's groups.
std::string generate_text(GPTImpl& model, const std::string& prompt, int64_t max_new,
                          double temperature = 0.0, uint64_t seed = 0, bool stop_at_newline = true);

/// Exact-match accuracy per task of held-out samples under greedy decoding. Collective.
std::map<std::string, double> task_accuracy(GPTImpl& model, const std::vector<TaskSample>& samples);

// ---- checkpoints --------------------------------------------------------------------------------

/// The checkpoint of step `step` under out/checkpoints.
std::string checkpoint_dir(const std::string& out, int64_t step);
/// The checkpoint out/checkpoints/latest names ("" if none); not verified.
std::string latest_checkpoint(const std::string& out);

/// The step directories under out/checkpoints (step_NNNNNN), oldest first.
std::vector<std::string> list_checkpoints(const std::string& out);

/// The checkpoint whose recorded configuration `hmoe train --resume` continues with: the one
/// `latest` names if its checkpoint.meta parses, else the newest step directory whose meta
/// parses ("" if none). Reads only metadata; rank 0 of the run verifies every checksum before
/// loading (find_resume_checkpoint).
std::string resume_config_checkpoint(const std::string& out);

/// "" when checkpoint `dir` is complete and intact (checkpoint.meta parses; every shard, model.pt
/// and optimizer.pt exists with its recorded checksum and size), else what is wrong, naming the
/// file. Reads every file; changes nothing.
std::string verify_checkpoint(const std::string& dir);

/// Where `--resume` continues: the checkpoint `latest` names when it verifies; otherwise the
/// newest step directory that does, with `note` saying why `latest` was passed over ("" dir: none
/// verifies, and `note` says why).
struct ResumePoint {
  std::string dir;
  std::string note;  ///< empty when `latest` was used as it is
};
ResumePoint find_resume_checkpoint(const std::string& out);

/// Removes interrupted temporaries (.tmp_step_*) and all but the newest `keep` step directories
/// (never the one `latest` names); keep <= 0 keeps every checkpoint. Returns what was removed.
std::vector<std::string> prune_checkpoints(const std::string& out, int64_t keep);

/// Writes this rank's shard (model and optimizer state) and, on rank 0, checkpoint.meta (layout,
/// step, config, checksums), model.pt (the full model gathered from the shards) and optimizer.pt
/// (the optimizer state of every full-model parameter) into a
/// temporary directory renamed to checkpoint_dir(out, step) once complete. Collective.
/// Every file is written durably (fsynced, size checked; checkpoint_files.h) and `latest` is
/// rewritten last. Any failure on any rank (a full disk, an I/O error, a serializer error, a
/// non-finite parameter) raises the same error on every rank, naming the step and the failing
/// rank's path and cause; the temporary directory is removed and `latest` still names the
/// previous checkpoint. After success, prune_checkpoints(out, checkpoint_keep).
void save_checkpoint(const TrainConfig& config, int64_t step, GPTImpl& model, ZeroAdamW& optimizer,
                     const ParallelGroups& groups);

/// Loads this rank's shard from `dir` after checking the model keys and that every file it reads
/// exists with the recorded checksum; raises a clear error (naming the checkpoint, the rank and
/// the cause) otherwise, before anything is modified. A checkpoint of another layout (tp, dp, pp,
/// ep, etp, zero_stage or expert_layout) is converted: the consolidated model.pt and optimizer.pt
/// are sharded for this rank (experts redistributed, tp shards re-split, optimizer state
/// resharded). Returns the checkpoint's step. Collective over the world.
int64_t load_checkpoint(const std::string& dir, const TrainConfig& config, GPTImpl& model,
                        ZeroAdamW& optimizer, const ParallelGroups& groups);

/// Loads checkpoint `dir` into the layout of `target` (tp, dp, pp, ep, etp, zero_stage,
/// expert_layout; its model keys must match the checkpoint's), then writes it as a checkpoint of
/// that layout under target.out. Collective over `world`, which has target's world size.
///
/// Example (on 4 ranks):
///   TrainConfig to = read_checkpoint_config(dir);
///   to.dp = 4; to.ep = 4; to.tp = to.pp = 1; to.nproc = 4; to.out = "converted";
///   convert_checkpoint(dir, to, *world);
void convert_checkpoint(const std::string& dir, const TrainConfig& target, dist::World& world);

/// Builds `target`'s layout from the Hugging Face model directory target.init_from_hf (each rank
/// reading only its slices; every source tensor consumed, see hf::load) and writes it as the
/// checkpoint of step 0 under target.out, optimizer moments zero: `hmoe train --resume` continues
/// from it, `hmoe checkpoint convert` moves it to another layout. Returns this rank's coverage.
/// Collective over `world`, which has target's world size.
hf::Coverage import_hf_checkpoint(const TrainConfig& target, dist::World& world);

/// The training configuration recorded in a checkpoint's checkpoint.meta.
TrainConfig read_checkpoint_config(const std::string& dir);
/// The full single-process model of a checkpoint (its model.pt).
GPT load_full_model(const std::string& dir);

}  // namespace hybridmoe
