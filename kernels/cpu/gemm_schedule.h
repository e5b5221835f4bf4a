// gemm_schedule.h — how the grouped GEMMs' work is divided among CPU threads, as plain data so it
// can be tested on its own. Two shapes of work:
//  * row products (out[seg] = a[seg] @ b[e]): a row's result needs only that row, so the rows of
//    all segments, laid end to end, are cut into runs of nearly equal length — many small experts
//    are shared out whole, one large expert is split by rows;
//  * per-segment reductions over rows (dw[e] = a[seg]^T c[seg], segment sums): a result is a sum
//    over all of a segment's rows, so work is shared out by segment and, where there are fewer
//    segments than threads, by blocks of result rows, longest first to the least loaded thread.
#pragma once

#include <cstdint>
#include <vector>

namespace hybridmoe::kernels {

/// Rows [row_begin, row_begin + rows) of the global row order, all in segment `segment`.
struct RowPiece {
  int64_t segment;
  int64_t row_begin;
  int64_t rows;
};

/// Cuts the rows of the segments (counts[e] rows each, laid end to end) into `parts` runs of
/// sum(counts) / parts rows (the first runs one row longer where it does not divide), each run a
/// list of pieces in row order. Empty segments appear in no piece. parts: >= 1.
std::vector<std::vector<RowPiece>> split_rows(const std::vector<int64_t>& counts, int64_t parts);

/// Of segment `segment` (rows [row_begin, row_begin + rows)), the result rows
/// [col_begin, col_begin + cols).
struct SegmentPiece {
  int64_t segment;
  int64_t row_begin;
  int64_t rows;
  int64_t col_begin;
  int64_t cols;
};

/// Shares the non-empty segments' reductions among `parts` workers, each result having `cols`
/// rows: a segment with more than its share of all rows (sum(counts) / parts) is split into that
/// many blocks of result rows (at least `min_cols` each); pieces go, largest first (cost = rows x
/// cols; ties by position), to the least loaded worker. parts, cols, min_cols: >= 1.
std::vector<std::vector<SegmentPiece>> split_segments(const std::vector<int64_t>& counts,
                                                      int64_t cols, int64_t parts,
                                                      int64_t min_cols = 16);

}  // namespace hybridmoe::kernels
