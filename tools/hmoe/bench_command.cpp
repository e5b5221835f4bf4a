// bench_command.cpp — `hmoe bench <what>`: benchmarks that print one JSON object per line.
#include <iostream>
#include <memory>
#include <sstream>
#include <vector>

#include "bench_layer.h"
#include "bench_layer_dist.h"
#include "bench_optimizer.h"
#include "bench_recompute.h"
#include "hmoe/commands.h"
#include "hybridmoe/collectives.h"

namespace hybridmoe::cli {

namespace {

// --layout tp,dp,ep,etp; empty: dp = ep = world (pure expert + data parallel).
ParallelConfig parse_layout_arg(const std::string& text, int64_t world) {
  ParallelConfig c;
  c.dp = world;
  c.ep = world;
  if (text.empty()) return c;
  std::vector<int64_t> v;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(std::stoll(item));
  TORCH_CHECK(v.size() == 4, "--layout: expected tp,dp,ep,etp, got \"", text, "\"");
  c.tp = v[0];
  c.dp = v[1];
  c.ep = v[2];
  c.etp = v[3];
  return c;
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Benchmarks; each prints one JSON line");
  bench->require_subcommand(1);
  add_bench_a2a_command(bench);

  auto args = std::make_shared<bench::LayerBenchArgs>();
  auto* layer = bench->add_subcommand("layer",
                                      "MoE layer vs its yardsticks: a dense MLP of equal FLOPs, "
                                      "the machine's GEMM peak, the padded-batched layer "
                                      "(GShard/Tutel) and the sequential reference; with its time "
                                      "by phase");
  layer
      ->add_option("--shape", args->shape,
                   "Size preset: default (4096 tokens, d 512, hidden 2048, 8 experts, top-2) | "
                   "fine (4096 tokens, d 512, hidden 256, 64 experts, top-8); the size flags "
                   "below override it")
      ->check(CLI::IsMember({"default", "fine"}))
      ->capture_default_str();
  // The size flags; those given explicitly override the --shape preset (applied in the callback).
  struct SizeFlag {
    CLI::Option* option;
    int64_t* value;
    int64_t bench::LayerShape::*preset;
  };
  std::vector<SizeFlag> sizes;
  auto size_flag = [&](const char* name, int64_t& value, int64_t bench::LayerShape::*preset,
                       const std::string& help) {
    sizes.push_back(
        {layer->add_option(name, value, help + " (default: the shape's)"), &value, preset});
  };
  size_flag("--tokens", args->tokens, &bench::LayerShape::tokens, "Tokens per step");
  size_flag("--d-model", args->d_model, &bench::LayerShape::d_model, "Model width");
  size_flag("--d-hidden", args->d_hidden, &bench::LayerShape::d_hidden, "Expert hidden width");
  size_flag("--experts", args->experts, &bench::LayerShape::experts, "Number of experts");
  size_flag("--top-k", args->top_k, &bench::LayerShape::top_k, "Experts per token");
  layer->add_option("--dtype", args->dtype, "float32 | float64 | bfloat16")->capture_default_str();
  layer->add_option("--gate", args->gate, "Gate name")->capture_default_str();
  layer->add_option("--activation", args->activation, "gelu | relu | swiglu")
      ->capture_default_str();
  layer
      ->add_option("--capacity-factor", args->capacity_factor,
                   "0: dropless; < 0: dynamic (the largest per-expert count, bounded by |f|)")
      ->capture_default_str();
  layer
      ->add_option("--skew", args->skew,
                   "Zipf(ALPHA) expert popularity through a fixed router bias (topk gate); 0: "
                   "none")
      ->capture_default_str();
  layer->add_option("--iters", args->iters, "Timed iterations (median reported)")
      ->capture_default_str();
  layer->add_option("--warmup", args->warmup, "Untimed iterations first")->capture_default_str();
  layer->add_option("--threads", args->threads, "Intra-op threads (0: all cores)")
      ->capture_default_str();
  layer->add_flag("--skip-naive", args->skip_naive, "Do not time the sequential reference");
  layer->add_option("--seed", args->seed, "Random seed")->capture_default_str();
  auto nproc = std::make_shared<int64_t>(1);
  auto layout = std::make_shared<std::string>("");
  layer->add_option("--nproc", *nproc, "Local ranks (> 1: the distributed layer)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  layer->add_option("--layout", *layout,
                    "tp,dp,ep,etp of the distributed run (default: dp=nproc, "
                    "ep=nproc)");
  auto sweeps = std::make_shared<bench::DistLayerBenchOptions>();
  auto degrees = std::make_shared<std::string>("1,2,4");
  layer
      ->add_option("--overlap-degrees", *degrees,
                   "a2a_overlap_degree values compared with --nproc > 1 (ep > 1); "
                   "empty: none")
      ->capture_default_str();
  layer
      ->add_option("--adaptive", sweeps->adaptive,
                   "With --nproc > 1: also time the adaptive expert layout at every valid r")
      ->capture_default_str();
  layer
      ->add_option("--a2a-algorithms", sweeps->a2a_algorithms,
                   "With --nproc > 1: time a2a_algorithm flat and hierarchical where the ep group "
                   "spans nodes (step time, bytes and messages across nodes)")
      ->capture_default_str();
  layer
      ->add_option("--ranks-per-node", sweeps->ranks_per_node,
                   "Ranks per node of the layer's groups (0: the launcher's LOCAL_WORLD_SIZE); "
                   "one host can play several nodes")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  add_node_flags(layer);
  auto replicate = std::make_shared<std::string>("");
  layer->add_option("--replicate", *replicate,
                    "With --nproc > 1 (ep > 1): hot-expert replication settings timed "
                    "against each other, e.g. off,auto,2");
  layer->add_option_function<std::string>(
      "--replicate-placement",
      [sweeps](const std::string& text) {
        sweeps->placements.clear();
        std::stringstream ps(text);
        std::string item;
        try {
          while (std::getline(ps, item, ','))
            if (!item.empty()) sweeps->placements.push_back(parse_replicate_placement(item));
        } catch (const c10::Error& e) {
          throw CLI::ValidationError("--replicate-placement", e.what_without_backtrace());
        }
        if (sweeps->placements.empty())
          throw CLI::ValidationError("--replicate-placement", "needs source, spread or both");
      },
      "With --replicate: where replicated experts' rows are computed, each timed: source (where "
      "routed, FasterMoE; the default), spread (evenly over ep), or source,spread");
  auto cluster_flops = std::make_shared<double>(0.0), cluster_bw = std::make_shared<double>(0.0);
  layer->add_option("--cluster-flops", *cluster_flops,
                    "With --replicate: also the cost model's prediction for a cluster of this "
                    "GEMM FLOP/s per rank (with --cluster-bw)");
  layer->add_option("--cluster-bw", *cluster_bw,
                    "With --replicate: the cluster's all-to-all and all-gather bytes/s per rank "
                    "(latency 10 us)");
  layer->callback(
      [args, nproc, layout, sweeps, degrees, sizes, replicate, cluster_flops, cluster_bw] {
        const bench::LayerShape preset = bench::layer_shape(args->shape);
        for (const auto& f : sizes)
          if (f.option->count() == 0) *f.value = preset.*(f.preset);
        const bool in_launcher = std::getenv("RANK") != nullptr;
        if (*nproc <= 1 && !in_launcher && !replicate->empty())
          throw CLI::ValidationError("--replicate",
                                     "replicates experts over ep ranks: needs --nproc > 1");
        if (*nproc <= 1 && !in_launcher) {
          std::cout << bench::run_layer_bench(*args).dump() << std::endl;
          return;
        }
        // Under a launcher: this rank's part; else re-launch this command on this node's ranks
        // (node flags).
        const int code = run_here_or_on_local_ranks(*nproc, [&] {
          auto world = dist::init();
          const ParallelConfig c = parse_layout_arg(*layout, world->size());
          sweeps->overlap_degrees.clear();
          std::stringstream ds(*degrees);
          std::string item;
          while (std::getline(ds, item, ','))
            if (!item.empty()) sweeps->overlap_degrees.push_back(std::stoll(item));
          std::stringstream rs(*replicate);
          sweeps->replicate.clear();
          while (std::getline(rs, item, ','))
            if (!item.empty()) {
              parse_replicate(item);  // an unknown setting is an error naming it
              sweeps->replicate.push_back(item);
            }
          if (*cluster_flops > 0 || *cluster_bw > 0) {
            if (*cluster_flops <= 0 || *cluster_bw <= 0)
              throw CLI::ValidationError("--cluster-flops",
                                         "needs both --cluster-flops and --cluster-bw");
            sweeps->cluster = ReplicateFigures()
                                  .gemm_flops(*cluster_flops)
                                  .a2a_bytes_per_s(*cluster_bw)
                                  .gather_bytes_per_s(*cluster_bw)
                                  .a2a_latency_s(1e-5)
                                  .gather_latency_s(1e-5);
          }
          auto j = bench::run_layer_bench_distributed(*args, c, *world, *sweeps);
          if (world->rank() == 0) std::cout << j.dump() << std::endl;
          world->finalize();
          return 0;
        });
        if (code != 0) throw CLI::RuntimeError(code);
      });

  // `hmoe bench optimizer`: the ZeroAdamW step's peak extra memory and time, tiled vs untiled.
  auto oargs = std::make_shared<bench::OptimizerBenchArgs>();
  auto* optim = bench->add_subcommand("optimizer",
                                      "Peak extra resident memory and time of the optimizer "
                                      "step, tiled vs untiled");
  optim->add_option("--params-mb", oargs->params_mb, "Parameter MiB")->capture_default_str();
  optim->add_option("--matrices", oargs->matrices, "Parameter matrices")->capture_default_str();
  optim->add_option("--tile-mb", oargs->tile_mb, "Tile of the step's temporaries (MiB)")
      ->capture_default_str();
  optim->add_option("--dtype", oargs->dtype, "float32 | bfloat16 (float32 master)")
      ->capture_default_str();
  optim->add_option("--iters", oargs->iters, "Measured steps of each variant")
      ->capture_default_str();
  optim->add_option("--threads", oargs->threads, "Intra-op threads (0: all cores)")
      ->capture_default_str();
  optim->callback([oargs] { std::cout << bench::run_optimizer_bench(*oargs).dump() << std::endl; });

  // `hmoe bench recompute`: recompute modes with and without the communication cache.
  auto rargs = std::make_shared<bench::RecomputeBenchArgs>();
  auto rnproc = std::make_shared<int64_t>(4);
  auto rlayout = std::make_shared<std::string>("");
  auto* rec = bench->add_subcommand("recompute",
                                    "All-to-all calls and bytes, activation memory and step time "
                                    "per recompute mode, with and without the communication cache");
  rec->add_option("--nproc", *rnproc, "Local ranks")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  rec->add_option("--layout", *rlayout, "tp,dp,ep,etp (default: dp=nproc, ep=nproc)");
  rec->add_option("--batch", rargs->batch, "Sequences per data-parallel rank")
      ->capture_default_str();
  rec->add_option("--seq", rargs->seq, "Tokens per sequence")->capture_default_str();
  rec->add_option("--d-model", rargs->d_model, "Model width")->capture_default_str();
  rec->add_option("--layers", rargs->layers, "Transformer blocks")->capture_default_str();
  rec->add_option("--heads", rargs->heads, "Attention heads")->capture_default_str();
  rec->add_option("--experts", rargs->experts, "Experts per MoE layer")->capture_default_str();
  rec->add_option("--top-k", rargs->top_k, "Experts per token")->capture_default_str();
  rec->add_option("--moe-every", rargs->moe_every, "An MoE layer every N blocks")
      ->capture_default_str();
  rec->add_option("--iters", rargs->iters, "Timed steps per variant")->capture_default_str();
  rec->add_option("--warmup", rargs->warmup, "Untimed steps per variant first")
      ->capture_default_str();
  add_node_flags(rec);
  rec->callback([rargs, rnproc, rlayout] {
    const int code = run_here_or_on_local_ranks(*rnproc, [&] {
      auto world = dist::init();
      at::set_num_threads(1);
      auto j =
          bench::run_recompute_bench(*rargs, parse_layout_arg(*rlayout, world->size()), *world);
      if (world->rank() == 0) std::cout << j.dump() << std::endl;
      world->finalize();
      return 0;
    });
    if (code != 0) throw CLI::RuntimeError(code);
  });
}

}  // namespace hybridmoe::cli
