// grouped_gemm.cpp — see grouped_gemm.h. On the CPU with several intra-op threads, the segments'
// products run side by side, one single-threaded BLAS call per piece (gemm_schedule.h), instead
// of one multi-threaded BLAS call per expert: small experts then use every core, and BLAS's own
// threads never compete with ATen's. Elsewhere (one thread, other devices, inside a parallel
// region, a BLAS whose threads cannot be set) the segments run one after another.
#include "grouped_gemm.h"

#include <algorithm>

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include "blas_threads.h"
#include "gemm_schedule.h"

namespace hybridmoe::kernels {

namespace {

void check_counts(const torch::Tensor& a, const std::vector<int64_t>& counts, const char* what) {
  int64_t total = 0;
  for (auto c : counts) {
    TORCH_CHECK(c >= 0, what, ": segment sizes must be >= 0, got ", c);
    total += c;
  }
  TORCH_CHECK(total == a.size(0), what, ": segment sizes sum to ", total, " but there are ",
              a.size(0), " rows");
}

// Below this many multiply-adds a product is not worth sharing out among threads.
constexpr int64_t kMinParallelMacs = int64_t{1} << 20;

// How many workers share a product of `macs` multiply-adds on tensor `t`: the intra-op threads on
// the CPU outside a parallel region where BLAS can be made single-threaded, else 1.
int64_t workers_for(const torch::Tensor& t, int64_t macs) {
  if (!t.device().is_cpu() || at::in_parallel_region() || macs < kMinParallelMacs) return 1;
  const int64_t threads = at::get_num_threads();
  return threads > 1 && blas_threads_controllable() ? threads : 1;
}

// Runs fn(worker) for worker in [0, workers) on the intra-op threads, BLAS single-threaded, each
// thread under the caller's thread-local state (grad mode, dispatch keys), which at::parallel_for
// does not carry over by itself.
template <typename Fn>
void on_workers(int64_t workers, const Fn& fn) {
  SingleThreadedBlas single;
  const at::ThreadLocalState caller;
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    at::ThreadLocalStateGuard same_state(caller);
    for (int64_t w = begin; w < end; ++w) fn(w);
  });
}

// Runs piece(p) for every piece of a schedule (split_rows or split_segments: one list per
// worker), on the calling thread when there is one worker.
template <typename Pieces, typename Fn>
void run_pieces(const std::vector<Pieces>& work, const Fn& piece) {
  if (work.size() == 1) {
    for (const auto& p : work[0]) piece(p);
    return;
  }
  on_workers(static_cast<int64_t>(work.size()), [&](int64_t w) {
    for (const auto& p : work[w]) piece(p);
  });
}

}  // namespace

void grouped_mm(const torch::Tensor& a, const torch::Tensor& b, const std::vector<int64_t>& counts,
                bool trans_b, const torch::Tensor& bias, torch::Tensor& out, bool accumulate) {
  check_counts(a, counts, "grouped_mm");
  TORCH_CHECK(b.dim() == 3 && b.size(0) == static_cast<int64_t>(counts.size()),
              "grouped_mm: b must be [", counts.size(), ", ., .], got ", b.sizes());
  // out[rows] (+)= a[rows] @ op(b[e]) (+ bias[e]) for one piece of segment e.
  auto piece = [&](const RowPiece& p) {
    const int64_t e = p.segment;
    auto a_e = a.narrow(0, p.row_begin, p.rows);
    auto b_e = trans_b ? b[e].t() : b[e];
    auto out_e = out.narrow(0, p.row_begin, p.rows);
    if (accumulate) {
      out_e.addmm_(a_e, b_e);
      if (bias.defined()) out_e.add_(bias[e]);
    } else if (bias.defined()) {
      at::addmm_out(out_e, bias[e], a_e, b_e);
    } else {
      at::mm_out(out_e, a_e, b_e);
    }
  };
  run_pieces(split_rows(counts, workers_for(a, a.size(0) * b.size(1) * b.size(2))), piece);
}

torch::Tensor grouped_mm_tn(const torch::Tensor& a, const torch::Tensor& c,
                            const std::vector<int64_t>& counts) {
  check_counts(a, counts, "grouped_mm_tn");
  const int64_t E = static_cast<int64_t>(counts.size()), K = a.size(1);
  auto result = torch::empty({E, K, c.size(1)}, a.options());
  for (int64_t e = 0; e < E; ++e) {
    if (counts[e] == 0) result[e].zero_();
  }
  // result[e][cols] = a[seg_e][:, cols]^T @ c[seg_e] for one piece.
  auto piece = [&](const SegmentPiece& p) {
    auto r = result[p.segment].narrow(0, p.col_begin, p.cols);
    at::mm_out(r, a.narrow(0, p.row_begin, p.rows).narrow(1, p.col_begin, p.cols).t(),
               c.narrow(0, p.row_begin, p.rows));
  };
  run_pieces(split_segments(counts, K, workers_for(a, a.size(0) * K * c.size(1))), piece);
  return result;
}

torch::Tensor segment_sum(const torch::Tensor& c, const std::vector<int64_t>& counts) {
  check_counts(c, counts, "segment_sum");
  TORCH_CHECK(c.dim() == 2, "segment_sum: c must be [A, N], got ", c.sizes());
  const int64_t E = static_cast<int64_t>(counts.size()), N = c.size(1);
  auto result = torch::zeros({E, N}, c.options());
  if (N == 0) return result;
  // Column sums as a matrix-vector product with ones (BLAS gemv): about 10x faster on the CPU
  // than a reduction over the outer dimension of a row-major segment.
  const bool gemv = c.scalar_type() == torch::kFloat || c.scalar_type() == torch::kDouble;
  const int64_t most = counts.empty() ? 0 : *std::max_element(counts.begin(), counts.end());
  const auto ones = gemv ? torch::ones({most}, c.options()) : torch::Tensor();
  auto piece = [&](const SegmentPiece& p) {
    auto r = result[p.segment].narrow(0, p.col_begin, p.cols);
    auto seg = c.narrow(0, p.row_begin, p.rows).narrow(1, p.col_begin, p.cols);
    if (gemv) {
      at::mv_out(r, seg.t(), ones.narrow(0, 0, p.rows));
    } else {
      at::sum_out(r, seg, {0});
    }
  };
  run_pieces(split_segments(counts, N, gemv ? workers_for(c, c.size(0) * N) : 1), piece);
  return result;
}

}  // namespace hybridmoe::kernels
