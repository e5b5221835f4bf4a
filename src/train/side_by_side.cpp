// side_by_side.cpp — see side_by_side.h: the trainer's choice of micro-batches side by side.
#include "side_by_side.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <string>

namespace hybridmoe::detail {

namespace {

// Why this step's micro-batches cannot run side by side; "" when they can.
std::string why_not_side_by_side(const TrainConfig& cfg, GPTImpl& model) {
  const auto layout = cfg.layout();
  if (layout.tp > 1 || layout.ep > 1 || layout.etp > 1 || layout.pp > 1)
    return "the layout " + layout.to_string() +
           " exchanges activations inside the forward (it needs tp = ep = etp = pp = 1)";
  const auto params = model.parameters();
  if (!params.empty() && !params.front().device().is_cpu())
    return "the parameters are on " + params.front().device().str() +
           " (side by side runs on the CPU's cores)";
  for (const auto& layer : model.moe_layers())
    if (!layer->gate->route_is_reentrant())
      return "gate \"" + cfg.gate + "\" draws random numbers or keeps per-call state";
  return "";
}

}  // namespace

int64_t micro_batch_threads(const TrainConfig& cfg, GPTImpl& model) {
  const int64_t requested = cfg.micro_batch_threads;
  TORCH_CHECK(requested >= 0, "config key `micro_batch_threads` must be >= 0 (0: auto), got ",
              requested);
  const std::string why_not = why_not_side_by_side(cfg, model);
  const int64_t intra = at::get_num_threads();
  if (requested == 0)
    return why_not.empty() ? std::max<int64_t>(1, std::min(intra, cfg.micro_batches)) : 1;
  if (requested == 1) return 1;
  TORCH_CHECK(why_not.empty(), "config key `micro_batch_threads` = ", requested,
              " runs micro-batches side by side, but ", why_not);
  TORCH_CHECK(requested <= cfg.micro_batches, "config key `micro_batch_threads` = ", requested,
              " exceeds `micro_batches` = ", cfg.micro_batches);
  TORCH_CHECK(requested <= intra, "config key `micro_batch_threads` = ", requested,
              " exceeds this rank's ", intra,
              " intra-op threads (OMP_NUM_THREADS or the core share)");
  return requested;
}

}  // namespace hybridmoe::detail
