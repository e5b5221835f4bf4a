// bench_optimizer.h — `hmoe bench optimizer`: the peak resident memory the ZeroAdamW step adds
// and its time, tiled and untiled, on a model of several hundred MB of parameters, in one run.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace hybridmoe::bench {

struct OptimizerBenchArgs {
  double params_mb = 256;  ///< total parameter bytes (MiB), split over `matrices` matrices
  int64_t matrices = 8;
  int64_t cols = 4096;
  double tile_mb = 16;
  std::string dtype = "float32";  ///< float32 | bfloat16 (float32 master copy)
  int iters = 5;                  ///< measured steps of each variant (interleaved)
  int threads = 1;                ///< intra-op threads
};

/// Runs the benchmark in this process and returns its JSON record.
nlohmann::json run_optimizer_bench(const OptimizerBenchArgs& args);

}  // namespace hybridmoe::bench
