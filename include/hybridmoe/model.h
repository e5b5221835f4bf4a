// model.h — a decoder with Mixture-of-Experts layers: byte tokens, a token embedding (plus learned
// positions, or RoPE in the attention), pre-norm blocks (LayerNorm or RMSNorm; multi-head,
// grouped-query or latent attention; a dense MLP or an MoE layer), a final norm and an output head
// tied to the token embedding or its own. GPTOptions (model_options.h) makes it the byte-level
// GPT of the examples or one of the open MoE families. Dense parts are tensor parallel over the
// tp group (Megatron style) when built with ParallelGroups; MoE layers use the layout's groups.
// moefy() turns the dense MLPs of a model into MoE layers (FastMoE's fmoefy), optionally
// initializing every expert from the MLP it replaces (sparse upcycling).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/attention.h"
#include "hybridmoe/model_options.h"
#include "hybridmoe/moe.h"
#include "hybridmoe/parallel.h"
#include "hybridmoe/pipeline.h"
#include "hybridmoe/recompute.h"
#include "hybridmoe/tensor_parallel.h"

namespace hybridmoe {

/// The dense MLP: fc2(gelu(fc1 x)), or with SwiGLU fc2(silu(fc1 x) * fc3 x) (fc1 the gate
/// projection, fc3 the up projection, fc2 the down projection); fc1 and fc3 column-parallel, fc2
/// row-parallel.
class MLPImpl : public torch::nn::Module {
 public:
  MLPImpl(const GPTOptions& options, std::shared_ptr<const ParallelGroups> groups);
  /// x: [..., d_model] → [..., d_model].
  torch::Tensor forward(const torch::Tensor& x);
  void load_shard_from(MLPImpl& full);
  /// Fills `full` with the whole MLP gathered over tp (collective over tp).
  void gather_full(MLPImpl& full);

  ColumnParallelLinear fc1{nullptr}, fc3{nullptr};  ///< fc3 only with SwiGLU
  RowParallelLinear fc2{nullptr};
  Activation activation = Activation::kGelu;
};
TORCH_MODULE(MLP);

/// What one block's feed-forward part returns.
struct BlockOutput {
  torch::Tensor x;         // [B, S, d_model]
  torch::Tensor aux_loss;  // [] (zero for a dense block)
  c10::optional<RoutingStats> stats;
};

/// A pre-norm transformer block: x + attn(ln1(x)), then + mlp(ln2(x)) or + moe(ln2(x)); attn is
/// the multi-head / grouped-query attention or the latent one, as the options say.
class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const GPTOptions& options, bool use_moe, std::shared_ptr<const ParallelGroups> groups);
  /// x: [B, S, d_model]. group_sizes: non-empty only in a single-process reference of a
  /// distributed run (MoEImpl::forward_grouped). In grad mode with recompute set, the block (or
  /// its MoE layer) runs under checkpoint() and is recomputed in backward.
  BlockOutput forward(const torch::Tensor& x, const std::vector<int64_t>& group_sizes = {});
  /// Replaces the MLP by `moe` (already built with this block's groups).
  void set_moe(MoE moe);
  /// What forward() recomputes in backward, and whether the recomputation replays the
  /// collectives of the first run (see recompute.h).
  void set_recompute(Recompute mode, bool cache_comm = true);
  Recompute recompute() const { return recompute_; }

  /// Copies this rank's shard of every parameter from the same block of a single-process model.
  void load_shard_from(BlockImpl& full);

  Norm ln1{nullptr}, ln2{nullptr};
  CausalSelfAttention attn{nullptr};      ///< null with latent attention
  MultiHeadLatentAttention mla{nullptr};  ///< null with multi-head attention
  MLP mlp{nullptr};                       ///< null in an MoE block
  MoE moe{nullptr};                       ///< null in a dense block

 private:
  /// The block's computation; checkpoint_moe runs the MoE layer under checkpoint().
  BlockOutput run(const torch::Tensor& x, const std::vector<int64_t>& group_sizes,
                  const MoECallOptions& call, bool checkpoint_moe);

  Recompute recompute_ = Recompute::kNone;
  bool cache_comm_ = true;
};
TORCH_MODULE(Block);

/// What the model returns.
struct GPTOutput {
  torch::Tensor logits;    // [B, S, vocab_size]
  torch::Tensor aux_loss;  // [] sum of the MoE layers' auxiliary losses (this rank's share)
  std::vector<RoutingStats> moe_stats;  ///< one per MoE layer, in block order
};

/// What one pipeline stage of the model returns.
struct StageOutput {
  torch::Tensor output;    // [B, S, d_model] hidden states, or [B, S, vocab] logits (last stage)
  torch::Tensor aux_loss;  // [] sum of this stage's MoE auxiliary losses (this rank's share)
  std::vector<RoutingStats> moe_stats;  ///< one per MoE layer of this stage, in block order
};

/// The GPT decoder. Construct without groups for one process, or with ParallelGroups for a
/// layout (tp > 1 shards the dense layers; MoE layers use ep/etp/slice). A distributed model
/// starts from a single-process one of the same options with load_shard_from().
///
/// With pp > 1 each rank holds the blocks of its stage only (stage_block_range): the first stage
/// also holds the token (and learned position) embeddings, the last one the final norm and the
/// head: its own lm_head, or with tied embeddings a copy of the token embedding
/// (reduce_tied_gradients() keeps the two copies equal).
/// Training runs the stages with run_pipeline() over forward_stage(); forward() of a pipelined
/// model is for inference (no gradient) and returns the logits on every rank.
///
/// Example:
///   torch::manual_seed(0);
///   GPT full(opts);                        // same seed on every rank
///   GPT model(opts, groups);
///   model->load_shard_from(*full);
///   GPTOutput out = model(tokens);         // tokens: [B, S] int64
///   auto loss = lm_loss(out.logits, targets) + out.aux_loss;
class GPTImpl : public torch::nn::Module {
 public:
  explicit GPTImpl(GPTOptions options, std::shared_ptr<const ParallelGroups> groups = nullptr);
  /// tokens: [B, S] int64 with S <= context. group_sizes: token groups (of the B * S flattened
  /// tokens) routed separately by every MoE layer; only for a single-process reference of a
  /// distributed layout (see moe_group_sizes()).
  GPTOutput forward(const torch::Tensor& tokens, const std::vector<int64_t>& group_sizes = {});

  /// Runs this rank's stage. input: tokens [B, S] int64 on the first stage, else the previous
  /// stage's hidden states [B, S, d_model]. The last stage returns logits.
  StageOutput forward_stage(const torch::Tensor& input,
                            const std::vector<int64_t>& group_sizes = {});

  /// Sets the recompute mode of every block (and options.recompute / recompute_cache_comm).
  void set_recompute(Recompute mode, bool cache_comm = true);

  /// Sums the gradient of the tied token embedding over its two copies (first and last stage) so
  /// both take the same step. A no-op without pipeline stages or tied head. Collective over pp.
  void reduce_tied_gradients();

  /// After each optimizer step: the gates' per-step updates (the loss-free balancing bias of a
  /// topk gate with bias_update_rate > 0), from the expert loads of the whole stage — the loads
  /// each rank counted are summed over the stage group first (one collective), so every replica
  /// of a gate takes the step one process would. Collective over the stage when distributed.
  void after_step();

  /// Copies this rank's shard of every parameter from a single-process model with the same
  /// options (and the same moefy applied).
  void load_shard_from(GPTImpl& full);
  /// The inverse: fills `full` (a single-process model of the same options) with the whole
  /// model, gathered from every rank's shard. Collective over the world; valid on every rank.
  void gather_full(GPTImpl& full);
  /// The MoE layers of this stage, in block order.
  std::vector<MoE> moe_layers() const;
  /// The model-wide index of this stage's first MoE layer, and the number of MoE layers of the
  /// whole model.
  int64_t first_moe_layer() const;
  int64_t num_moe_layers() const;

  int64_t stage() const { return stage_; }
  int64_t num_stages() const { return stages_; }
  bool is_first_stage() const { return stage_ == 0; }
  bool is_last_stage() const { return stage_ == stages_ - 1; }
  /// The model-wide indices of this stage's blocks: block_list[j] is block range.first + j.
  StageRange block_range() const { return range_; }
  const ParallelGroups* groups() const { return groups_.get(); }
  std::shared_ptr<const ParallelGroups> groups_ptr() const { return groups_; }

  GPTOptions options;
  torch::nn::Embedding tok_emb{nullptr};  ///< first stage, and last stage with a tied head
  torch::nn::Embedding pos_emb{nullptr};  ///< first stage, learned positions only
  torch::nn::ModuleList blocks{nullptr};
  std::vector<Block> block_list;
  Norm ln_f{nullptr};                  ///< last stage
  torch::nn::Linear lm_head{nullptr};  ///< last stage, untied head only ([vocab, d_model], no bias)

 private:
  GPTOutput forward_pipelined(const torch::Tensor& tokens, const std::vector<int64_t>& group_sizes);

  std::shared_ptr<const ParallelGroups> groups_;
  int64_t stage_ = 0, stages_ = 1;
  StageRange range_;
};
TORCH_MODULE(GPT);

/// The mean next-token cross-entropy. logits: [B, S, V]; targets: [B, S] int64.
torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& targets);

/// The group sizes a single-process reference passes to GPTImpl::forward so that its MoE layers
/// route like a layout: one group per (dp rank, tp slice), dp ranks each holding tokens_per_rank
/// flattened tokens split evenly over tp.
std::vector<int64_t> moe_group_sizes(const ParallelConfig& layout, int64_t tokens_per_rank);

/// Turns the MLP of every block i with (i + 1) % every == 0 into an MoE layer built from
/// `options` (d_model forced to the model's), keeping every other weight. With upcycle, every
/// expert starts as a copy of the MLP it replaces (d_hidden set to the MLP's width; activation
/// gelu with biases), so with normalize_top_k_weights (or top-1 over one expert) the model's
/// output is unchanged. Collective over tp when the model is distributed and upcycle is set.
/// Updates model.options (moe_every, num_experts, expert_hidden, gate).
///
/// Example:
///   moefy(*dense, MoEOptions(64, 8).top_k(2).normalize_top_k_weights(true), /*upcycle=*/true);
void moefy(GPTImpl& model, MoEOptions options, bool upcycle = false, int64_t every = 1);

}  // namespace hybridmoe
