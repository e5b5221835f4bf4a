// bench_command.cpp — `hmoe bench <what>`: benchmarks that print one JSON object per line.
#include <iostream>
#include <memory>

#include "bench_layer.h"
#include "hmoe/commands.h"

namespace hybridmoe::cli {

void add_bench_command(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Benchmarks; each prints one JSON line");
  bench->require_subcommand(1);

  auto args = std::make_shared<bench::LayerBenchArgs>();
  auto* layer = bench->add_subcommand("layer", "MoE layer vs a dense MLP of equal FLOPs and vs "
                                               "the sequential reference");
  layer->add_option("--tokens", args->tokens, "Tokens per step")->capture_default_str();
  layer->add_option("--d-model", args->d_model, "Model width")->capture_default_str();
  layer->add_option("--d-hidden", args->d_hidden, "Expert hidden width")->capture_default_str();
  layer->add_option("--experts", args->experts, "Number of experts")->capture_default_str();
  layer->add_option("--top-k", args->top_k, "Experts per token")->capture_default_str();
  layer->add_option("--dtype", args->dtype, "float32 | float64 | bfloat16")->capture_default_str();
  layer->add_option("--gate", args->gate, "Gate name")->capture_default_str();
  layer->add_option("--activation", args->activation, "gelu | relu | swiglu")->capture_default_str();
  layer->add_option("--capacity-factor", args->capacity_factor, "<= 0: dropless")
      ->capture_default_str();
  layer->add_option("--iters", args->iters, "Timed iterations (median reported)")
      ->capture_default_str();
  layer->add_option("--warmup", args->warmup, "Untimed iterations first")->capture_default_str();
  layer->add_option("--threads", args->threads, "Intra-op threads (0: all cores)")
      ->capture_default_str();
  layer->add_flag("--skip-naive", args->skip_naive, "Do not time the sequential reference");
  layer->add_option("--seed", args->seed, "Random seed")->capture_default_str();
  layer->callback([args] { std::cout << bench::run_layer_bench(*args).dump() << std::endl; });
}

}  // namespace hybridmoe::cli
