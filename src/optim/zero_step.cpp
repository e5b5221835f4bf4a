// zero_step.cpp — the AdamW update of an owned shard (zero_space.h): the untiled step, which
// materializes flat compute-precision copies of every owned gradient and parameter at once (what
// a naive ZeRO implementation does, and the memory spike DeepSpeed-TED removes), and the tiled
// step, which walks the shard in tiles and upcasts one tile at a time, so its temporaries are
// bounded by the tile. Both apply the exact operations of torch::optim::AdamW (LibTorch 1.13
// adamw.cpp) in the same order, element by element, so they agree bit for bit with each other and
// with the unsharded optimizer.
#include <algorithm>
#include <cmath>

#include "optim/zero_space.h"

namespace hybridmoe::zero_detail {
namespace {

/// Per-step scalars of one parameter group.
struct Consts {
  double lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2;
};

Consts consts(const AdamWHyper& h, int64_t step) {
  return {h.lr(),
          h.beta1(),
          h.beta2(),
          h.eps(),
          h.weight_decay(),
          1 - std::pow(h.beta1(), step),
          1 - std::pow(h.beta2(), step)};
}

/// torch::optim::AdamW's update of one run of elements, in its order of operations.
/// w, g, m, v: [n] compute dtype (w and m, v updated in place). in_place_denom: build the
/// denominator in one temporary (same values) instead of AdamW's two.
void adamw_update(torch::Tensor w, const torch::Tensor& g, torch::Tensor m, torch::Tensor v,
                  const Consts& c, bool in_place_denom) {
  // 1. Decoupled weight decay.
  if (c.weight_decay != 0) w.mul_(1 - c.lr * c.weight_decay);
  // 2. Moments.
  m.mul_(c.beta1).add_(g, 1 - c.beta1);
  v.mul_(c.beta2).addcmul_(g, g, 1 - c.beta2);
  // 3. Denominator: sqrt(v) / sqrt(bias_correction2) + eps.
  torch::Tensor denom;
  if (in_place_denom) {
    denom = v.sqrt();
    denom.div_(std::sqrt(c.bias_correction2)).add_(c.eps);
  } else {
    denom = (v.sqrt() / std::sqrt(c.bias_correction2)).add_(c.eps);
  }
  // 4. Update.
  w.addcdiv_(m, denom, -(c.lr / c.bias_correction1));
}

void step_untiled(Space& s, const std::vector<Param>& params,
                  const std::vector<ZeroParamGroup>& groups) {
  // 1. Flat copies of every owned gradient (upcast) and parameter value (or the master).
  std::vector<torch::Tensor> g_parts, w_parts;
  for (const auto& pc : s.pieces) {
    const auto& p = params[pc.param];
    g_parts.push_back(flat_grad(p).narrow(0, pc.param_offset, pc.length));
    if (!s.master.defined()) w_parts.push_back(flat_value(p).narrow(0, pc.param_offset, pc.length));
  }
  torch::Tensor g = torch::cat(g_parts).to(s.compute);
  torch::Tensor w = s.master.defined() ? s.master : torch::cat(w_parts);
  // 2. The update over runs of pieces that share a parameter group.
  size_t i = 0;
  while (i < s.pieces.size()) {
    size_t j = i;
    const int64_t pg = params[s.pieces[i].param].pgroup;
    int64_t n = 0;
    while (j < s.pieces.size() && params[s.pieces[j].param].pgroup == pg) n += s.pieces[j++].length;
    const int64_t off = s.pieces[i].shard_offset;
    adamw_update(w.narrow(0, off, n), g.narrow(0, off, n), s.exp_avg.narrow(0, off, n),
                 s.exp_avg_sq.narrow(0, off, n), consts(groups[pg].hyper, s.step),
                 /*in_place_denom=*/false);
    i = j;
  }
  // 3. Back into the parameters.
  for (const auto& pc : s.pieces)
    flat_value(params[pc.param])
        .narrow(0, pc.param_offset, pc.length)
        .copy_(w.narrow(0, pc.shard_offset, pc.length));
}

void step_tiled(Space& s, const std::vector<Param>& params,
                const std::vector<ZeroParamGroup>& groups, int64_t tile) {
  // Tile k covers shard elements [k * tile, (k + 1) * tile); a piece is cut at tile boundaries.
  for (const auto& pc : s.pieces) {
    const auto& p = params[pc.param];
    const Consts c = consts(groups[p.pgroup].hyper, s.step);
    torch::Tensor value = flat_value(p), grad = flat_grad(p);
    int64_t done = 0;
    while (done < pc.length) {
      const int64_t at = pc.shard_offset + done;
      const int64_t n = std::min(pc.length - done, tile - at % tile);
      // 1. This tile's gradient, upcast if needed (the only copy of it).
      torch::Tensor g = grad.narrow(0, pc.param_offset + done, n);
      if (g.scalar_type() != s.compute) g = g.to(s.compute);
      // 2. Update the master (or the parameter itself) in place.
      torch::Tensor w = s.master.defined() ? s.master.narrow(0, at, n)
                                           : value.narrow(0, pc.param_offset + done, n);
      adamw_update(w, g, s.exp_avg.narrow(0, at, n), s.exp_avg_sq.narrow(0, at, n), c,
                   /*in_place_denom=*/true);
      // 3. Low precision: round the master into the parameter.
      if (s.master.defined()) value.narrow(0, pc.param_offset + done, n).copy_(w);
      done += n;
    }
  }
}

}  // namespace

int64_t tile_elements(const Space& s, double tile_mb) {
  // Temporaries per element: the denominator, plus the upcast gradient for low precision.
  const int64_t per =
      static_cast<int64_t>(c10::elementSize(s.compute)) +
      (s.dtype != s.compute ? static_cast<int64_t>(c10::elementSize(s.compute)) : 0);
  const double bytes = tile_mb * 1024.0 * 1024.0;
  return std::max<int64_t>(1, static_cast<int64_t>(bytes / static_cast<double>(per)));
}

void step_shard(Space& s, const std::vector<Param>& params,
                const std::vector<ZeroParamGroup>& groups, double tile_mb) {
  torch::NoGradGuard no_grad;
  if (s.owned == 0) return;
  if (tile_mb <= 0)
    step_untiled(s, params, groups);
  else
    step_tiled(s, params, groups, tile_elements(s, tile_mb));
}

}  // namespace hybridmoe::zero_detail
