// bench_layer.cpp — see bench_layer.h.
#include "bench_layer.h"

#include <thread>

#include <torch/torch.h>

#include "bench_common.h"
#include "hybridmoe/moe.h"

namespace hybridmoe::bench {

namespace {
torch::ScalarType parse_dtype(const std::string& s) {
  if (s == "float32") return torch::kFloat32;
  if (s == "float64") return torch::kFloat64;
  if (s == "bfloat16") return torch::kBFloat16;
  TORCH_CHECK(false, "--dtype: expected float32, float64 or bfloat16, got \"", s, "\"");
}
}  // namespace

nlohmann::json layer_args_json(const LayerBenchArgs& a) {
  return {
      {"tokens", a.tokens},   {"d_model", a.d_model},       {"d_hidden", a.d_hidden},
      {"experts", a.experts}, {"top_k", a.top_k},           {"dtype", a.dtype},
      {"gate", a.gate},       {"activation", a.activation}, {"capacity_factor", a.capacity_factor},
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

  auto opts = MoEOptions(a.d_model, a.experts)
                  .d_hidden(a.d_hidden)
                  .top_k(a.top_k)
                  .activation(act)
                  .capacity_factor(a.capacity_factor)
                  .gate_type(a.gate);
  MoE moe(opts);
  moe->to(dtype);
  auto x = torch::randn({a.tokens, a.d_model}, torch::dtype(dtype)).requires_grad_(true);

  // 1. The MoE layer: forward only, then forward + backward.
  int64_t rows = 0;
  auto fwd = [&] {
    torch::NoGradGuard ng;
    rows = moe->forward(x).stats.tokens_per_expert.sum().item<int64_t>();
  };
  auto fwd_bwd = [&] {
    auto out = moe->forward(x);
    (out.output.sum() + out.aux_loss).backward();
  };
  const double fwd_ms = median_ms(a.warmup, a.iters, fwd);

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
  // The layer and the dense chain are timed alternately, so both see the same machine noise.
  const auto [fwd_bwd_ms, dense_ms] = interleaved_median_ms(a.warmup, a.iters, fwd_bwd, dense);

  // 4. The sequential reference (loop over experts, mask-index the tokens of each).
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
  j["fwd_ms"] = fwd_ms;
  j["fwd_bwd_ms"] = fwd_bwd_ms;
  j["dense_fwd_bwd_ms"] = dense_ms;
  j["expert_gflops"] = expert_gflops;
  j["dense_gflops"] = dense_gflops;
  j["ratio_vs_dense"] = expert_gflops / dense_gflops;
  if (!a.skip_naive) {
    j["naive_fwd_bwd_ms"] = naive_ms;
    j["speedup_vs_naive"] = naive_ms / fwd_bwd_ms;
  }
  j["peak_rss_mb"] = peak_rss_mb();
  return j;
}

}  // namespace hybridmoe::bench
