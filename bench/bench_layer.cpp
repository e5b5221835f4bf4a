// bench_layer.cpp — see bench_layer.h.
#include "bench_layer.h"
#include "bench_skew.h"

#include <thread>
#include <tuple>
#include <vector>

#include <torch/torch.h>

#include "bench_common.h"
#include "hybridmoe/moe.h"
#include "layer_breakdown.h"
#include "padded_moe.h"
#include "peak_gemm.h"

namespace hybridmoe::bench {

namespace {
torch::ScalarType parse_dtype(const std::string& s) {
  if (s == "float32") return torch::kFloat32;
  if (s == "float64") return torch::kFloat64;
  if (s == "bfloat16") return torch::kBFloat16;
  TORCH_CHECK(false, "--dtype: expected float32, float64 or bfloat16, got \"", s, "\"");
}
}  // namespace

LayerShape layer_shape(const std::string& name) {
  if (name == "default") return {4096, 512, 2048, 8, 2};
  if (name == "fine") return {4096, 512, 256, 64, 8};
  TORCH_CHECK(false, "--shape: expected default or fine, got \"", name, "\"");
}

nlohmann::json layer_args_json(const LayerBenchArgs& a) {
  return {{"shape", a.shape},
          {"tokens", a.tokens},
          {"d_model", a.d_model},
          {"d_hidden", a.d_hidden},
          {"experts", a.experts},
          {"top_k", a.top_k},
          {"dtype", a.dtype},
          {"gate", a.gate},
          {"activation", a.activation},
          {"capacity_factor", a.capacity_factor},
          {"skew", a.skew},
          {"iters", a.iters}};
}

nlohmann::json run_layer_bench(const LayerBenchArgs& a) {
  TORCH_CHECK(a.iters >= 1, "--iters must be >= 1, got ", a.iters);
  const int threads =
      a.threads > 0 ? a.threads : static_cast<int>(std::thread::hardware_concurrency());
  at::set_num_threads(threads);
  torch::manual_seed(a.seed);
  const auto dtype = parse_dtype(a.dtype);
  const auto act = parse_activation(a.activation);

  auto opts = with_skew(MoEOptions(a.d_model, a.experts)
                            .d_hidden(a.d_hidden)
                            .top_k(a.top_k)
                            .activation(act)
                            .capacity_factor(a.capacity_factor)
                            .gate_type(a.gate),
                        a.skew);
  MoE moe(opts);
  moe->to(dtype);
  auto x = torch::randn({a.tokens, a.d_model}, torch::dtype(dtype)).requires_grad_(true);
  set_zipf_bias(*moe, a.skew, x.detach());

  // 1. The MoE layer: forward only, then forward + backward.
  int64_t rows = 0;
  std::vector<double> per_expert;
  auto fwd = [&] {
    torch::NoGradGuard ng;
    auto counts = moe->forward(x).stats.tokens_per_expert.to(torch::kFloat64).contiguous();
    rows = static_cast<int64_t>(counts.sum().item<double>());
    per_expert.assign(counts.data_ptr<double>(), counts.data_ptr<double>() + counts.numel());
  };
  auto fwd_bwd = [&] {
    auto out = moe->forward(x);
    (out.output.sum() + out.aux_loss).backward();
  };
  const double fwd_ms = median_ms(a.warmup, a.iters, fwd);
  // The process's peak resident memory after the layer's own forward and backward, before the
  // padded baseline (whose [E, C, d] buffers grow with the skew) runs: dropless memory follows
  // the rows routed.
  // Its minor page faults per step, over the same call (a fresh large buffer faults once per page).
  const int64_t faults_before = minor_faults();
  fwd_bwd();
  const int64_t layer_minor_faults = minor_faults() - faults_before;
  const double layer_peak_rss_mb = peak_rss_mb();

  // 2. Expert FLOPs of forward + backward (backward = 2x forward) over the rows actually kept.
  const double n_proj = act == Activation::kSwiGLU ? 3.0 : 2.0;
  const double flops = 3.0 * 2.0 * n_proj * static_cast<double>(rows) * a.d_model * a.d_hidden;

  // 3. A dense MLP chain of the same total size and FLOPs: [rows, d] → [rows, h] → [rows, d].
  auto dense_opts = torch::dtype(dtype).requires_grad(true);
  auto xd = torch::randn({rows, a.d_model}, dense_opts);
  auto w1 =
      (torch::randn({a.d_model, a.d_hidden}, torch::dtype(dtype)) * 0.02).requires_grad_(true);
  auto w2 =
      (torch::randn({a.d_hidden, a.d_model}, torch::dtype(dtype)) * 0.02).requires_grad_(true);
  auto w3 =
      (torch::randn({a.d_model, a.d_hidden}, torch::dtype(dtype)) * 0.02).requires_grad_(true);
  auto dense = [&] {
    auto h1 = xd.mm(w1);
    auto h = act == Activation::kSwiGLU ? torch::silu(h1) * xd.mm(w3)
             : act == Activation::kGelu ? torch::gelu(h1)
                                        : torch::relu(h1);
    h.mm(w2).sum().backward();
  };
  // 4. The padded-batched layer of GShard/Tutel on the same gate and weights (padded_moe.h).
  int64_t padded_capacity = 0;
  auto padded = [&] {
    auto out = padded_moe_forward(*moe, x);
    padded_capacity = out.capacity;
    (out.output.sum() + out.aux_loss).backward();
  };
  // The layer, the dense chain and the padded layer are timed alternately, so all see the same
  // machine noise.
  const auto medians = interleaved_median_ms(a.warmup, a.iters, {fwd_bwd, dense, padded});
  const double fwd_bwd_ms = medians[0], dense_ms = medians[1], padded_ms = medians[2];

  // 5. The machine's GEMM rate at the first projection's size ([rows, d] × [d, h]), both ways.
  const PeakGemm peak =
      measure_peak_gemm(rows, a.d_model, a.d_hidden, dtype, threads, a.warmup, a.iters);

  // 6. The layer's time by phase (layer_breakdown.h).
  const PhaseTimes phases = time_layer_phases(*moe, x, a.warmup, a.iters);

  // 7. The sequential reference (loop over experts, mask-index the tokens of each).
  double naive_ms = 0.0;
  if (!a.skip_naive) {
    naive_ms = median_ms(a.warmup, a.iters, [&] {
      auto out = moe->forward_reference(x);
      (out.output.sum() + out.aux_loss).backward();
    });
  }

  const double expert_gflops = flops / (fwd_bwd_ms * 1e6);
  const double dense_gflops = flops / (dense_ms * 1e6);
  nlohmann::json j = layer_args_json(a);
  j["bench"] = "layer";
  j["threads"] = threads;
  j["rows"] = rows;
  j["rows_per_expert"] = per_expert;
  j["expert_imbalance"] = max_over_mean(per_expert);  // max / mean rows per expert
  j["fwd_ms"] = fwd_ms;
  j["fwd_bwd_ms"] = fwd_bwd_ms;
  j["dense_fwd_bwd_ms"] = dense_ms;
  j["expert_gflops"] = expert_gflops;
  j["dense_gflops"] = dense_gflops;
  j["ratio_vs_dense"] = expert_gflops / dense_gflops;
  j["peak_gflops"] = peak.best();
  j["peak_gflops_multithread"] = peak.multithread_gflops;
  if (peak.per_core_measured) {
    j["peak_gflops_per_core_sum"] = peak.per_core_sum_gflops;
  } else {
    j["peak_gflops_per_core_sum"] = nullptr;  // no openblas_set_num_threads: not measurable
  }
  j["peak_gemm"] = {rows, a.d_model, a.d_hidden};
  j["ratio_vs_peak"] = expert_gflops / peak.best();
  j["padded_bmm_fwd_bwd_ms"] = padded_ms;
  j["padded_capacity"] = padded_capacity;
  j["speedup_vs_padded"] = padded_ms / fwd_bwd_ms;
  const std::vector<std::tuple<const char*, double, double>> phase_rows = {
      {"route", phases.route_fwd, phases.route_bwd},
      {"dispatch", phases.dispatch_fwd, phases.dispatch_bwd},
      {"experts", phases.experts_fwd, phases.experts_bwd},
      {"combine", phases.combine_fwd, phases.combine_bwd}};
  for (const auto& [name, fwd, bwd] : phase_rows) {
    j[std::string(name) + "_fwd_ms"] = fwd;
    j[std::string(name) + "_bwd_ms"] = bwd;
    j[std::string(name) + "_ms"] = fwd + bwd;
  }
  j["breakdown_sum_ms"] = phases.sum();
  j["breakdown_vs_whole"] = phases.sum() / fwd_bwd_ms;
  j["breakdown_method"] = kBreakdownMethod;
  if (!a.skip_naive) {
    j["naive_fwd_bwd_ms"] = naive_ms;
    j["speedup_vs_naive"] = naive_ms / fwd_bwd_ms;
  }
  j["peak_rss_mb_layer"] = layer_peak_rss_mb;
  j["minor_faults_per_step"] = layer_minor_faults;
  j["peak_rss_mb"] = peak_rss_mb();
  return j;
}

}  // namespace hybridmoe::bench
