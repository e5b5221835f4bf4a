// gpt.cpp — see model.h: the attention, MLP, block and GPT modules, and sharding from a
// single-process model.
#include <cmath>

#include "hybridmoe/model.h"
#include "model/copy_parameters.h"

namespace hybridmoe {

namespace F = torch::nn::functional;

// ---- MLP --------------------------------------------------------------------------------------

MLPImpl::MLPImpl(const GPTOptions& o, std::shared_ptr<const ParallelGroups> groups)
    : activation(o.mlp_activation()) {
  TORCH_CHECK(activation == Activation::kGelu || activation == Activation::kSwiGLU,
              "MLP: mlp_activation must be gelu or swiglu, got ", to_string(activation));
  const double proj_std = 0.02 / std::sqrt(2.0 * static_cast<double>(o.n_layers()));
  const auto in = TensorParallelLinearOptions(o.d_model(), o.mlp_hidden()).bias(o.mlp_bias());
  fc1 = register_module("fc1", ColumnParallelLinear(in, groups));
  if (activation == Activation::kSwiGLU)
    fc3 = register_module("fc3", ColumnParallelLinear(in, groups));
  fc2 = register_module("fc2",
                        RowParallelLinear(TensorParallelLinearOptions(o.mlp_hidden(), o.d_model())
                                              .bias(o.mlp_bias())
                                              .init_std(proj_std),
                                          groups));
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x) {
  if (fc3) return fc2(torch::silu(fc1(x)) * fc3(x));
  return fc2(torch::gelu(fc1(x)));
}

void MLPImpl::load_shard_from(MLPImpl& full) {
  fc1->load_shard_from(full.fc1->weight, full.fc1->bias);
  fc2->load_shard_from(full.fc2->weight, full.fc2->bias);
  if (fc3) fc3->load_shard_from(full.fc3->weight, full.fc3->bias);
}

void MLPImpl::gather_full(MLPImpl& full) {
  fc1->gather_into(*full.fc1);
  fc2->gather_into(*full.fc2);
  if (fc3) fc3->gather_into(*full.fc3);
}

// ---- block ------------------------------------------------------------------------------------

namespace {

// part(input) → {output, aux_loss, stats} under checkpoint(): recomputed in backward, the
// routing statistics taken from the first run.
template <typename Part>
BlockOutput run_checkpointed(Part part, const torch::Tensor& input, bool cache_comm) {
  auto stats = std::make_shared<c10::optional<RoutingStats>>();
  auto outs = checkpoint(
      [part, stats](const std::vector<torch::Tensor>& in) {
        BlockOutput r = part(in[0]);
        *stats = r.stats;
        return std::vector<torch::Tensor>{r.x, r.aux_loss};
      },
      {input}, CheckpointOptions().cache_comm(cache_comm));
  return BlockOutput{outs[0], outs[1], *stats};
}

}  // namespace

BlockImpl::BlockImpl(const GPTOptions& o, bool use_moe,
                     std::shared_ptr<const ParallelGroups> groups) {
  ln1 = register_module("ln1", Norm(o.norm(), o.d_model(), o.norm_eps()));
  if (o.attention() == AttentionType::kLatent)
    mla = register_module("attn", MultiHeadLatentAttention(o, groups));
  else
    attn = register_module("attn", CausalSelfAttention(o, groups));
  ln2 = register_module("ln2", Norm(o.norm(), o.d_model(), o.norm_eps()));
  if (use_moe) {
    moe = groups ? MoE(o.moe_options(), groups) : MoE(o.moe_options());
    register_module("moe", moe);
  } else {
    mlp = register_module("mlp", MLP(o, groups));
  }
}

BlockOutput BlockImpl::forward(const torch::Tensor& x, const std::vector<int64_t>& group_sizes) {
  // An adaptive MoE layer's recomputation must use the degree r of this call.
  MoECallOptions call;
  if (moe && moe->is_adaptive()) call.adaptive_r(moe->options.adaptive_r());
  const bool recompute = recompute_ != Recompute::kNone && torch::GradMode::is_enabled();
  if (!recompute) return run(x, group_sizes, call, /*checkpoint_moe=*/false);
  if (recompute_ == Recompute::kMoE) return run(x, group_sizes, call, /*checkpoint_moe=*/true);
  // The whole block under checkpoint(): only x is kept.
  auto self = std::static_pointer_cast<BlockImpl>(shared_from_this());
  return run_checkpointed(
      [self, group_sizes, call](const torch::Tensor& t) {
        return self->run(t, group_sizes, call, /*checkpoint_moe=*/false);
      },
      x, cache_comm_);
}

BlockOutput BlockImpl::run(const torch::Tensor& x, const std::vector<int64_t>& group_sizes,
                           const MoECallOptions& call, bool checkpoint_moe) {
  BlockOutput out;
  auto h = x + (mla ? mla(ln1(x)) : attn(ln1(x)));
  auto n = ln2(h);
  if (!moe) {
    out.x = h + mlp(n);
    out.aux_loss = torch::zeros({}, x.options());
    return out;
  }
  // The MoE layer takes the tokens flattened to [B * S, d] (replicated over tp).
  auto flat = n.reshape({-1, n.size(-1)});
  auto layer = moe.ptr();
  auto moe_part = [layer, group_sizes, call](const torch::Tensor& t) {
    MoEOutput m =
        group_sizes.empty() ? layer->forward_with(t, call) : layer->forward_grouped(t, group_sizes);
    return BlockOutput{m.output, m.aux_loss, m.stats};
  };
  out = checkpoint_moe ? run_checkpointed(moe_part, flat, cache_comm_) : moe_part(flat);
  out.x = h + out.x.view(n.sizes());
  return out;
}

void BlockImpl::set_recompute(Recompute mode, bool cache_comm) {
  recompute_ = mode;
  cache_comm_ = cache_comm;
}

void BlockImpl::load_shard_from(BlockImpl& f) {
  torch::NoGradGuard no_grad;
  TORCH_CHECK(static_cast<bool>(moe) == static_cast<bool>(f.moe),
              "Block::load_shard_from: this block is ", moe ? "MoE" : "dense",
              " but not the source");
  detail::copy_parameters(*ln1, *f.ln1);
  detail::copy_parameters(*ln2, *f.ln2);
  if (mla) mla->load_shard_from(*f.mla);
  if (attn) attn->load_shard_from(*f.attn);
  if (moe)
    moe->load_shard_from(*f.moe);
  else
    mlp->load_shard_from(*f.mlp);
}

void BlockImpl::set_moe(MoE m) {
  TORCH_CHECK(mlp, "Block::set_moe: this block has no MLP to replace");
  unregister_module("mlp");
  mlp = nullptr;
  moe = m;
  register_module("moe", moe);
}

// ---- GPT --------------------------------------------------------------------------------------

GPTImpl::GPTImpl(GPTOptions options_, std::shared_ptr<const ParallelGroups> groups)
    : options(std::move(options_)), groups_(std::move(groups)) {
  const auto& o = options;
  o.check(groups_ ? groups_->tp.size() : 1);
  // 1. This rank's pipeline stage and its blocks.
  if (groups_) {
    stages_ = groups_->config.pp;
    stage_ = groups_->coords().pp;
  }
  range_ = stage_block_range(o.n_layers(), stages_, stage_);
  // 2. Embeddings on the first stage; the last stage keeps a copy of the token embedding for the
  //    tied head.
  const bool tied = o.tie_embeddings();
  if (is_first_stage() || (tied && is_last_stage()))
    tok_emb = register_module("tok_emb", torch::nn::Embedding(o.vocab_size(), o.d_model()));
  if (is_first_stage() && o.position() == PositionType::kLearned)
    pos_emb = register_module("pos_emb", torch::nn::Embedding(o.context(), o.d_model()));
  if (!tied && is_last_stage())
    lm_head = register_module(
        "lm_head",
        torch::nn::Linear(torch::nn::LinearOptions(o.d_model(), o.vocab_size()).bias(false)));
  {
    torch::NoGradGuard no_grad;
    if (tok_emb) tok_emb->weight.normal_(0.0, 0.02);
    if (pos_emb) pos_emb->weight.normal_(0.0, 0.02);
    if (lm_head) lm_head->weight.normal_(0.0, 0.02);
  }
  // 3. The blocks, named by their index within the stage.
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t j = 0; j < range_.count; ++j) {
    Block b(o, o.is_moe_block(range_.first + j), groups_);
    b->set_recompute(o.recompute(), o.recompute_cache_comm());
    blocks->push_back(b);
    block_list.push_back(b);
  }
  if (is_last_stage()) ln_f = register_module("ln_f", Norm(o.norm(), o.d_model(), o.norm_eps()));
}

void GPTImpl::set_recompute(Recompute mode, bool cache_comm) {
  options.recompute(mode).recompute_cache_comm(cache_comm);
  for (auto& b : block_list) b->set_recompute(mode, cache_comm);
}

StageOutput GPTImpl::forward_stage(const torch::Tensor& input,
                                   const std::vector<int64_t>& group_sizes) {
  StageOutput out;
  torch::Tensor x;
  // 1. The first stage embeds the tokens; the others continue from the received hidden states.
  if (is_first_stage()) {
    TORCH_CHECK(input.dim() == 2 && input.scalar_type() == torch::kInt64,
                "GPT: expected tokens [B, S] int64, got ", input.sizes(), " ", input.scalar_type());
    const int64_t S = input.size(1);
    TORCH_CHECK(S <= options.context(), "GPT: sequence length ", S, " exceeds the context ",
                options.context());
    x = tok_emb(input);
    if (pos_emb) x = x + pos_emb(torch::arange(S, input.options())).unsqueeze(0);
  } else {
    TORCH_CHECK(input.dim() == 3 && input.size(2) == options.d_model(), "GPT stage ", stage_,
                ": expected hidden states [B, S, ", options.d_model(), "], got ", input.sizes());
    x = input;
  }
  // 2. This stage's blocks.
  for (auto& b : block_list) {
    BlockOutput r = b->forward(x, group_sizes);
    x = r.x;
    out.aux_loss = out.aux_loss.defined() ? out.aux_loss + r.aux_loss : r.aux_loss;
    if (r.stats) out.moe_stats.push_back(*r.stats);
  }
  if (!out.aux_loss.defined()) out.aux_loss = torch::zeros({}, x.options());
  // 3. The last stage: final norm and the head (its own, or the token embedding's weight).
  if (is_last_stage()) x = lm_head ? lm_head(ln_f(x)) : F::linear(ln_f(x), tok_emb->weight);
  out.output = x;
  return out;
}

GPTOutput GPTImpl::forward(const torch::Tensor& tokens, const std::vector<int64_t>& group_sizes) {
  TORCH_CHECK(tokens.dim() == 2 && tokens.scalar_type() == torch::kInt64,
              "GPT: expected tokens [B, S] int64, got ", tokens.sizes(), " ", tokens.scalar_type());
  if (stages_ > 1) return forward_pipelined(tokens, group_sizes);
  StageOutput s = forward_stage(tokens, group_sizes);
  GPTOutput out;
  out.logits = s.output;
  out.aux_loss = s.aux_loss;
  out.moe_stats = std::move(s.moe_stats);
  return out;
}

void GPTImpl::load_shard_from(GPTImpl& full) {
  TORCH_CHECK(full.groups_ == nullptr, "GPT::load_shard_from: the source must be single-process");
  TORCH_CHECK(static_cast<int64_t>(full.block_list.size()) == options.n_layers(),
              "GPT::load_shard_from: the source has ", full.block_list.size(),
              " blocks, this model ", options.n_layers());
  torch::NoGradGuard no_grad;
  using detail::copy_parameters;
  if (tok_emb) copy_parameters(*tok_emb, *full.tok_emb);
  if (pos_emb) copy_parameters(*pos_emb, *full.pos_emb);
  if (ln_f) copy_parameters(*ln_f, *full.ln_f);
  if (lm_head) copy_parameters(*lm_head, *full.lm_head);
  for (size_t j = 0; j < block_list.size(); ++j)
    block_list[j]->load_shard_from(*full.block_list[range_.first + static_cast<int64_t>(j)]);
}

std::vector<MoE> GPTImpl::moe_layers() const {
  std::vector<MoE> out;
  for (const auto& b : block_list)
    if (b->moe) out.push_back(b->moe);
  return out;
}

int64_t GPTImpl::first_moe_layer() const {
  int64_t n = 0;
  for (int64_t i = 0; i < range_.first; ++i) n += options.is_moe_block(i) ? 1 : 0;
  return n;
}

int64_t GPTImpl::num_moe_layers() const {
  int64_t n = 0;
  for (int64_t i = 0; i < options.n_layers(); ++i) n += options.is_moe_block(i) ? 1 : 0;
  return n;
}

torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& targets) {
  return F::cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
}

std::vector<int64_t> moe_group_sizes(const ParallelConfig& layout, int64_t tokens_per_rank) {
  std::vector<int64_t> sizes;
  for (int64_t r = 0; r < layout.dp; ++r) {
    const int64_t base = tokens_per_rank / layout.tp, extra = tokens_per_rank % layout.tp;
    for (int64_t s = 0; s < layout.tp; ++s) sizes.push_back(base + (s < extra ? 1 : 0));
  }
  return sizes;
}

}  // namespace hybridmoe
