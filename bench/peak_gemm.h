// peak_gemm.h — the machine's measured GEMM rate, the yardstick `hmoe bench layer` divides the
// expert FLOP/s by: the best of one multi-threaded GEMM and one single-threaded GEMM per core run
// concurrently (each core's row block of the same GEMM), in the same run and threads as the layer.
#pragma once

#include <cstdint>

#include <torch/torch.h>

namespace hybridmoe::bench {

struct PeakGemm {
  double multithread_gflops = 0.0;   ///< [m, k] × [k, n] on `threads` intra-op/BLAS threads
  double per_core_sum_gflops = 0.0;  ///< one single-threaded row block per thread, concurrently
  /// Whether BLAS threads could be limited to 1 for the per-core candidate (OpenBLAS's
  /// openblas_set_num_threads found); false: per_core_sum_gflops is 0 and not a candidate.
  bool per_core_measured = false;
  double best() const {
    return multithread_gflops > per_core_sum_gflops ? multithread_gflops : per_core_sum_gflops;
  }
};

/// Times (median of `iters` after `warmup`) C = A B, A [m, k], B [k, n] in `dtype`, both ways.
/// The per-core candidate splits A's rows into `threads` blocks, each multiplied by one
/// std::thread with BLAS and intra-op threads set to 1; the settings in force before are restored.
PeakGemm measure_peak_gemm(int64_t m, int64_t k, int64_t n, torch::ScalarType dtype, int threads,
                           int warmup, int iters);

}  // namespace hybridmoe::bench
