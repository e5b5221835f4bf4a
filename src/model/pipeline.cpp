// pipeline.cpp — see pipeline.h: point-to-point transfers between stages and the 1F1B / GPipe
// schedules of one optimizer step.
#include "hybridmoe/pipeline.h"

#include <chrono>
#include <deque>
#include <sstream>

#include "core/enum_names.h"
#include "hybridmoe/collectives.h"
#include "model/micro_batch_threads.h"

namespace hybridmoe {

namespace {

const detail::EnumNames<PipelineSchedule> kScheduleNames{
    "pipeline_schedule",
    {{PipelineSchedule::kOneFOneB, "1f1b"}, {PipelineSchedule::kGPipe, "gpipe"}}};

}  // namespace

std::string to_string(PipelineSchedule schedule) {
  return kScheduleNames.name_of(schedule);
}

PipelineSchedule parse_pipeline_schedule(const std::string& text) {
  return kScheduleNames.parse(text);
}

StageRange stage_block_range(int64_t n_layers, int64_t stages, int64_t stage) {
  TORCH_CHECK(stages >= 1 && stage >= 0 && stage < stages, "stage_block_range: stage ", stage,
              " of ", stages, " stages is out of range");
  TORCH_CHECK(n_layers >= stages, "pipeline: n_layers=", n_layers,
              " must be at least the number of stages pp=", stages);
  const int64_t base = n_layers / stages, extra = n_layers % stages;
  StageRange r;
  r.count = base + (stage < extra ? 1 : 0);
  r.first = stage * base + std::min(stage, extra);
  return r;
}

// ---- the schedule ---------------------------------------------------------------------------

namespace {

// Tags keep the two directions and the micro-batches apart on every backend.
int64_t forward_tag(int64_t m) {
  return 2 * m;
}
int64_t backward_tag(int64_t m) {
  return 2 * m + 1;
}

struct InFlight {
  torch::Tensor input;  // received activation (leaf), undefined on the first stage
  StageForward result;
};

}  // namespace

PipelineStats run_pipeline(
    const dist::Group& pp, const PipelineOptions& o,
    const std::function<StageForward(int64_t, const torch::Tensor&)>& forward) {
  TORCH_CHECK(o.micro_batches >= 1, "run_pipeline: micro_batches must be >= 1, got ",
              o.micro_batches);
  const int64_t P = pp.size(), s = pp.rank, M = o.micro_batches;
  TORCH_CHECK(pp.is_member(), "run_pipeline: this process is not a member of group '", pp.name,
              "'");
  TORCH_CHECK(o.threads >= 1, "run_pipeline: threads must be >= 1, got ", o.threads);
  TORCH_CHECK(o.threads == 1 || P == 1, "run_pipeline: threads = ", o.threads,
              " runs micro-batches side by side on one stage; this pipeline has ", P,
              " stages (use threads = 1)");
  if (o.threads > 1) return detail::run_micro_batches_side_by_side(o, forward);
  const bool first = s == 0, last = s == P - 1;
  TORCH_CHECK(P == 1 || !o.activation_sizes.empty(),
              "run_pipeline: activation_sizes must be given when there are ", P, " stages");
  PipelineStats stats;
  std::deque<InFlight> live;  // forwards whose backward has not run yet, oldest first
  std::vector<dist::PendingWork> sends;
  std::ostringstream order;

  // 1. Forward of micro-batch m: receive, run, send.
  auto run_forward = [&](int64_t m) {
    InFlight f;
    if (!first) {
      f.input = dist::recv(o.activation_sizes, o.activation_options, s - 1, forward_tag(m), pp);
      f.input.requires_grad_(true);
      ++stats.recvs;
    }
    f.result = forward(m, f.input);
    if (!last) {
      TORCH_CHECK(f.result.output.defined(), "run_pipeline: stage ", s,
                  " returned no output activation for micro-batch ", m);
      TORCH_CHECK(f.result.output.sizes() == c10::IntArrayRef(o.activation_sizes),
                  "run_pipeline: stage ", s, " produced an activation of shape ",
                  f.result.output.sizes(), ", expected ", c10::IntArrayRef(o.activation_sizes));
      sends.push_back(dist::send_async(f.result.output, s + 1, forward_tag(m), pp));
      ++stats.sends;
    } else {
      f.result.output = torch::Tensor();  // the last stage's output is only its loss
    }
    live.push_back(std::move(f));
    ++stats.forwards;
    stats.peak_in_flight =
        std::max<int64_t>(stats.peak_in_flight, static_cast<int64_t>(live.size()));
    order << (order.tellp() > 0 ? " " : "") << "F" << m;
  };

  // 2. Backward of the oldest live micro-batch: receive the output's gradient, run, send back.
  auto run_backward = [&](int64_t m) {
    TORCH_CHECK(!live.empty(), "run_pipeline: internal error, no forward to run backward of");
    InFlight f = std::move(live.front());
    live.pop_front();
    std::vector<torch::Tensor> roots, grads;
    if (!last) {
      auto g = dist::recv(o.activation_sizes, o.activation_options, s + 1, backward_tag(m), pp);
      ++stats.recvs;
      if (f.result.output.requires_grad()) {
        roots.push_back(f.result.output);
        grads.push_back(g);
      }
    }
    const auto& loss = f.result.loss;
    if (loss.defined() && loss.requires_grad()) {
      roots.push_back(loss);
      grads.push_back(torch::ones_like(loss));
    }
    if (!roots.empty()) torch::autograd::backward(roots, grads);
    if (!first) {
      auto dx = f.input.grad();
      if (!dx.defined()) dx = torch::zeros_like(f.input);
      sends.push_back(dist::send_async(dx, s - 1, backward_tag(m), pp));
      ++stats.sends;
    }
    ++stats.backwards;
    order << " B" << m;
  };

  // 3. The schedule. 1F1B: stage s runs min(P - s - 1, M) warm-up forwards, then alternates one
  //    forward and one backward, then drains the remaining backwards. GPipe: all forwards, then
  //    all backwards. Backwards always run in forward order.
  const int64_t warmup =
      o.schedule == PipelineSchedule::kGPipe ? M : std::min<int64_t>(P - s - 1, M);
  int64_t next_forward = 0, next_backward = 0;
  for (; next_forward < warmup; ++next_forward) run_forward(next_forward);
  while (next_forward < M) {
    run_forward(next_forward++);
    run_backward(next_backward++);
  }
  while (next_backward < M) run_backward(next_backward++);

  // 4. Every send has been received before the step ends.
  for (auto& p : sends) p.wait();
  stats.order = order.str();
  return stats;
}

}  // namespace hybridmoe
