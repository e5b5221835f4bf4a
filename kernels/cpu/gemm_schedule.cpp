// gemm_schedule.cpp — see gemm_schedule.h.
#include "gemm_schedule.h"

#include <algorithm>
#include <numeric>

#include <c10/util/Exception.h>

namespace hybridmoe::kernels {

std::vector<std::vector<RowPiece>> split_rows(const std::vector<int64_t>& counts, int64_t parts) {
  TORCH_CHECK(parts >= 1, "split_rows: parts >= 1 expected, got ", parts);
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  std::vector<std::vector<RowPiece>> runs(parts);
  int64_t segment = 0, segment_begin = 0;  // the segment holding global row `row`, and its start
  int64_t row = 0;
  for (int64_t p = 0; p < parts; ++p) {
    const int64_t run_end = row + total / parts + (p < total % parts ? 1 : 0);
    while (row < run_end) {
      while (segment_begin + counts[segment] <= row) segment_begin += counts[segment++];
      const int64_t end = std::min(run_end, segment_begin + counts[segment]);
      runs[p].push_back({segment, row, end - row});
      row = end;
    }
  }
  return runs;
}

std::vector<std::vector<SegmentPiece>> split_segments(const std::vector<int64_t>& counts,
                                                      int64_t cols, int64_t parts,
                                                      int64_t min_cols) {
  TORCH_CHECK(parts >= 1 && cols >= 1 && min_cols >= 1,
              "split_segments: parts, cols and min_cols >= 1 expected, got ", parts, ", ", cols,
              ", ", min_cols);
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  // 1. Pieces: each non-empty segment whole, or in blocks of result rows if it is large.
  std::vector<SegmentPiece> pieces;
  int64_t row = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    const int64_t n = counts[e];
    if (n > 0) {
      const int64_t share = (n * parts + total - 1) / total;  // ceil(n / (total / parts))
      const int64_t blocks = std::max<int64_t>(1, std::min(share, cols / min_cols));
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t begin = cols * b / blocks, end = cols * (b + 1) / blocks;
        pieces.push_back({static_cast<int64_t>(e), row, n, begin, end - begin});
      }
    }
    row += n;
  }
  // 2. Largest first, each to the least loaded worker (the lowest index among equals).
  std::stable_sort(pieces.begin(), pieces.end(), [](const SegmentPiece& a, const SegmentPiece& b) {
    return a.rows * a.cols > b.rows * b.cols;
  });
  std::vector<std::vector<SegmentPiece>> work(parts);
  std::vector<int64_t> load(parts, 0);
  for (const auto& piece : pieces) {
    const auto least = std::min_element(load.begin(), load.end()) - load.begin();
    work[least].push_back(piece);
    load[least] += piece.rows * piece.cols;
  }
  return work;
}

}  // namespace hybridmoe::kernels
