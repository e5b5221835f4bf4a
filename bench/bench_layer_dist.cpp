// bench_layer_dist.cpp — see bench_layer_dist.h.
#include "bench_layer_dist.h"

#include <torch/torch.h>

#include "bench_common.h"
#include "hybridmoe/collectives.h"
#include "hybridmoe/comm_stats.h"
#include "hybridmoe/moe.h"

namespace hybridmoe::bench {

namespace {
// Gathers one value from every rank of `g`.
torch::Tensor gather_value(double v, const dist::Group& g) {
  return dist::all_gather_rows(torch::tensor({v}, torch::kFloat64).view({1, 1}), g).view({-1});
}
}  // namespace

nlohmann::json run_layer_bench_distributed(const LayerBenchArgs& a, const ParallelConfig& layout,
                                           dist::World& world) {
  layout.validate(world.size());
  TORCH_CHECK(layout.world_size() == world.size(), "bench layer: layout ", layout.to_string(),
              " needs ", layout.world_size(), " ranks, launched ", world.size());
  TORCH_CHECK(a.tokens % layout.dp == 0, "bench layer: --tokens ", a.tokens,
              " must be divisible by dp=", layout.dp);
  at::set_num_threads(a.threads > 0 ? a.threads : 1);
  auto groups = std::make_shared<ParallelGroups>(ParallelGroups::build(layout, world));
  const auto dtype = a.dtype == "float64" ? torch::kFloat64 : torch::kFloat32;
  auto opts = MoEOptions(a.d_model, a.experts)
                  .d_hidden(a.d_hidden)
                  .top_k(a.top_k)
                  .activation(parse_activation(a.activation))
                  .capacity_factor(a.capacity_factor)
                  .gate_type(a.gate);
  torch::manual_seed(a.seed);
  MoE full(opts);
  MoE moe(opts, groups);
  moe->load_shard_from(*full);
  moe->to(dtype);
  const int64_t local_tokens = a.tokens / layout.dp;
  auto x = torch::randn({local_tokens, a.d_model}, torch::dtype(dtype)).requires_grad_(true);
  auto step = [&] {
    auto out = moe->forward(x);
    (out.output.sum() + out.aux_loss).backward();
  };
  // 1. Distributed steps: time per step and the collectives inside it.
  for (int i = 0; i < a.warmup; ++i) step();
  dist::barrier(groups->world);
  dist::reset_comm_stats();
  const double step_ms = median_ms(0, a.iters, step);
  auto stats = dist::comm_stats();
  nlohmann::json comm = nlohmann::json::object();
  double comm_ms = 0.0, a2a_ms = 0.0, bytes = 0.0, a2a_bytes = 0.0;
  for (const auto& [op, s] : stats) {
    const double ms = 1e3 * s.seconds / a.iters;
    comm_ms += ms;
    bytes += static_cast<double>(s.bytes_sent) / a.iters;
    if (op.find("all_to_all") != std::string::npos) {
      a2a_ms += ms;
      a2a_bytes += static_cast<double>(s.bytes_sent) / a.iters;
    }
  }
  // 2. Across ranks: the slowest step, mean communication time, total bytes.
  auto steps = gather_value(step_ms, groups->world);
  auto a2a = gather_value(a2a_ms, groups->world);
  auto comms = gather_value(comm_ms, groups->world);
  auto a2a_b = gather_value(a2a_bytes, groups->world);
  auto all_b = gather_value(bytes, groups->world);
  for (const auto& [op, s] : stats)
    comm[op] = {{"calls_per_step", static_cast<double>(s.calls) / a.iters},
                {"ms_per_step", 1e3 * s.seconds / a.iters},
                {"bytes_per_step", static_cast<double>(s.bytes_sent) / a.iters}};
  // 3. The single-process time of the same global step, on rank 0 with the same threads.
  double single_ms = 0.0;
  if (world.rank() == 0 && !a.skip_naive) {
    full->to(dtype);
    auto xg = torch::randn({a.tokens, a.d_model}, torch::dtype(dtype)).requires_grad_(true);
    single_ms = median_ms(a.warmup, a.iters, [&] {
      auto out = full->forward(xg);
      (out.output.sum() + out.aux_loss).backward();
    });
  }
  dist::barrier(groups->world);
  nlohmann::json j = layer_args_json(a);
  j["bench"] = "layer_distributed";
  j["layout"] = {{"tp", layout.tp},
                 {"dp", layout.dp},
                 {"pp", layout.pp},
                 {"ep", layout.ep},
                 {"etp", layout.etp}};
  j["ranks"] = world.size();
  j["threads_per_rank"] = at::get_num_threads();
  j["fwd_bwd_ms"] = steps.max().item<double>();
  j["a2a_ms"] = a2a.mean().item<double>();
  j["comm_ms"] = comms.mean().item<double>();
  j["comm_share"] = comms.mean().item<double>() / steps.max().item<double>();
  j["a2a_bytes_per_step"] = a2a_b.sum().item<double>();
  j["comm_bytes_per_step"] = all_b.sum().item<double>();
  j["rank0_collectives"] = comm;
  if (!a.skip_naive) j["single_process_fwd_bwd_ms"] = single_ms;
  j["peak_rss_mb_rank0"] = peak_rss_mb();
  return j;
}

}  // namespace hybridmoe::bench
