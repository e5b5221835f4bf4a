// bench_layer.h — `hmoe bench layer`: the single-process MoE layer against a dense MLP of the
// same FLOPs and against the sequential reference, timed side by side in one run.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace hybridmoe::bench {

struct LayerBenchArgs {
  int64_t tokens = 4096;
  int64_t d_model = 512;
  int64_t d_hidden = 2048;
  int64_t experts = 8;
  int64_t top_k = 2;
  std::string dtype = "float32";
  std::string gate = "topk";
  std::string activation = "gelu";
  double capacity_factor = 0.0;
  int iters = 5;
  int warmup = 1;
  int threads = 0;  ///< 0: all cores
  bool skip_naive = false;
  uint64_t seed = 0;
};

/// The shape and settings of a run, as the fields every layer benchmark record starts with.
nlohmann::json layer_args_json(const LayerBenchArgs& args);

/// Runs the benchmark and returns its JSON record.
nlohmann::json run_layer_bench(const LayerBenchArgs& args);

}  // namespace hybridmoe::bench
