// gpt.cpp — see model.h: the attention, MLP, block and GPT modules, and sharding from a
// single-process model.
#include <cmath>

#include "hybridmoe/model.h"

namespace hybridmoe {

namespace F = torch::nn::functional;

MoEOptions GPTOptions::moe_options() const {
  MoEOptions m(d_model_, num_experts_);
  m.d_hidden(expert_hidden_ > 0 ? expert_hidden_ : mlp_hidden());
  m.gate(gate_);
  m.expert_layout(expert_layout_).adaptive_r(adaptive_r_).a2a_overlap_degree(a2a_overlap_degree_);
  return m;
}

GPTOptions GPTOptions::single_process() const {
  GPTOptions o = *this;
  o.expert_layout(ExpertLayout::kFixed).adaptive_r(1).a2a_overlap_degree(1);
  return o;
}

// ---- attention --------------------------------------------------------------------------------

CausalSelfAttentionImpl::CausalSelfAttentionImpl(const GPTOptions& o,
                                                 std::shared_ptr<const ParallelGroups> groups) {
  const int64_t tp = groups ? groups->tp.size() : 1;
  TORCH_CHECK(o.d_model() % o.n_heads() == 0, "GPT: d_model=", o.d_model(),
              " must be divisible by n_heads=", o.n_heads());
  TORCH_CHECK(o.n_heads() % tp == 0, "GPT: n_heads=", o.n_heads(), " must be divisible by tp=", tp);
  local_heads_ = o.n_heads() / tp;
  head_dim_ = o.d_model() / o.n_heads();
  const double proj_std = 0.02 / std::sqrt(2.0 * static_cast<double>(o.n_layers()));
  qkv = register_module(
      "qkv",
      ColumnParallelLinear(TensorParallelLinearOptions(o.d_model(), o.d_model()).fused(3), groups));
  proj = register_module(
      "proj",
      RowParallelLinear(TensorParallelLinearOptions(o.d_model(), o.d_model()).init_std(proj_std),
                        groups));
}

torch::Tensor CausalSelfAttentionImpl::forward(const torch::Tensor& x) {
  const int64_t B = x.size(0), S = x.size(1), local = local_heads_ * head_dim_;
  const int64_t BH = B * local_heads_;
  // 1. Projections of this rank's heads: [B, S, 3 * local] → three [B * H_l, S, hd].
  auto parts = qkv(x).split(local, -1);
  auto heads = [&](const torch::Tensor& t) {
    return t.view({B, S, local_heads_, head_dim_}).transpose(1, 2).reshape({BH, S, head_dim_});
  };
  auto q = heads(parts[0]), k = heads(parts[1]), v = heads(parts[2]);
  // 2. Causal softmax attention. The scale and the causal mask (-inf above the diagonal) ride in
  //    the one batched GEMM of the scores, so no pass over [B * H_l, S, S] is spent on them.
  auto causal = torch::full({S, S}, -std::numeric_limits<double>::infinity(), x.options()).triu(1);
  auto scores = torch::baddbmm(causal, q, k.transpose(1, 2), /*beta=*/1.0,
                               /*alpha=*/1.0 / std::sqrt(static_cast<double>(head_dim_)));
  auto y = torch::bmm(torch::softmax(scores, -1), v);  // [B * H_l, S, hd]
  // 3. Heads back together, then the row-parallel output projection (sums over tp).
  return proj(y.view({B, local_heads_, S, head_dim_}).transpose(1, 2).reshape({B, S, local}));
}

// ---- MLP --------------------------------------------------------------------------------------

MLPImpl::MLPImpl(const GPTOptions& o, std::shared_ptr<const ParallelGroups> groups) {
  const double proj_std = 0.02 / std::sqrt(2.0 * static_cast<double>(o.n_layers()));
  fc1 = register_module(
      "fc1",
      ColumnParallelLinear(TensorParallelLinearOptions(o.d_model(), o.mlp_hidden()), groups));
  fc2 = register_module(
      "fc2",
      RowParallelLinear(TensorParallelLinearOptions(o.mlp_hidden(), o.d_model()).init_std(proj_std),
                        groups));
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x) {
  return fc2(torch::gelu(fc1(x)));
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
  ln1 = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.d_model()})));
  attn = register_module("attn", CausalSelfAttention(o, groups));
  ln2 = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.d_model()})));
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
  auto h = x + attn(ln1(x));
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
  TORCH_CHECK(o.vocab_size() > 0 && o.context() > 0 && o.d_model() > 0 && o.n_layers() > 0,
              "GPT: sizes must be positive, got vocab ", o.vocab_size(), ", context ", o.context(),
              ", d_model ", o.d_model(), ", n_layers ", o.n_layers());
  // 1. This rank's pipeline stage and its blocks.
  if (groups_) {
    stages_ = groups_->config.pp;
    stage_ = groups_->coords().pp;
  }
  range_ = stage_block_range(o.n_layers(), stages_, stage_);
  // 2. Embeddings on the first stage; the last stage keeps a copy of the token embedding for the
  //    tied head.
  if (is_first_stage() || is_last_stage())
    tok_emb = register_module("tok_emb", torch::nn::Embedding(o.vocab_size(), o.d_model()));
  if (is_first_stage())
    pos_emb = register_module("pos_emb", torch::nn::Embedding(o.context(), o.d_model()));
  {
    torch::NoGradGuard no_grad;
    if (tok_emb) tok_emb->weight.normal_(0.0, 0.02);
    if (pos_emb) pos_emb->weight.normal_(0.0, 0.02);
  }
  // 3. The blocks, named by their index within the stage.
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t j = 0; j < range_.count; ++j) {
    Block b(o, o.is_moe_block(range_.first + j), groups_);
    b->set_recompute(o.recompute(), o.recompute_cache_comm());
    blocks->push_back(b);
    block_list.push_back(b);
  }
  if (is_last_stage())
    ln_f =
        register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.d_model()})));
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
    auto pos = torch::arange(S, input.options());
    x = tok_emb(input) + pos_emb(pos).unsqueeze(0);
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
  // 3. The last stage: final norm and the tied head (logits against the token embedding).
  out.output = is_last_stage() ? F::linear(ln_f(x), tok_emb->weight) : x;
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
  auto copy = [](torch::nn::Module& dst, torch::nn::Module& src) {
    auto s = src.named_parameters();
    for (auto& kv : dst.named_parameters()) kv.value().copy_(s[kv.key()]);
  };
  if (tok_emb) copy(*tok_emb, *full.tok_emb);
  if (pos_emb) copy(*pos_emb, *full.pos_emb);
  if (ln_f) copy(*ln_f, *full.ln_f);
  for (size_t j = 0; j < block_list.size(); ++j) {
    const int64_t i = range_.first + static_cast<int64_t>(j);
    auto& b = *block_list[j];
    auto& f = *full.block_list[i];
    TORCH_CHECK(static_cast<bool>(b.moe) == static_cast<bool>(f.moe),
                "GPT::load_shard_from: block ", i, " is ", b.moe ? "MoE" : "dense",
                " here but not in the source");
    copy(*b.ln1, *f.ln1);
    copy(*b.ln2, *f.ln2);
    b.attn->qkv->load_shard_from(f.attn->qkv->weight, f.attn->qkv->bias);
    b.attn->proj->load_shard_from(f.attn->proj->weight, f.attn->proj->bias);
    if (b.moe) {
      b.moe->load_shard_from(*f.moe);
    } else {
      b.mlp->fc1->load_shard_from(f.mlp->fc1->weight, f.mlp->fc1->bias);
      b.mlp->fc2->load_shard_from(f.mlp->fc2->weight, f.mlp->fc2->bias);
    }
  }
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
