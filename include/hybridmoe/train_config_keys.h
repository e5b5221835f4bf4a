// train_config_keys.h — HMOE_TRAIN_CONFIG_KEYS, the one list of `hmoe train`'s configuration
// keys (train.h includes it; the types it names are declared there).
#pragma once

// clang-format off
/// Every configuration key of `hmoe train`, in the order --print-config shows them: the one list
/// from which TrainConfig's fields, the key table (train_config_keys()), set_config_value /
/// get_config_value, config_to_toml and the flags with their help are all made, so a key cannot
/// be added in one place and forgotten in another. X(type, member, key, default, group, help):
/// the TOML key / flag (--name with '_' written '-') is `key`, the field TrainConfig::member.
/// Typed keys (ModelFamily, NormType, PositionType, RopeScaling, AttentionType, QKNorm,
/// Activation, ScoreFunction, ExpertLayout, AdaptiveR, ReplicatePlacement, A2AAlgorithm, DType,
/// PipelineSchedule, Recompute, LayoutMode, TokenDType) are strings in TOML and on the command
/// line, read and printed by their own parse / to_string.
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
  /* 0: the intra-op threads (at most micro_batches) where allowed, else 1 (run_pipeline) */       \
  X(int64_t, micro_batch_threads, "micro_batch_threads", 0, "optim",                               \
    "micro-batches run side by side, each on one thread (0: auto; needs tp = ep = pp = 1 and a "   \
    "gate without random draws)")                                                                  \
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
  /* moe.h: hierarchical where the exchange group spans nodes (flat inside one node); */         \
  /* excludes a2a_overlap_degree > 1 and replicate */                                              \
  X(A2AAlgorithm, a2a_algorithm, "a2a_algorithm", A2AAlgorithm::kFlat, "layout",                   \
    "expert all-to-all between nodes: flat or hierarchical (Tutel's 2DH)")                         \
  /* replicate.h: needs ep > 1 and the fixed experts (any etp, any overlap degree) */           \
  X(std::string, replicate, "replicate", "off", "layout",                                          \
    "hot-expert replication: off, auto (FasterMoE's cost rule) or N (the N hottest)")              \
  X(ReplicatePlacement, replicate_placement, "replicate_placement", ReplicatePlacement::kSource,   \
    "layout", "replicated experts' rows: source (where routed) or spread (evenly over ep)")      \
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
