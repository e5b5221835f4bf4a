// bench_common.h — small helpers shared by the benchmarks: timing and peak memory.
#pragma once

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/collectives.h"

namespace hybridmoe::bench {

/// The median of v (0 when empty).
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

/// Every rank's value v, in group-rank order (collective over g). → [g.size()] float64.
inline torch::Tensor gather_value(double v, const dist::Group& g) {
  return dist::all_gather_rows(torch::tensor({v}, torch::kFloat64).view({1, 1}), g).view({-1});
}

/// Median wall time in milliseconds of `iters` calls of fn, after `warmup` untimed calls.
inline double median_ms(int warmup, int iters, const std::function<void()>& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    auto t1 = std::chrono::steady_clock::now();
    t.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t.empty() ? 0.0 : t[t.size() / 2];
}

/// Median wall times (ms) of several functions timed alternately, call by call, so that all see
/// the same machine noise; `warmup` untimed rounds first. One median per function, in order.
inline std::vector<double> interleaved_median_ms(int warmup, int iters,
                                                 const std::vector<std::function<void()>>& fns) {
  for (int i = 0; i < warmup; ++i)
    for (const auto& f : fns) f();
  std::vector<std::vector<double>> t(fns.size());
  for (int i = 0; i < iters; ++i)
    for (size_t f = 0; f < fns.size(); ++f) t[f].push_back(median_ms(0, 1, fns[f]));
  std::vector<double> medians;
  for (auto& v : t) medians.push_back(median(v));
  return medians;
}

/// Peak resident set size of this process so far, in MiB.
inline double peak_rss_mb() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

/// Minor page faults of this process so far (pages first touched: fresh buffers cost one each).
inline int64_t minor_faults() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_minflt);
}

}  // namespace hybridmoe::bench
