// gemm_schedule_test.cpp — the division of grouped-GEMM work among threads: every row (or result
// row of every segment) assigned exactly once, runs balanced, large segments split, against a
// brute-force reference over a table of segment sizes and thread counts.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <tuple>

#include "kernels/cpu/gemm_schedule.h"

namespace hybridmoe::kernels {
namespace {

const std::vector<std::vector<int64_t>> kCountTable = {{},
                                                       {0},
                                                       {5},
                                                       {0, 0, 0},
                                                       {1, 0, 2},
                                                       {7, 3, 0, 9},
                                                       {1000, 1, 1},
                                                       {1, 1, 1000},
                                                       {64, 64, 64, 64, 64, 64, 64, 64},
                                                       {0, 513, 0, 511, 2, 0, 1}};

TEST(SplitRows, EveryRowOnceInOrderBalancedAndWithinSegments) {
  for (const auto& counts : kCountTable) {
    const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
    // Reference: the segment of every global row.
    std::vector<int64_t> segment_of;
    for (size_t e = 0; e < counts.size(); ++e) segment_of.insert(segment_of.end(), counts[e], e);
    for (int64_t parts : {1, 2, 3, 4, 8}) {
      const auto runs = split_rows(counts, parts);
      ASSERT_EQ(static_cast<int64_t>(runs.size()), parts);
      int64_t next = 0;
      for (int64_t p = 0; p < parts; ++p) {
        int64_t run_rows = 0;
        for (const auto& piece : runs[p]) {
          EXPECT_EQ(piece.row_begin, next) << "rows in order, none skipped";
          ASSERT_GT(piece.rows, 0) << "no empty pieces";
          for (int64_t r = piece.row_begin; r < piece.row_begin + piece.rows; ++r)
            EXPECT_EQ(segment_of[r], piece.segment) << "row " << r << " lies in its segment";
          next += piece.rows;
          run_rows += piece.rows;
        }
        // Balanced: total / parts rows, the first total % parts runs one more.
        EXPECT_EQ(run_rows, total / parts + (p < total % parts ? 1 : 0)) << "run " << p;
      }
      EXPECT_EQ(next, total);
    }
  }
}

TEST(SplitSegments, EveryResultRowOnceLargeSegmentsSplitLoadsBounded) {
  for (const auto& counts : kCountTable) {
    const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
    for (auto [cols, parts, min_cols] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {1, 1, 1}, {1, 4, 16}, {64, 2, 16}, {512, 2, 16}, {512, 8, 16}, {40, 3, 7}}) {
      const auto work = split_segments(counts, cols, parts, min_cols);
      ASSERT_EQ(static_cast<int64_t>(work.size()), parts);
      // Coverage: (segment, result row) -> times assigned.
      std::vector<std::vector<int>> seen(counts.size(), std::vector<int>(cols, 0));
      std::vector<int64_t> blocks(counts.size(), 0), row_begin(counts.size(), 0);
      for (size_t e = 1; e < counts.size(); ++e) row_begin[e] = row_begin[e - 1] + counts[e - 1];
      int64_t largest = 0, most_load = 0;
      for (const auto& list : work) {
        int64_t load = 0;
        for (const auto& p : list) {
          ASSERT_GE(p.segment, 0);
          ASSERT_LT(p.segment, static_cast<int64_t>(counts.size()));
          EXPECT_EQ(p.rows, counts[p.segment]);
          EXPECT_EQ(p.row_begin, row_begin[p.segment]);
          for (int64_t c = p.col_begin; c < p.col_begin + p.cols; ++c) ++seen[p.segment][c];
          ++blocks[p.segment];
          load += p.rows * p.cols;
          largest = std::max(largest, p.rows * p.cols);
        }
        most_load = std::max(most_load, load);
      }
      for (size_t e = 0; e < counts.size(); ++e) {
        for (int64_t c = 0; c < cols; ++c)
          EXPECT_EQ(seen[e][c], counts[e] > 0 ? 1 : 0) << "segment " << e << " result row " << c;
        if (counts[e] == 0) continue;
        // Blocks: ceil(rows / (total / parts)), at most cols / min_cols, at least 1.
        const int64_t want = std::max<int64_t>(
            1, std::min((counts[e] * parts + total - 1) / total, cols / min_cols));
        EXPECT_EQ(blocks[e], want) << "segment " << e << " of " << counts[e] << " rows";
      }
      // Longest-first to the least loaded: no worker exceeds the mean by more than one piece.
      EXPECT_LE(most_load, total * cols / parts + largest);
    }
  }
}

TEST(GemmSchedule, RefusesNonPositiveParts) {
  EXPECT_THROW(split_rows({1, 2}, 0), c10::Error);
  EXPECT_THROW(split_segments({1, 2}, 4, 0), c10::Error);
  EXPECT_THROW(split_segments({1, 2}, 0, 2), c10::Error);
}

}  // namespace
}  // namespace hybridmoe::kernels
