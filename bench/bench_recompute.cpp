// bench_recompute.cpp — see bench_recompute.h.
#include "bench_recompute.h"

#include <malloc.h>

#include <chrono>
#include <vector>

#include <torch/torch.h>

#include "bench_common.h"
#include "hybridmoe/collectives.h"
#include "hybridmoe/comm_stats.h"
#include "hybridmoe/model.h"

namespace hybridmoe::bench {
namespace {

// Bytes of the heap in use (small-block arenas and mmapped blocks).
double heap_mb() {
  const struct mallinfo2 mi = mallinfo2();
  return static_cast<double>(mi.uordblks + mi.hblkhd) / (1024.0 * 1024.0);
}

struct Variant {
  Variant(Recompute m, bool c) : mode(m), cache(c) {}
  Recompute mode;
  bool cache;
  std::vector<double> ms;
  double activation_mb = 0.0;
  std::map<std::string, dist::OpStats> comm;  // of one step
};

}  // namespace

nlohmann::json run_recompute_bench(const RecomputeBenchArgs& a, const ParallelConfig& layout,
                                   dist::World& world) {
  TORCH_CHECK(a.batch > 0 && a.seq > 0 && a.iters > 0 && a.warmup >= 0,
              "bench recompute: --batch, --seq and --iters must be > 0, got ", a.batch, ", ", a.seq,
              ", ", a.iters);
  layout.validate(world.size());
  TORCH_CHECK(layout.pp == 1, "bench recompute: pipeline stages are not part of this benchmark");
  auto groups = std::make_shared<ParallelGroups>(ParallelGroups::build(layout, world));
  GateOptions gate;
  gate.top_k(a.top_k).aux_loss_coef(0.01);
  auto opts = GPTOptions()
                  .context(a.seq)
                  .d_model(a.d_model)
                  .n_layers(a.layers)
                  .n_heads(a.heads)
                  .moe_every(a.moe_every)
                  .num_experts(a.experts)
                  .gate(gate);
  // 1. The model from one seed (every rank builds the same full model and keeps its shard).
  torch::manual_seed(1);
  GPT full(opts);
  GPT model(opts, groups);
  model->load_shard_from(*full);
  full = nullptr;
  const auto c = groups->coords();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(100 + c.dp);
  auto tokens = torch::randint(0, 256, {a.batch, a.seq}, gen, torch::kInt64);
  auto targets = torch::randint(0, 256, {a.batch, a.seq}, gen, torch::kInt64);
  std::vector<Variant> variants = {{Recompute::kNone, true},
                                   {Recompute::kMoE, true},
                                   {Recompute::kMoE, false},
                                   {Recompute::kBlock, true},
                                   {Recompute::kBlock, false}};
  // 2. One step: forward (activation memory measured at its end), backward.
  auto step = [&](Variant& v, bool measure) {
    model->set_recompute(v.mode, v.cache);
    model->zero_grad();
    dist::barrier(groups->world);
    dist::reset_comm_stats();
    const double before = heap_mb();
    const auto t0 = std::chrono::steady_clock::now();
    auto out = model->forward(tokens);
    auto loss = lm_loss(out.logits, targets) + out.aux_loss;
    const double kept = heap_mb() - before;
    loss.backward();
    const auto t1 = std::chrono::steady_clock::now();
    if (measure) {
      v.ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      v.activation_mb = kept;
      v.comm = dist::comm_stats();
    }
  };
  for (int i = 0; i < a.warmup; ++i)
    for (auto& v : variants) step(v, false);
  for (int i = 0; i < a.iters; ++i)
    for (auto& v : variants) step(v, true);
  // 3. The record: slowest rank's median step, rank 0's counts, mean activation memory.
  nlohmann::json j;
  j["bench"] = "recompute";
  j["layout"] = layout.to_string();
  j["world"] = world.size();
  j["shape"] = {{"batch_per_dp_rank", a.batch}, {"seq", a.seq},         {"d_model", a.d_model},
                {"layers", a.layers},           {"experts", a.experts}, {"top_k", a.top_k},
                {"moe_every", a.moe_every}};
  nlohmann::json rows = nlohmann::json::array();
  for (auto& v : variants) {
    const double slowest = gather_value(median(v.ms), groups->world).max().item<double>();
    const double act = gather_value(v.activation_mb, groups->world).mean().item<double>();
    const dist::OpStats all = dist::total_of(v.comm);
    const dist::OpStats a2a = dist::total_of(v.comm, dist::is_token_exchange);
    rows.push_back({{"recompute", recompute_name(v.mode)},
                    {"cache_comm", v.cache},
                    {"step_ms", slowest},
                    {"a2a_calls_per_step", a2a.calls},
                    {"a2a_mb_per_step", static_cast<double>(a2a.bytes_sent) / (1024.0 * 1024.0)},
                    {"comm_calls_per_step", all.calls},
                    {"comm_mb_per_step", static_cast<double>(all.bytes_sent) / (1024.0 * 1024.0)},
                    {"activation_mb", act}});
  }
  j["variants"] = rows;
  return j;
}

}  // namespace hybridmoe::bench
