// pipeline.h — pipeline parallelism: point-to-point activation transfer between adjacent stages
// over the pp group (c10d send/recv with timeouts), and the micro-batch schedules that drive a
// stage's forward and backward passes: 1F1B (PipeDream-Flush, Megatron's default) and GPipe.
//
// A stage is described by one callback that runs the forward of one micro-batch on this rank; the
// engine receives its input from the previous stage, sends its output to the next one, and later
// runs its backward with the gradient received from the next stage, sending the input's gradient
// back. Every rank of a stage runs the same schedule, so the collectives inside a stage (tensor
// and expert parallel) are issued in the same order on all of its ranks.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/dist.h"

namespace hybridmoe {

/// The order of forward and backward passes of the micro-batches on each stage.
enum class PipelineSchedule {
  kOneFOneB,  ///< warm-up forwards, then one forward / one backward, then cool-down backwards
  kGPipe,     ///< every forward, then every backward
};
/// "1f1b" or "gpipe".
std::string to_string(PipelineSchedule schedule);
/// Parses "1f1b" or "gpipe"; raises an error naming the text and both names otherwise.
/// Example: parse_pipeline_schedule("gpipe") == PipelineSchedule::kGPipe.
PipelineSchedule parse_pipeline_schedule(const std::string& text);

/// The contiguous block range [first, first + count) of stage `stage` when n_layers blocks are
/// split over `stages` stages as evenly as possible (the first n_layers % stages stages get one
/// more block).
struct StageRange {
  int64_t first = 0, count = 0;
};
StageRange stage_block_range(int64_t n_layers, int64_t stages, int64_t stage);

// ---- the schedule ---------------------------------------------------------------------------

/// What a stage's forward of one micro-batch returns.
struct StageForward {
  /// The activation sent to the next stage: [shape of PipelineOptions::activation_sizes].
  /// Ignored (may be undefined) on the last stage.
  torch::Tensor output;
  /// A scalar added to this stage's backward: the micro-batch's loss on the last stage, extra
  /// terms of this stage (e.g. its MoE auxiliary losses) elsewhere; undefined means none.
  torch::Tensor loss;
};

/// How to run the pipeline of one optimizer step.
struct PipelineOptions {
  int64_t micro_batches = 1;
  PipelineSchedule schedule = PipelineSchedule::kOneFOneB;
  /// Shape and options of the activation passed between stages (the same for every micro-batch).
  std::vector<int64_t> activation_sizes;
  torch::TensorOptions activation_options = torch::kFloat32;
  /// Micro-batches run side by side on this many of the intra-op threads (one stage only), each
  /// forward and backward single-threaded, in waves of `threads`. Each micro-batch's gradients
  /// are computed apart and added to `parameters` in micro-batch order, so the result is the same
  /// bits as threads = 1 with one intra-op thread. The callback must be safe to call from several
  /// threads at once and issue no collectives (no tp, ep or pp group in the forward).
  int64_t threads = 1;
  /// The tensors whose gradients accumulate; required when threads > 1 (those that do not
  /// require grad are skipped).
  std::vector<torch::Tensor> parameters;
};

/// Counts of what run_pipeline did on this rank (for tests and benchmarks).
struct PipelineStats {
  int64_t forwards = 0, backwards = 0, sends = 0, recvs = 0;
  /// The largest number of micro-batches whose activations were alive at once.
  int64_t peak_in_flight = 0;
  /// "F0 F1 B0 F2 B1 ...": the order this stage ran its passes.
  std::string order;
};

/// Runs the forward and backward of every micro-batch of one step on this rank's stage (the
/// stage is the rank's index in `pp`). `forward(m, input)` runs micro-batch m: on the first stage
/// `input` is undefined (the callback reads its own data), elsewhere it is the activation received
/// from the previous stage (a leaf that requires grad). Gradients accumulate into the parameters
/// (the caller zeroes them before and scales the losses, e.g. by 1 / micro_batches).
/// Collective over `pp` (and over the groups the callback uses). With options.threads > 1 (one
/// stage), the callback runs on several threads at once (see PipelineOptions::threads).
///
/// Example:
///   PipelineOptions po;
///   po.micro_batches = 4;
///   po.activation_sizes = {b, s, d};
///   run_pipeline(groups.pp, po, [&](int64_t m, const torch::Tensor& in) {
///     auto r = model->forward_stage(in.defined() ? in : tokens[m]);
///     StageForward f{r.output, r.aux_loss / 4.0};
///     if (is_last) f.loss = f.loss + lm_loss(r.output, targets[m]) / 4.0;
///     return f;
///   });
PipelineStats run_pipeline(
    const dist::Group& pp, const PipelineOptions& options,
    const std::function<StageForward(int64_t, const torch::Tensor&)>& forward);

}  // namespace hybridmoe
