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

// clang-format off
/// Every configuration key of `hmoe train`, in the order --print-config shows them: the one list
/// from which TrainConfig's fields, the key table (train_config_keys()), set_config_value /
/// get_config_value, config_to_toml and the flags with their help are all made, so a key cannot
/// be added in one place and forgotten in another. X(type, member, key, default, group, help):
/// the TOML key / flag (--name with '_' written '-') is `key`, the field TrainConfig::member.
/// Typed keys (ModelFamily, NormType, PositionType, RopeScaling, AttentionType, QKNorm,
/// Activation, ScoreFunction, ExpertLayout, AdaptiveR, DType, PipelineSchedule, Recompute,
/// LayoutMode, TokenDType) are strings in TOML and on the command line, read and printed by their
/// own parse / to_string.
/// `mlp_only_layers` (std::vector<int64_t>, ConfigKind::kIntList) is an array of integers in TOML
/// and "1,3" (or "[1, 3]") on the command line; it prints as "[1, 3]".
///
/// The family preset: key `model` names a ModelFamily; choosing one sets every key of the
/// [model] and [moe] tables to that family's model_preset() (gpt: the defaults below, the
/// example GPT), and keys given explicitly — in the TOML file or as flags — override the preset
/// whatever their order (apply_config_values applies `model` first). The defaults keep the
/// example GPT: LayerNorm, learned positions, GELU, biases, tied head, softmax top-2 routing.
#define HMOE_TRAIN_CONFIG_KEYS(X)                                                                  \
  /* ---- model ---- */                                                                            \
  /* the family whose preset the [model] and [moe] keys start from (apply_config_values) */        \
  X(ModelFamily, model, "model", ModelFamily::kGPT, "model",                                       \
    "model family (gpt, mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v3): sets every [model] "   \
    "and [moe] key to the family's tiny preset; keys given explicitly win, in any order")          \
  X(int64_t, d_model, "d_model", 64, "model", "model width")                                       \
  X(int64_t, n_layers, "n_layers", 4, "model", "transformer blocks")                               \
  X(int64_t, n_heads, "n_heads", 4, "model", "attention heads")                                    \
  X(int64_t, d_mlp, "d_mlp", 0, "model", "dense MLP width (0: 4 * d_model)")                       \
  X(int64_t, context, "context", 64, "model", "longest sequence")                                  \
  /* byte data (data, the synthetic corpus) need 256; token data (data_tokens) their tokenizer's */\
  X(int64_t, vocab_size, "vocab_size", 256, "model",                                               \
    "token vocabulary (256: bytes; data_tokens: every id must be below it)")                       \
  X(int64_t, moe_every, "moe_every", 2, "model", "an MoE layer every N blocks (0: dense)")         \
  X(NormType, norm, "norm", NormType::kLayerNorm, "model",                                         \
    "norm of the blocks and the final norm: layernorm or rmsnorm")                                 \
  X(double, norm_eps, "norm_eps", 1e-5, "model", "eps of the norms (blocks, final, q/k)")          \
  X(PositionType, position, "position", PositionType::kLearned, "model",                           \
    "positions: learned (embedding) or rope (rotary)")                                             \
  X(double, rope_theta, "rope_theta", 10000.0, "model", "RoPE base")                               \
  X(int64_t, rotary_dim, "rotary_dim", 0, "model",                                                 \
    "leading head dimensions RoPE rotates (0: all; mla: qk_rope_head_dim)")                        \
  X(bool, rope_interleaved, "rope_interleaved", false, "model",                                    \
    "RoPE on adjacent pairs (DeepSeek) instead of the two halves")                                 \
  /* Hugging Face's rope_scaling: type, factor, original_max_position_embeddings, beta_fast, */    \
  /* beta_slow, attention_factor, mscale, mscale_all_dim, truncate (model_options.h) */            \
  X(RopeScaling, rope_scaling, "rope_scaling", RopeScaling::kNone, "model",                        \
    "RoPE scaling: none, linear (frequencies / rope_factor) or yarn")                              \
  X(double, rope_factor, "rope_factor", 1.0, "model",                                              \
    "RoPE scaling factor (>= 1 with linear or yarn; 1 with none)")                                 \
  X(int64_t, rope_original_max_positions, "rope_original_max_positions", 0, "model",               \
    "yarn: the pretrained context (original_max_position_embeddings; > 0 with yarn)")              \
  X(double, yarn_beta_fast, "yarn_beta_fast", 32.0, "model",                                       \
    "yarn: rotations above which a dimension keeps its frequency")                                 \
  X(double, yarn_beta_slow, "yarn_beta_slow", 1.0, "model",                                        \
    "yarn: rotations below which a dimension is interpolated")                                     \
  X(double, yarn_attention_factor, "yarn_attention_factor", 0.0, "model",                          \
    "yarn: factor on cos and sin (0: from yarn_mscale and yarn_mscale_all_dim)")                   \
  X(double, yarn_mscale, "yarn_mscale", 1.0, "model", "yarn: mscale of the attention factor")      \
  X(double, yarn_mscale_all_dim, "yarn_mscale_all_dim", 0.0, "model",                              \
    "yarn: mscale_all_dim (non-zero: mla softmax scale times mscale^2, as DeepSeek-V3)")           \
  X(bool, yarn_truncate, "yarn_truncate", true, "model",                                           \
    "yarn: round the correction range out to whole dimensions")                                    \
  X(AttentionType, attention, "attention", AttentionType::kMultiHead, "model",                     \
    "attention: mha (grouped-query with n_kv_heads) or mla (DeepSeek latent)")                     \
  X(int64_t, n_kv_heads, "n_kv_heads", 0, "model", "key/value heads (0: n_heads)")                 \
  X(int64_t, head_dim, "head_dim", 0, "model", "width of one head (0: d_model / n_heads)")         \
  X(bool, qkv_bias, "qkv_bias", true, "model", "biases of the q, k, v projections")                \
  X(bool, attn_out_bias, "attn_out_bias", true, "model", "bias of the attention output")           \
  X(QKNorm, qk_norm, "qk_norm", QKNorm::kNone, "model",                                            \
    "RMSNorm of q and k: none, head (per head) or whole (whole projection)")                       \
  X(double, clip_qkv, "clip_qkv", 0.0, "model", "clamp q, k, v to [-c, c] (0: off)")               \
  X(int64_t, q_lora_rank, "q_lora_rank", 0, "model", "mla: query bottleneck rank (0: direct)")     \
  X(int64_t, kv_lora_rank, "kv_lora_rank", 0, "model", "mla: key/value latent rank")               \
  X(int64_t, qk_nope_head_dim, "qk_nope_head_dim", 0, "model",                                     \
    "mla: unrotated query/key dimensions per head")                                                \
  X(int64_t, qk_rope_head_dim, "qk_rope_head_dim", 0, "model",                                     \
    "mla: rotated query/key dimensions per head")                                                  \
  X(int64_t, v_head_dim, "v_head_dim", 0, "model", "mla: value width per head")                    \
  X(double, latent_norm_eps, "latent_norm_eps", 1e-6, "model", "mla: eps of the latents' norms")   \
  X(Activation, mlp_activation, "mlp_activation", Activation::kGelu, "model",                      \
    "dense MLP: gelu or swiglu")                                                                   \
  X(bool, mlp_bias, "mlp_bias", true, "model", "biases of the dense MLPs")                         \
  X(int64_t, first_k_dense, "first_k_dense", 0, "model", "the first N blocks stay dense")          \
  /* a list: "1,3" (or "[1, 3]") on the command line, an array of integers in TOML */              \
  X(std::vector<int64_t>, mlp_only_layers, "mlp_only_layers", {}, "model",                         \
    "blocks (0-based) that keep a dense MLP, e.g. 1,3")                                            \
  X(bool, tie_embeddings, "tie_embeddings", true, "model",                                         \
    "output head shares the token embedding (false: own lm_head)")                                 \
  /* ---- moe ---- */                                                                              \
  X(int64_t, num_experts, "num_experts", 4, "moe", "experts per MoE layer")                        \
  X(int64_t, expert_hidden, "expert_hidden", 0, "moe", "expert hidden width (0: the MLP's)")       \
  X(Activation, expert_activation, "expert_activation", Activation::kGelu, "moe",                  \
    "experts: gelu, relu or swiglu")                                                               \
  X(bool, expert_bias, "expert_bias", true, "moe", "biases of the experts")                        \
  X(int64_t, shared_expert_hidden, "shared_expert_hidden", 0, "moe",                               \
    "width of a shared expert every token passes through (0: none)")                               \
  X(bool, shared_expert_gate, "shared_expert_gate", false, "moe",                                  \
    "shared expert scaled by sigmoid(x . g) (Qwen2-MoE)")                                          \
  X(int64_t, top_k, "top_k", 2, "moe", "experts per token")                                        \
  X(std::string, gate, "gate", "topk", "moe",                                                      \
    "gate type (topk, gshard, switch, noisy, sinkhorn, expert_choice)")                            \
  /* a peer's routing convention for the gates (routing_rules.h) */                                \
  X(std::string, convention, "convention", "none", "moe",                                          \
    "routing convention of a peer: none, deepspeed, tutel, megatron, gshard")                      \
  X(double, capacity_factor, "capacity_factor", 0.0, "moe",                                        \
    "expert capacity factor (0: dropless; < 0: dynamic, the largest count bounded by |f|)")        \
  X(double, aux_loss_coef, "aux_loss_coef", 0.01, "moe", "balance loss coefficient")               \
  X(double, z_loss_coef, "z_loss_coef", 0.001, "moe", "router z-loss coefficient")                 \
  /* the model families' routing: options of the topk gate (gate.h), refused by the others */      \
  X(ScoreFunction, score_function, "score_function", ScoreFunction::kSoftmax, "moe",               \
    "router scores: softmax or sigmoid (topk gate)")                                               \
  X(bool, selection_bias, "selection_bias", false, "moe",                                          \
    "per-expert bias added to the scores for selection only (topk gate)")                          \
  X(int64_t, n_group, "n_group", 1, "moe",                                                         \
    "expert groups of group-limited selection (1: none; topk gate)")                               \
  X(int64_t, topk_group, "topk_group", 1, "moe", "groups kept with n_group > 1")                   \
  X(double, routed_scaling_factor, "routed_scaling_factor", 1.0, "moe",                            \
    "routed experts' weights multiplied by this (topk gate)")                                      \
  X(double, bias_update_rate, "bias_update_rate", 0.0, "moe",                                      \
    "loss-free balancing: selection bias update per step (0: off; topk gate)")                     \
  /* true sets the gate's weight_normalization rule; false leaves it to the gate and convention */ \
  X(bool, normalize_top_k_weights, "normalize_top_k_weights", false, "moe",                        \
    "renormalize the k weights before capacity (false: the gate's / convention's rule)")           \
  /* ---- optimization ---- */                                                                     \
  X(int64_t, steps, "steps", 1200, "optim", "optimizer steps")                                     \
  X(int64_t, batch_size, "batch_size", 32, "optim", "sequences per step over all dp ranks")        \
  X(int64_t, micro_batches, "micro_batches", 2, "optim",                                           \
    "gradient accumulation passes per step")                                                       \
  X(int64_t, seq_len, "seq_len", 64, "optim", "tokens per sequence")                               \
  X(double, lr, "lr", 3e-3, "optim", "peak learning rate")                                         \
  X(double, min_lr, "min_lr", 3e-4, "optim", "final learning rate of the cosine decay")            \
  X(int64_t, warmup_steps, "warmup_steps", 30, "optim", "linear warmup steps")                     \
  X(double, weight_decay, "weight_decay", 0.05, "optim", "AdamW weight decay (matrices only)")     \
  X(double, beta1, "beta1", 0.9, "optim", "AdamW beta1")                                           \
  X(double, beta2, "beta2", 0.98, "optim", "AdamW beta2")                                          \
  X(double, grad_clip, "grad_clip", 1.0, "optim", "global gradient-norm clip (<= 0: off)")         \
  X(int64_t, seed, "seed", 1234, "optim", "seed of weights and batches")                           \
  /* a step whose loss or global gradient norm is NaN or infinite is skipped (no update); this */  \
  /* many such steps in a row stop the run with an error naming the step and the value */          \
  X(int64_t, max_nonfinite_steps, "max_nonfinite_steps", 3, "optim",                               \
    "steps in a row with a NaN/Inf loss or gradient norm (each skipped) before the run stops")     \
  /* ---- data ---- */                                                                             \
  X(std::string, data, "data", "", "data",                                                         \
    "text file to train on (empty: embedded synthetic tasks)")                                     \
  /* nanoGPT's / Megatron's preprocessed .bin: token ids back to back, little-endian; */           \
  /* no held-out evaluation (the task accuracy needs the synthetic corpus) */                      \
  X(std::string, data_tokens, "data_tokens", "", "data",                                           \
    "flat file of token ids to train on instead of bytes (empty: off; excludes data; no eval)")    \
  X(TokenDType, token_dtype, "token_dtype", TokenDType::kUInt16, "data",                           \
    "width of the ids in data_tokens: uint16 or uint32 (little-endian)")                           \
  X(int64_t, train_lines, "train_lines", 40000, "data", "lines of the synthetic corpus")           \
  X(int64_t, eval_per_task, "eval_per_task", 40, "data", "held-out samples per synthetic task")    \
  /* ---- init ---- */                                                                             \
  /* a Hugging Face model directory: its config.json sets the [model] and [moe] keys like a */     \
  /* family preset (keys given explicitly win) and its weights replace the random init */          \
  X(std::string, init_from_hf, "init_from_hf", "", "init",                                         \
    "Hugging Face model directory to start from (config.json + safetensors; empty: random)")     \
  X(std::string, allow_unused, "allow_unused", "", "init",                                         \
    "regex of checkpoint tensors deliberately left unused (e.g. model\\.layers\\.61\\..*)")       \
  X(std::string, hf_dtype, "hf_dtype", "", "init",                                                 \
    "dtype of the Hugging Face weights started from (the export's default; empty: dtype)")         \
  /* ---- layout ---- */                                                                           \
  /* 4 ranks: two pipeline stages of dp = 2 with ep = 2 (on 2 cores this is about twice as */      \
  /* fast as tp = 2, whose all-reduces every block cost more than the pipeline bubble) */          \
  X(int64_t, nproc, "nproc", 4, "layout", "local ranks to launch")                                 \
  X(int64_t, tp, "tp", 1, "layout", "tensor parallel degree")                                      \
  X(int64_t, dp, "dp", 2, "layout", "data parallel degree")                                        \
  X(int64_t, pp, "pp", 2, "layout",                                                                \
    "pipeline stages (blocks split evenly, micro_batches flow through)")                           \
  X(int64_t, ep, "ep", 2, "layout", "expert parallel degree")                                      \
  X(int64_t, etp, "etp", 1, "layout", "expert tensor parallel degree (1 or tp)")                   \
  X(PipelineSchedule, pipeline_schedule, "pipeline_schedule", PipelineSchedule::kOneFOneB,         \
    "layout", "micro-batch schedule with pp > 1: 1f1b or gpipe")                                   \
  /* kAdaptive needs ep = etp = 1 (placement.h) */                                                 \
  X(ExpertLayout, expert_layout, "expert_layout", ExpertLayout::kFixed, "layout",                  \
    "MoE expert placement: fixed (ep/etp) or adaptive (Tutel)")                                    \
  /* a value in placement().valid_r, or auto (timed per period); the fixed layout keeps 1 */       \
  X(AdaptiveR, adaptive_r, "adaptive_r", AdaptiveR::value(1), "layout",                            \
    "adaptive layout degree r: an integer or auto (timed)")                                        \
  X(int64_t, adaptive_recheck_every, "adaptive_recheck_every", 100, "layout",                      \
    "adaptive_r = auto: re-time every N steps")                                                    \
  X(int64_t, a2a_overlap_degree, "a2a_overlap_degree", 1, "layout",                                \
    "chunks of the expert all-to-all overlapped (1: off)")                                         \
  /* replicate.h: needs ep > 1, etp = 1 and the fixed experts (any overlap degree) */            \
  X(std::string, replicate, "replicate", "off", "layout",                                          \
    "hot-expert replication: off, auto (FasterMoE's cost rule) or N (the N hottest)")              \
  /* ---- memory ---- */                                                                           \
  X(int64_t, zero_stage, "zero_stage", 0, "memory",                                                \
    "0: replicated optimizer; 1: ZeRO-1 sharded state")                                            \
  X(double, optimizer_tile_mb, "optimizer_tile_mb", 64, "memory",                                  \
    "optimizer step temporaries per tile (<= 0: untiled)")                                         \
  X(DType, dtype, "dtype", DType::kFloat32, "memory",                                              \
    "parameters and activations: float32 or float64")                                             \
  X(Recompute, recompute, "recompute", Recompute::kNone, "memory",                                 \
    "activations recomputed in backward: none, block or moe")                                      \
  /* TED's communication-aware checkpointing */                                                    \
  X(bool, recompute_cache_comm, "recompute_cache_comm", true, "memory",                            \
    "recompute replays the forward's all-to-alls instead of repeating them")                       \
  X(LayoutMode, layout_mode, "layout", LayoutMode::kManual, "layout",                              \
    "manual (tp/dp/pp/ep/etp as given) or auto (hmoe plan's choice)")                              \
  /* with layout = auto: plan::probe_machine (a few seconds) or plan::MachineSpec's defaults */    \
  X(bool, layout_probe, "layout_probe", true, "layout",                                            \
    "layout = auto: measure the machine on the ranks first (else default figures)")                \
  /* ---- output ---- */                                                                           \
  X(std::string, out, "out", "out", "output", "output directory")                                  \
  X(int64_t, log_every, "log_every", 10, "output", "metrics every N steps")                        \
  X(int64_t, stats_every, "stats_every", 50, "output", "expert load every N steps")                \
  X(int64_t, checkpoint_every, "checkpoint_every", 200, "output",                                  \
    "checkpoint every N steps (0: at the end only)")                                               \
  X(int64_t, stop_after, "stop_after", 0, "output",                                                \
    "stop after this step with a checkpoint (0: never)")                                           \
  X(int64_t, checkpoint_keep, "checkpoint_keep", 3, "output",                                      \
    "keep the newest N checkpoints (0: all)")                                                      \
  X(bool, resume, "resume", false, "output",                                                       \
    "continue from the newest complete checkpoint in out")                                         \
  /* without it (and without resume) an `out` that holds a run is refused */                       \
  X(bool, overwrite, "overwrite", false, "output",                                                 \
    "start afresh in an out holding a run (moved aside to out.old-N)")                             \
  X(bool, progress, "progress", true, "output", "rank 0 progress bar")                             \
  X(bool, eval, "eval", true, "output", "held-out task accuracy at the end")
// clang-format on

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
