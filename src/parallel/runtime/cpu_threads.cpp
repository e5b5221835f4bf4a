// cpu_threads.cpp — configure_cpu_threads of cpu_runtime.h: one thread pool for ATen's intra-op
// work and hybridmoe's GEMMs, BLAS single-threaded beside it.
#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include "hybridmoe/cpu_runtime.h"
#include "kernels/cpu/blas_threads.h"

namespace hybridmoe {

CpuThreads configure_cpu_threads(int intra_op_threads, int blas_threads_when_single) {
  TORCH_CHECK(intra_op_threads >= 1,
              "configure_cpu_threads: an intra-op thread count >= 1 expected, got ",
              intra_op_threads);
  TORCH_CHECK(blas_threads_when_single >= 0,
              "configure_cpu_threads: a BLAS thread count >= 0 expected, got ",
              blas_threads_when_single);
  at::set_num_threads(intra_op_threads);
  if (intra_op_threads > 1) {
    kernels::set_blas_num_threads(1);
  } else if (blas_threads_when_single > 0) {
    kernels::set_blas_num_threads(blas_threads_when_single);
  }
  return {at::get_num_threads(), kernels::blas_num_threads(), kernels::blas_threads_controllable()};
}

int64_t usable_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  return std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()));
}

int default_intra_op_threads(int64_t local_ranks) {
  TORCH_CHECK(local_ranks >= 1, "default_intra_op_threads: local_ranks >= 1 expected, got ",
              local_ranks);
  if (std::getenv("OMP_NUM_THREADS") != nullptr) return at::get_num_threads();
  return static_cast<int>(std::max<int64_t>(1, usable_cores() / local_ranks));
}

std::string describe(const CpuThreads& t) {
  if (!t.blas_controllable)
    return c10::str(t.intra_op, " intra-op thread", t.intra_op == 1 ? "" : "s",
                    ", BLAS threads not controllable (not OpenBLAS)");
  return c10::str(t.intra_op, " intra-op thread", t.intra_op == 1 ? "" : "s", ", BLAS ",
                  t.blas == 1 ? std::string("single-threaded") : c10::str(t.blas, " threads"),
                  " (OpenBLAS)");
}

}  // namespace hybridmoe
