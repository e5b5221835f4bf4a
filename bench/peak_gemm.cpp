// peak_gemm.cpp — see peak_gemm.h. OpenBLAS keeps one global thread count of its own (the Debian
// pthread build: its own pool, not LibTorch's OpenMP one), so the per-core candidate makes it 1
// (kernels/cpu/blas_threads.h; not measurable with another BLAS) and puts the value it found back
// afterwards, with LibTorch's intra-op thread count likewise.
#include "peak_gemm.h"

#include <exception>
#include <thread>
#include <vector>

#include "bench_common.h"
#include "kernels/cpu/blas_threads.h"

namespace hybridmoe::bench {

namespace {

// LibTorch's intra-op threads at 1 for this object's lifetime, the earlier count restored after.
class SingleIntraOpThread {
 public:
  SingleIntraOpThread() : previous_(at::get_num_threads()) { at::set_num_threads(1); }
  ~SingleIntraOpThread() { at::set_num_threads(previous_); }
  SingleIntraOpThread(const SingleIntraOpThread&) = delete;
  SingleIntraOpThread& operator=(const SingleIntraOpThread&) = delete;

 private:
  int previous_;
};

double gflops(int64_t m, int64_t k, int64_t n, double ms) {
  return 2.0 * static_cast<double>(m) * static_cast<double>(k) * static_cast<double>(n) /
         (ms * 1e6);
}

}  // namespace

PeakGemm measure_peak_gemm(int64_t m, int64_t k, int64_t n, torch::ScalarType dtype, int threads,
                           int warmup, int iters) {
  TORCH_CHECK(m > 0 && k > 0 && n > 0, "peak GEMM: expected positive sizes, got m=", m, " k=", k,
              " n=", n);
  TORCH_CHECK(threads >= 1, "peak GEMM: expected threads >= 1, got ", threads);
  torch::NoGradGuard ng;
  auto a = torch::randn({m, k}, torch::dtype(dtype));  // [m, k]
  auto b = torch::randn({k, n}, torch::dtype(dtype));  // [k, n]
  auto c = torch::empty({m, n}, torch::dtype(dtype));  // [m, n]
  PeakGemm p;
  // (a) One GEMM on the threads in force.
  p.multithread_gflops = gflops(m, k, n, median_ms(warmup, iters, [&] { at::mm_out(c, a, b); }));

  // (b) One single-threaded GEMM per thread on its block of A's rows, all at once.
  p.per_core_measured = kernels::blas_threads_controllable();
  if (!p.per_core_measured) return p;
  kernels::SingleThreadedBlas single_blas;
  SingleIntraOpThread single_intra_op;
  std::vector<torch::Tensor> a_blocks, c_blocks;
  for (int t = 0; t < threads; ++t) {
    const int64_t lo = m * t / threads, hi = m * (t + 1) / threads;
    if (hi == lo) continue;
    a_blocks.push_back(a.narrow(0, lo, hi - lo));
    c_blocks.push_back(c.narrow(0, lo, hi - lo));
  }
  auto round = [&] {
    std::vector<std::exception_ptr> errors(a_blocks.size());
    std::vector<std::thread> pool;
    for (size_t t = 0; t < a_blocks.size(); ++t)
      pool.emplace_back([&, t] {
        try {
          torch::NoGradGuard guard;
          at::mm_out(c_blocks[t], a_blocks[t], b);
        } catch (...) {
          errors[t] = std::current_exception();
        }
      });
    for (auto& th : pool) th.join();
    for (auto& e : errors)
      if (e) std::rethrow_exception(e);
  };
  p.per_core_sum_gflops = gflops(m, k, n, median_ms(warmup, iters, round));
  return p;
}

}  // namespace hybridmoe::bench
