// micro_batch_threads.h — internal: the one-stage schedule of run_pipeline that runs micro-batches
// side by side on the intra-op threads (PipelineOptions::threads > 1).
#pragma once

#include <functional>

#include "hybridmoe/pipeline.h"

namespace hybridmoe::detail {

/// run_pipeline's body for one stage and options.threads > 1 (checked by the caller).
PipelineStats run_micro_batches_side_by_side(
    const PipelineOptions& options,
    const std::function<StageForward(int64_t, const torch::Tensor&)>& forward);

}  // namespace hybridmoe::detail
