// side_by_side.h — internal: how many micro-batches of a training step run side by side
// (config key `micro_batch_threads`, PipelineOptions::threads).
#pragma once

#include <cstdint>

#include "hybridmoe/model.h"
#include "hybridmoe/train.h"

namespace hybridmoe::detail {

/// The threads micro-batches run on: cfg.micro_batch_threads when given (>= 1; refused, naming the
/// reason, where the step cannot run that way), or with 0 (auto) the intra-op threads, at most
/// cfg.micro_batches, where it can and 1 elsewhere. Side by side needs a forward without
/// collectives (tp = ep = etp = pp = 1; dp is free: its reduction follows the passes), CPU
/// parameters and gates whose route() is reentrant.
int64_t micro_batch_threads(const TrainConfig& cfg, GPTImpl& model);

}  // namespace hybridmoe::detail
