// bench_layer.h — `hmoe bench layer`: the single-process MoE layer against its yardsticks, measured
// side by side in one run: a dense MLP of the same FLOPs, the machine's GEMM peak, the padded-
// batched layer of GShard/Tutel and the sequential reference; and the layer's time by phase.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace hybridmoe::bench {

/// A named layer shape (`--shape`): "default" (4096 tokens, d 512, hidden 2048, 8 experts,
/// top-2) or "fine" (4096 tokens, d 512, hidden 256, 64 experts, top-8: many small experts).
struct LayerShape {
  int64_t tokens, d_model, d_hidden, experts, top_k;
};
LayerShape layer_shape(const std::string& name);

struct LayerBenchArgs {
  std::string shape = "default";  ///< the preset the sizes came from (explicit flags override)
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
  /// Zipf(alpha) expert popularity through a fixed router bias (bench_skew.h); 0: none.
  double skew = 0.0;
};

/// The shape and settings of a run, as the fields every layer benchmark record starts with.
nlohmann::json layer_args_json(const LayerBenchArgs& args);

/// Runs the benchmark and returns its JSON record.
nlohmann::json run_layer_bench(const LayerBenchArgs& args);

}  // namespace hybridmoe::bench
