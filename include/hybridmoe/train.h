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
#include "hybridmoe/model.h"
#include "hybridmoe/parallel.h"

namespace hybridmoe {

class ZeroAdamW;

/// Everything a training run is made of. Every field is a configuration key of the same name
/// (TOML key, or flag --name with '_' written '-'); see train_config_keys().
struct TrainConfig {
  // ---- model ----
  int64_t d_model = 64;
  int64_t n_layers = 4;
  int64_t n_heads = 4;
  int64_t d_mlp = 0;  ///< 0: 4 * d_model
  int64_t context = 64;
  int64_t moe_every = 2;  ///< an MoE layer every N blocks; 0: dense
  int64_t num_experts = 4;
  int64_t expert_hidden = 0;  ///< 0: the MLP's width
  int64_t top_k = 2;
  std::string gate = "topk";
  /// A peer's routing convention for the gates: none, deepspeed, tutel, megatron, gshard
  /// (routing_rules.h).
  std::string convention = "none";
  double capacity_factor = 0.0;  ///< <= 0: dropless
  double aux_loss_coef = 0.01;
  double z_loss_coef = 0.001;
  // ---- optimization ----
  int64_t steps = 1200;
  int64_t batch_size = 32;    ///< sequences per optimizer step, over all dp ranks
  int64_t micro_batches = 2;  ///< micro-batches per step (pipeline / gradient accumulation)
  int64_t seq_len = 64;
  double lr = 3e-3;
  double min_lr = 3e-4;
  int64_t warmup_steps = 30;
  double weight_decay = 0.05;
  double beta1 = 0.9;
  double beta2 = 0.98;
  double grad_clip = 1.0;  ///< <= 0: no clipping
  int64_t seed = 1234;
  /// A step whose loss or global gradient norm is NaN or infinite is skipped (no update); this
  /// many such steps in a row stop the run with an error naming the step and the value.
  int64_t max_nonfinite_steps = 3;
  // ---- data ----
  std::string data;             ///< a text file; empty: the embedded synthetic corpus
  int64_t train_lines = 40000;  ///< synthetic corpus size
  int64_t eval_per_task = 40;   ///< held-out samples per synthetic task
  // ---- layout ----
  int64_t nproc = 4;
  /// 4 ranks: two pipeline stages of dp = 2 with ep = 2 (on 2 cores this is about twice as fast
  /// as tp = 2, whose all-reduces every block costs more than the pipeline bubble).
  int64_t tp = 1, dp = 2, pp = 2, ep = 2, etp = 1;
  std::string pipeline_schedule = "1f1b";  ///< with pp > 1: "1f1b" or "gpipe"
  /// MoE expert placement: "fixed" (ep × etp × edp) or "adaptive" (Tutel's, needs ep = etp = 1).
  std::string expert_layout = "fixed";
  /// Adaptive layout's degree r: an integer in {0} ∪ divisors(S), or "auto" (timed per step).
  std::string adaptive_r = "1";
  int64_t adaptive_recheck_every = 100;  ///< "auto": re-time every valid r every N steps
  int64_t a2a_overlap_degree = 1;        ///< chunks of the expert all-to-all (1: no overlap)
  // ---- memory ----
  int64_t zero_stage = 0;         ///< 1: optimizer state sharded over dp / edp / stage (ZeRO-1)
  double optimizer_tile_mb = 64;  ///< the optimizer step's temporaries, in tiles of this size
  std::string dtype = "float32";  ///< parameters and activations: float32 or float64
  /// Activations recomputed in backward: "none", "block" or "moe" (recompute.h).
  std::string recompute = "none";
  /// With recompute: replay the forward's collectives instead of communicating again (TED's CAC).
  bool recompute_cache_comm = true;
  /// Key `layout`: "manual" (tp, dp, pp, ep, etp as given) or "auto" (`hmoe train` sets them to
  /// the first runnable choice of the planner, plan.h).
  std::string layout_mode = "manual";
  /// With layout = "auto": the ranks measure the machine first (plan::probe_machine, a few
  /// seconds) and plan with those figures; false: plan with the default figures.
  bool layout_probe = true;
  // ---- output ----
  std::string out = "out";
  int64_t log_every = 10;          ///< a progress line (non-TTY) and metrics every N steps
  int64_t stats_every = 50;        ///< per-expert load and dropped tokens every N steps
  int64_t checkpoint_every = 200;  ///< 0: only at the end
  int64_t stop_after = 0;          ///< stop (with a checkpoint) after this step; 0: run all steps
  int64_t checkpoint_keep = 3;     ///< keep the newest N checkpoints; 0: all
  bool resume = false;
  /// Start afresh in an `out` that holds a run: the old run is moved aside to out.old-N, not
  /// deleted. Without it (and without resume) such an `out` is refused.
  bool overwrite = false;
  bool progress = true;  ///< rank 0's progress bar
  bool eval = true;      ///< task accuracy at the end

  ParallelConfig layout() const;
  GPTOptions model_options() const;
};

/// One configuration key: its name, kind ("int", "float", "string", "bool"), group and help.
struct ConfigKey {
  std::string name, kind, group, help;
};
/// Every key, in the order --print-config shows them.
const std::vector<ConfigKey>& train_config_keys();

/// Sets one key from its text form; raises an error naming the key when it is unknown or the
/// value does not parse.
void set_config_value(TrainConfig& config, const std::string& key, const std::string& value);
/// The text form of one key's value.
std::string get_config_value(const TrainConfig& config, const std::string& key);

/// Applies a TOML file's keys over `config`: top-level keys, or keys inside the table of their
/// group ([model], [moe], [optim], [data], [layout], [memory], [output]). Unknown keys, keys in
/// another group's table, wrong types, directories and unreadable files raise an error naming
/// the key or the file.
void apply_toml_file(TrainConfig& config, const std::string& path);
/// Applies a TOML document given as text (same rules). `origin` names it in errors.
void apply_toml_text(TrainConfig& config, const std::string& text, const std::string& origin);

/// "" if the configuration can run, else every reason why not, one per line, naming the key(s):
/// sizes, non-finite numbers, degrees that do not
/// divide (world = tp * dp * pp = nproc, ep | num_experts, tp | n_heads, etp | hidden, ...),
/// batch_size not divisible by dp * micro_batches, pp > n_layers, an unknown pipeline schedule.
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

/// The training configuration recorded in a checkpoint's checkpoint.meta.
TrainConfig read_checkpoint_config(const std::string& dir);
/// The full single-process model of a checkpoint (its model.pt).
GPT load_full_model(const std::string& dir);

}  // namespace hybridmoe
