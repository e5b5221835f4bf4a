// micro_batch_threads.cpp — micro-batches side by side on one stage: each thread runs the forward
// and backward of its own micro-batch single-threaded, and the gradients are added in micro-batch
// order, so the step computes the same bits as the sequential schedule on one thread. On a
// few-core CPU this is where a small model's speed-up comes from: its per-op work is too small
// to share one op over the cores, but two micro-batches are independent.
#include "model/micro_batch_threads.h"

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/torch.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <sstream>

#include "kernels/cpu/blas_threads.h"

namespace hybridmoe::detail {

namespace {

// While alive on a thread of the parallel region, that thread's ATen ops see one intra-op thread
// and thread id 0, as on a one-thread run: kernels that split a reduction by the thread count
// (LayerNorm's backward, for one) then add in the same order, so a micro-batch computes the same
// bits on any thread. With ATen's OpenMP backend (Debian's LibTorch, pip's PyTorch on Linux);
// elsewhere the ops run inline all the same, only their splits may differ.
class OneIntraOpThreadHere {
 public:
  OneIntraOpThreadHere() {
    at::internal::lazy_init_num_threads();  // ATen's own first-use set-up would undo ours
#ifdef _OPENMP
    previous_ = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
  }
  ~OneIntraOpThreadHere() {
#ifdef _OPENMP
    omp_set_num_threads(previous_);
#endif
  }
  OneIntraOpThreadHere(const OneIntraOpThreadHere&) = delete;
  OneIntraOpThreadHere& operator=(const OneIntraOpThreadHere&) = delete;

 private:
  [[maybe_unused]] int previous_ = 1;
  at::internal::ThreadIdGuard thread_id_{0};
};

}  // namespace

PipelineStats run_micro_batches_side_by_side(
    const PipelineOptions& o,
    const std::function<StageForward(int64_t, const torch::Tensor&)>& forward) {
  TORCH_CHECK(!o.parameters.empty(), "run_pipeline: threads = ", o.threads,
              " needs PipelineOptions::parameters, the tensors whose gradients accumulate");
  std::vector<torch::Tensor> params;
  for (const auto& p : o.parameters)
    if (p.requires_grad()) params.push_back(p);
  const int64_t M = o.micro_batches, T = std::min(o.threads, M);
  PipelineStats stats;
  std::ostringstream order;
  // ATen ops inside the parallel region run on their calling thread; BLAS too while this lives.
  kernels::SingleThreadedBlas single_blas;
  const at::ThreadLocalState caller;  // grad mode, dispatch keys: parallel_for does not carry them
  for (int64_t first = 0; first < M; first += T) {
    const int64_t n = std::min(T, M - first);
    // 1. The wave's micro-batches side by side: forward, then the gradients of the loss with
    //    respect to the parameters, kept apart (nothing accumulates into .grad here).
    std::vector<std::vector<torch::Tensor>> grads(static_cast<size_t>(n));
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      at::ThreadLocalStateGuard same_state(caller);
      OneIntraOpThreadHere one_thread;
      for (int64_t i = begin; i < end; ++i) {
        const StageForward f = forward(first + i, torch::Tensor());
        if (f.loss.defined() && f.loss.requires_grad() && !params.empty())
          grads[static_cast<size_t>(i)] =
              torch::autograd::grad({f.loss}, params, {}, /*retain_graph=*/false,
                                    /*create_graph=*/false, /*allow_unused=*/true);
      }
    });
    // 2. Accumulation in micro-batch order, as the sequential schedule's backward passes do it:
    //    the first gradient is taken as it is (copied into the parameter's strides when autograd
    //    returned another layout, e.g. an expanded one), later ones are added in place.
    torch::NoGradGuard no_grad;
    for (int64_t i = 0; i < n; ++i) {
      const auto& g = grads[static_cast<size_t>(i)];
      for (size_t j = 0; j < g.size(); ++j) {
        if (!g[j].defined()) continue;
        auto& p = params[j];
        if (p.grad().defined())
          p.mutable_grad().add_(g[j]);
        else if (g[j].strides() == p.strides())
          p.mutable_grad() = g[j];
        else
          p.mutable_grad() = at::empty_strided(p.sizes(), p.strides(), p.options()).copy_(g[j]);
      }
      order << (order.tellp() > 0 ? " " : "") << "F" << first + i << " B" << first + i;
    }
    stats.forwards += n;
    stats.backwards += n;
    stats.peak_in_flight = std::max(stats.peak_in_flight, n);
  }
  stats.order = order.str();
  return stats;
}

}  // namespace hybridmoe::detail
