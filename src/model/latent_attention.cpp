// latent_attention.cpp — see attention.h: DeepSeek-V3's multi-head latent attention, tensor
// parallel by heads (the per-head projections split over tp, the latents whole on every rank).
#include <cmath>
#include <limits>

#include "hybridmoe/attention.h"
#include "hybridmoe/collectives.h"

namespace hybridmoe {

MultiHeadLatentAttentionImpl::MultiHeadLatentAttentionImpl(
    const GPTOptions& o, std::shared_ptr<const ParallelGroups> groups)
    : options_(o), groups_(std::move(groups)) {
  const int64_t tp = groups_ ? groups_->tp.size() : 1;
  TORCH_CHECK(o.attention() == AttentionType::kLatent,
              "MultiHeadLatentAttention: options.attention must be mla, got ",
              to_string(o.attention()));
  o.check(tp);
  const int64_t d = o.d_model(), H = o.n_heads();
  const int64_t qk = o.qk_nope_head_dim() + o.qk_rope_head_dim();
  const double proj_std = 0.02 / std::sqrt(2.0 * static_cast<double>(o.n_layers()));
  using Opts = TensorParallelLinearOptions;
  // 1. Queries: one projection, or down to the q latent (whole on every rank), its norm, and up
  //    per head (split over tp).
  if (o.q_lora_rank() == 0) {
    q_proj = register_module("q_proj", ColumnParallelLinear(Opts(d, H * qk).bias(false), groups_));
  } else {
    q_a_proj = register_module(
        "q_a_proj", ColumnParallelLinear(Opts(d, o.q_lora_rank()).bias(o.qkv_bias()), nullptr));
    q_a_norm =
        register_module("q_a_norm", Norm(NormType::kRMSNorm, o.q_lora_rank(), o.latent_norm_eps()));
    q_b_proj = register_module(
        "q_b_proj", ColumnParallelLinear(Opts(o.q_lora_rank(), H * qk).bias(false), groups_));
  }
  // 2. Keys and values: down to the kv latent and the shared rotary key (whole on every rank),
  //    the latent's norm, and up to each head's unrotated key and value (split over tp).
  kv_a_proj = register_module(
      "kv_a_proj",
      ColumnParallelLinear(Opts(d, o.kv_lora_rank() + o.qk_rope_head_dim()).bias(o.qkv_bias()),
                           nullptr));
  kv_a_norm =
      register_module("kv_a_norm", Norm(NormType::kRMSNorm, o.kv_lora_rank(), o.latent_norm_eps()));
  kv_b_proj = register_module(
      "kv_b_proj",
      ColumnParallelLinear(
          Opts(o.kv_lora_rank(), H * (o.qk_nope_head_dim() + o.v_head_dim())).bias(false),
          groups_));
  o_proj = register_module(
      "o_proj",
      RowParallelLinear(Opts(H * o.v_head_dim(), d).bias(o.attn_out_bias()).init_std(proj_std),
                        groups_));
}

torch::Tensor MultiHeadLatentAttentionImpl::forward(const torch::Tensor& x) {
  const auto& o = options_;
  TORCH_CHECK(x.dim() == 3 && x.size(2) == o.d_model(), "latent attention: expected x [B, S, ",
              o.d_model(), "], got ", x.sizes());
  const int64_t B = x.size(0), S = x.size(1), tp = groups_ ? groups_->tp.size() : 1;
  const int64_t Hl = o.n_heads() / tp, nope = o.qk_nope_head_dim(), rope = o.qk_rope_head_dim();
  const int64_t vd = o.v_head_dim(), qk = nope + rope;
  // 1. Queries of this rank's heads: [B, Hl, S, nope + rope].
  auto q = q_proj ? q_proj(x) : q_b_proj(q_a_norm(q_a_proj(x)));
  q = q.view({B, S, Hl, qk}).transpose(1, 2);
  auto q_nope = q.narrow(-1, 0, nope);
  const RopeFrequencies freq = rope_frequencies(o, rope, x.device());
  auto q_rot = apply_rope(q.narrow(-1, nope, rope), freq, o.rope_interleaved());
  // 2. The kv latent and the rotary key shared by all heads: [B, S, kv_lora_rank], [B, 1, S, rope].
  auto kv = kv_a_proj(x);
  auto latent = kv.narrow(-1, 0, o.kv_lora_rank());
  auto k_rot =
      apply_rope(kv.narrow(-1, o.kv_lora_rank(), rope).unsqueeze(1), freq, o.rope_interleaved());
  // The shared key feeds only this rank's heads: its gradient is summed over tp.
  if (tp > 1) k_rot = dist::copy_to_group(k_rot, groups_->tp);
  // 3. Each head's unrotated key and value from the normalized latent: [B, Hl, S, nope + vd].
  auto kvb = kv_b_proj(kv_a_norm(latent)).view({B, S, Hl, nope + vd}).transpose(1, 2);
  auto k_nope = kvb.narrow(-1, 0, nope), v = kvb.narrow(-1, nope, vd);
  // 4. Causal softmax attention with the scale 1 / sqrt(nope + rope), times YaRN's mscale² when
  //    the options ask for it (latent_softmax_mscale).
  const int64_t BH = B * Hl;
  auto query = torch::cat({q_nope, q_rot}, -1).reshape({BH, S, qk});
  auto key = torch::cat({k_nope, k_rot.expand({B, Hl, S, rope})}, -1).reshape({BH, S, qk});
  auto causal = torch::full({S, S}, -std::numeric_limits<double>::infinity(), x.options()).triu(1);
  auto scores =
      torch::baddbmm(causal, query, key.transpose(1, 2), /*beta=*/1.0,
                     /*alpha=*/latent_softmax_mscale(o) / std::sqrt(static_cast<double>(qk)));
  auto y = torch::bmm(torch::softmax(scores, -1), v.reshape({BH, S, vd}));  // [B·Hl, S, vd]
  // 5. Heads back together, then the row-parallel output projection (sums over tp).
  return o_proj(y.view({B, Hl, S, vd}).transpose(1, 2).reshape({B, S, Hl * vd}));
}

void MultiHeadLatentAttentionImpl::load_shard_from(MultiHeadLatentAttentionImpl& full) {
  torch::NoGradGuard no_grad;
  for (auto [mine, whole] :
       {std::pair{q_proj, full.q_proj}, std::pair{q_a_proj, full.q_a_proj},
        std::pair{q_b_proj, full.q_b_proj}, std::pair{kv_a_proj, full.kv_a_proj},
        std::pair{kv_b_proj, full.kv_b_proj}})
    if (mine) mine->load_shard_from(whole->weight, whole->bias);
  o_proj->load_shard_from(full.o_proj->weight, full.o_proj->bias);
  if (q_a_norm) q_a_norm->weight.copy_(full.q_a_norm->weight);
  kv_a_norm->weight.copy_(full.kv_a_norm->weight);
}

void MultiHeadLatentAttentionImpl::gather_full(MultiHeadLatentAttentionImpl& full) {
  torch::NoGradGuard no_grad;
  for (auto [mine, whole] :
       {std::pair{q_proj, full.q_proj}, std::pair{q_a_proj, full.q_a_proj},
        std::pair{q_b_proj, full.q_b_proj}, std::pair{kv_a_proj, full.kv_a_proj},
        std::pair{kv_b_proj, full.kv_b_proj}})
    if (mine) mine->gather_into(*whole);
  o_proj->gather_into(*full.o_proj);
  if (q_a_norm) full.q_a_norm->weight.copy_(q_a_norm->weight);
  full.kv_a_norm->weight.copy_(kv_a_norm->weight);
}

}  // namespace hybridmoe
