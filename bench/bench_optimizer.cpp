// bench_optimizer.cpp — `hmoe bench optimizer` (bench_optimizer.h). One process steps a stack of
// big matrices with ZeroAdamW, alternating the tiled and the untiled step on the same optimizer.
// Around each step: free memory is returned to the OS (malloc_trim), the kernel's peak-RSS mark
// is reset (writing 5 to /proc/self/clear_refs), and the step's added peak is VmHWM after it
// minus VmRSS before it. Reported: the largest added peak and the median time of each variant.
#include "bench_optimizer.h"

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "hybridmoe/cpu_runtime.h"
#include "hybridmoe/dist.h"
#include "hybridmoe/zero.h"

namespace hybridmoe::bench {
namespace {

struct Sample {
  double extra_mb = 0;
  double ms = 0;
};

Sample measure_step(ZeroAdamW& opt, double tile_mb) {
  opt.set_tile_mb(tile_mb);
  malloc_trim(0);
  TORCH_CHECK(reset_peak_resident_memory(),
              "bench optimizer: cannot write /proc/self/clear_refs to reset the peak resident "
              "memory (needed to measure the step's peak)");
  const ResidentMemory before = resident_memory();
  TORCH_CHECK(before.known, "bench optimizer: /proc/self/status reports no VmRSS / VmHWM");
  const auto t0 = std::chrono::steady_clock::now();
  opt.step();
  const auto t1 = std::chrono::steady_clock::now();
  const double peak = resident_memory().peak_mb;
  return {peak - before.current_mb, std::chrono::duration<double, std::milli>(t1 - t0).count()};
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

}  // namespace

nlohmann::json run_optimizer_bench(const OptimizerBenchArgs& a) {
  TORCH_CHECK(a.params_mb > 0 && a.matrices >= 1 && a.cols >= 1 && a.iters >= 1,
              "bench optimizer: expected params_mb > 0, matrices >= 1, cols >= 1, iters >= 1");
  TORCH_CHECK(a.tile_mb > 0, "bench optimizer: --tile-mb should be > 0, got ", a.tile_mb);
  TORCH_CHECK(a.dtype == "float32" || a.dtype == "bfloat16",
              "bench optimizer: --dtype should be float32 or bfloat16, got \"", a.dtype, "\"");
  if (a.threads > 0) at::set_num_threads(a.threads);
  const auto dtype = a.dtype == "float32" ? torch::kFloat32 : torch::kBFloat16;
  const int64_t elem = static_cast<int64_t>(c10::elementSize(dtype));
  const int64_t rows = std::max<int64_t>(
      1, static_cast<int64_t>(a.params_mb * 1048576.0 / static_cast<double>(elem * a.cols)) /
             a.matrices);

  // 1. A world of one, the matrices (tagged dp) and their gradients.
  auto world = dist::init();
  auto groups = std::make_shared<ParallelGroups>(ParallelGroups::build(ParallelConfig(), *world));
  ZeroAdamW::NamedTensors params;
  ZeroAdamW::Tags tags;
  for (int64_t i = 0; i < a.matrices; ++i) {
    auto w = (torch::randn({rows, a.cols}) * 0.02).to(dtype).set_requires_grad(true);
    w.mutable_grad() = (torch::randn({rows, a.cols}) * 1e-3).to(dtype);
    const std::string name = "layer" + std::to_string(i) + ".weight";
    params.emplace_back(name, w);
    tags[name] = GroupKind::kDp;
  }
  ZeroAdamW opt(params, tags, ZeroAdamW::decay_groups(params, AdamWHyper().lr(1e-4)), groups,
                ZeroAdamWOptions().zero_stage(1).tile_mb(a.tile_mb));
  int64_t state_bytes = 0;
  for (const auto& s : opt.spaces()) state_bytes += s.state_bytes;

  // 2. One warm-up step of each (first touch of the moments), then alternate the two.
  measure_step(opt, a.tile_mb);
  measure_step(opt, 0.0);
  std::vector<double> mem_t, mem_u, ms_t, ms_u;
  for (int i = 0; i < a.iters; ++i) {
    const bool tiled_first = i % 2 == 0;
    for (int k = 0; k < 2; ++k) {
      const bool tiled = (k == 0) == tiled_first;
      const Sample s = measure_step(opt, tiled ? a.tile_mb : 0.0);
      (tiled ? mem_t : mem_u).push_back(s.extra_mb);
      (tiled ? ms_t : ms_u).push_back(s.ms);
    }
  }
  world->finalize();

  const double peak_t = *std::max_element(mem_t.begin(), mem_t.end());
  const double peak_u = *std::max_element(mem_u.begin(), mem_u.end());
  const double step_t = median(ms_t), step_u = median(ms_u);
  const int64_t param_bytes = rows * a.cols * a.matrices * elem;
  return {{"bench", "optimizer"},
          {"dtype", a.dtype},
          {"params_mb", static_cast<double>(param_bytes) / 1048576.0},
          {"matrices", a.matrices},
          {"state_mb", static_cast<double>(state_bytes) / 1048576.0},
          {"threads", at::get_num_threads()},
          {"iters", a.iters},
          {"tile_mb", a.tile_mb},
          {"peak_extra_mb_tiled", peak_t},
          {"peak_extra_mb_untiled", peak_u},
          {"step_ms_tiled", step_t},
          {"step_ms_untiled", step_u},
          {"mem_target_met", peak_t <= 1.1 * a.tile_mb},
          {"time_target_met", step_t <= 1.1 * step_u}};
}

}  // namespace hybridmoe::bench
