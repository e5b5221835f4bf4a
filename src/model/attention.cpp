// attention.cpp — see attention.h: causal multi-head / grouped-query self-attention with its
// optional q/k norms, clipping and RoPE, tensor parallel by heads.
#include <cmath>
#include <limits>

#include "hybridmoe/attention.h"
#include "hybridmoe/collectives.h"

namespace hybridmoe {

CausalSelfAttentionImpl::CausalSelfAttentionImpl(const GPTOptions& o,
                                                 std::shared_ptr<const ParallelGroups> groups)
    : options_(o), groups_(std::move(groups)) {
  if (groups_) {
    tp_ = groups_->tp.size();
    tp_rank_ = groups_->tp.rank;
  }
  o.check(tp_);
  const int64_t H = o.n_heads(), KV = o.kv_heads(), hd = o.head_size(), d = o.d_model();
  // 1. Heads over tp: q by heads; k and v by kv heads when tp divides them, else whole.
  kv_whole_ = tp_ > 1 && KV % tp_ != 0;
  local_heads_ = H / tp_;
  held_kv_heads_ = kv_whole_ ? KV : KV / tp_;
  auto kv_groups = kv_whole_ ? nullptr : groups_;
  const double proj_std = 0.02 / std::sqrt(2.0 * static_cast<double>(o.n_layers()));
  q_proj = register_module(
      "q_proj",
      ColumnParallelLinear(TensorParallelLinearOptions(d, H * hd).bias(o.qkv_bias()), groups_));
  // A key bias reaches the scores as q·b_k, one value per query, which softmax ignores — unless
  // RoPE (rotated by position), a k norm or the clamp act on it first. Without those it would only
  // drift with the optimizer's amplification of rounding noise, so it is not created.
  const bool key_bias = o.qkv_bias() && (o.position() == PositionType::kRope ||
                                         o.qk_norm() != QKNorm::kNone || o.clip_qkv() > 0.0);
  k_proj = register_module(
      "k_proj",
      ColumnParallelLinear(TensorParallelLinearOptions(d, KV * hd).bias(key_bias), kv_groups));
  v_proj = register_module(
      "v_proj",
      ColumnParallelLinear(TensorParallelLinearOptions(d, KV * hd).bias(o.qkv_bias()), kv_groups));
  o_proj = register_module(
      "o_proj",
      RowParallelLinear(
          TensorParallelLinearOptions(H * hd, d).bias(o.attn_out_bias()).init_std(proj_std),
          groups_));
  // 2. q/k norms: per head ([hd], whole on every rank) or over the projection (this rank's part).
  if (o.qk_norm() == QKNorm::kPerHead) {
    q_norm = register_module("q_norm", Norm(NormType::kRMSNorm, hd, o.norm_eps()));
    k_norm = register_module("k_norm", Norm(NormType::kRMSNorm, hd, o.norm_eps()));
  } else if (o.qk_norm() == QKNorm::kWhole) {
    q_norm = register_module("q_norm", Norm(NormType::kRMSNorm, local_heads_ * hd, o.norm_eps()));
    k_norm = register_module("k_norm", Norm(NormType::kRMSNorm, held_kv_heads_ * hd, o.norm_eps()));
    q_norm->split_over_tp = tp_ > 1;
    k_norm->split_over_tp = tp_ > 1 && !kv_whole_;
  }
  // 3. The held kv head each local q head reads (q head g uses kv head g / (H / KV)).
  std::vector<int64_t> index;
  const int64_t first_kv = kv_whole_ ? 0 : tp_rank_ * held_kv_heads_;
  for (int64_t j = 0; j < local_heads_; ++j)
    index.push_back((tp_rank_ * local_heads_ + j) / (H / KV) - first_kv);
  kv_index_ = torch::tensor(index, torch::kInt64);
}

torch::Tensor CausalSelfAttentionImpl::whole_norm(const torch::Tensor& x, Norm& norm,
                                                  bool split) const {
  if (!split) return norm(x);
  // The mean square over the whole projection: this rank's sum of squares summed over tp. Its
  // gradient is partial on every rank too (each rank's slice uses it), so backward sums it over
  // tp as well (copy_to_group).
  auto xf = x.scalar_type() == torch::kFloat64 ? x : x.to(torch::kFloat32);
  auto ss =
      dist::copy_to_group(dist::all_reduce_sum(xf.pow(2).sum(-1, true), groups_->tp), groups_->tp);
  auto y = xf * torch::rsqrt(ss / static_cast<double>(norm->dim * tp_) + norm->eps);
  return norm->weight * y.to(x.scalar_type());
}

torch::Tensor CausalSelfAttentionImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 3 && x.size(2) == options_.d_model(), "attention: expected x [B, S, ",
              options_.d_model(), "], got ", x.sizes());
  const auto& o = options_;
  const int64_t B = x.size(0), S = x.size(1), hd = o.head_size(), Hl = local_heads_;
  const int64_t KVh = held_kv_heads_;
  // 1. Projections: q [B, S, Hl·hd]; k, v [B, S, KVh·hd].
  auto q = q_proj(x), k = k_proj(x), v = v_proj(x);
  // 2. OLMoE's norms over the whole projections.
  if (o.qk_norm() == QKNorm::kWhole) {
    q = whole_norm(q, q_norm, tp_ > 1);
    k = whole_norm(k, k_norm, tp_ > 1 && !kv_whole_);
  }
  q = q.view({B, S, Hl, hd});
  k = k.view({B, S, KVh, hd});
  v = v.view({B, S, KVh, hd});
  // 3. Qwen3's per-head norms. Their weight is shared by the heads of every rank: on a tp-split
  //    tensor its gradient is summed over tp (copy_to_group).
  if (o.qk_norm() == QKNorm::kPerHead) {
    auto shared = [&](const torch::Tensor& w, bool split) {
      return split ? dist::copy_to_group(w, groups_->tp) : w;
    };
    q = rms_norm(q, shared(q_norm->weight, tp_ > 1), o.norm_eps());
    k = rms_norm(k, shared(k_norm->weight, tp_ > 1 && !kv_whole_), o.norm_eps());
  }
  // 4. OLMoE's clamp, after the norms.
  if (o.clip_qkv() > 0.0) {
    q = q.clamp(-o.clip_qkv(), o.clip_qkv());
    k = k.clamp(-o.clip_qkv(), o.clip_qkv());
    v = v.clamp(-o.clip_qkv(), o.clip_qkv());
  }
  // 5. Heads first [B, heads, S, hd], then RoPE on q and k.
  q = q.transpose(1, 2);
  k = k.transpose(1, 2);
  v = v.transpose(1, 2);
  if (o.position() == PositionType::kRope) {
    const RopeFrequencies freq = rope_frequencies(o, o.rope_dims(), x.device());
    q = apply_rope(q, freq, o.rope_interleaved());
    k = apply_rope(k, freq, o.rope_interleaved());
  }
  // 6. Whole k, v feed only this rank's heads: their gradient is summed over tp.
  if (kv_whole_) {
    k = dist::copy_to_group(k, groups_->tp);
    v = dist::copy_to_group(v, groups_->tp);
  }
  // 7. Each q head's kv head (grouped-query attention repeats kv heads).
  if (KVh != Hl || kv_whole_) {
    auto index = kv_index_.to(x.device());
    k = k.index_select(1, index);
    v = v.index_select(1, index);
  }
  // 8. Causal softmax attention. The scale and the causal mask (-inf above the diagonal) ride in
  //    the one batched GEMM of the scores, so no pass over [B·Hl, S, S] is spent on them.
  const int64_t BH = B * Hl;
  auto qf = q.reshape({BH, S, hd}), kf = k.reshape({BH, S, hd}), vf = v.reshape({BH, S, hd});
  auto causal = torch::full({S, S}, -std::numeric_limits<double>::infinity(), x.options()).triu(1);
  auto scores = torch::baddbmm(causal, qf, kf.transpose(1, 2), /*beta=*/1.0,
                               /*alpha=*/1.0 / std::sqrt(static_cast<double>(hd)));
  auto y = torch::bmm(torch::softmax(scores, -1), vf);  // [B·Hl, S, hd]
  // 9. Heads back together, then the row-parallel output projection (sums over tp).
  return o_proj(y.view({B, Hl, S, hd}).transpose(1, 2).reshape({B, S, Hl * hd}));
}

void CausalSelfAttentionImpl::load_shard_from(CausalSelfAttentionImpl& full) {
  torch::NoGradGuard no_grad;
  q_proj->load_shard_from(full.q_proj->weight, full.q_proj->bias);
  k_proj->load_shard_from(full.k_proj->weight, full.k_proj->bias);
  v_proj->load_shard_from(full.v_proj->weight, full.v_proj->bias);
  o_proj->load_shard_from(full.o_proj->weight, full.o_proj->bias);
  auto norm_part = [this](Norm& mine, Norm& whole) {
    if (!mine) return;
    const int64_t n = mine->dim;
    mine->weight.copy_(mine->split_over_tp ? whole->weight.narrow(0, tp_rank_ * n, n)
                                           : whole->weight);
  };
  norm_part(q_norm, full.q_norm);
  norm_part(k_norm, full.k_norm);
}

void CausalSelfAttentionImpl::gather_full(CausalSelfAttentionImpl& full) {
  torch::NoGradGuard no_grad;
  q_proj->gather_into(*full.q_proj);
  k_proj->gather_into(*full.k_proj);
  v_proj->gather_into(*full.v_proj);
  o_proj->gather_into(*full.o_proj);
  auto norm_whole = [this](Norm& mine, Norm& whole) {
    if (!mine) return;
    whole->weight.copy_(mine->split_over_tp
                            ? dist::all_gather_rows(mine->weight.detach().contiguous(), groups_->tp)
                            : mine->weight);
  };
  norm_whole(q_norm, full.q_norm);
  norm_whole(k_norm, full.k_norm);
}

}  // namespace hybridmoe
