// probe.cpp — see plan.h: measures the machine figures of the cost model on the ranks at hand
// (GEMM throughput and call latency, attention's batched GEMMs, streamed bytes, operator latency,
// latency and bandwidth of every collective kind by group size, the overlap efficiency, the cores)
// over c10d, and fits them to the model's formulas by least squares.
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "hybridmoe/collectives.h"
#include "hybridmoe/plan.h"

namespace hybridmoe::plan {

namespace {

using Clock = std::chrono::steady_clock;

// Seconds each sustained measurement runs for.
constexpr double kWindowS = 0.05;
// Interleaved rounds of the overlap measurement (all-to-all alone, GEMMs alone, both).
constexpr int kOverlapRounds = 9;

// Median seconds of `reps` calls of fn after one untimed call.
template <typename Fn>
double median_s(int reps, Fn&& fn) {
  fn();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// One sample of a fit y = c0 * x0 + c1 * x1 (c0, c1 >= 0).
struct Sample {
  double x0, x1, y;
};

// Least squares of the relative residuals (c0 x0 + c1 x1 - y) / y for two non-negative
// coefficients: the unconstrained solution, or the best fit with one coefficient at zero when the
// other would come out negative. Relative, so that the noise of the longest samples does not
// decide the latency that the shortest ones measure.
std::pair<double, double> fit_nonnegative(const std::vector<Sample>& samples) {
  double a00 = 0, a01 = 0, a11 = 0, b0 = 0, b1 = 0;
  for (const auto& raw : samples) {
    if (!(raw.y > 0)) continue;
    const Sample p{raw.x0 / raw.y, raw.x1 / raw.y, 1.0};
    a00 += p.x0 * p.x0;
    a01 += p.x0 * p.x1;
    a11 += p.x1 * p.x1;
    b0 += p.x0 * p.y;
    b1 += p.x1 * p.y;
  }
  const double det = a00 * a11 - a01 * a01;
  double c0 = det != 0 ? (b0 * a11 - b1 * a01) / det : 0.0;
  double c1 = det != 0 ? (a00 * b1 - a01 * b0) / det : 0.0;
  if (c0 < 0 || det == 0) {
    c0 = 0;
    c1 = a11 > 0 ? std::max(0.0, b1 / a11) : 0.0;
  } else if (c1 < 0) {
    c1 = 0;
    c0 = a00 > 0 ? std::max(0.0, b0 / a00) : 0.0;
  }
  return {c0, c1};
}

// Seconds per call of fn over back-to-back calls filling at least `window_s` (after one untimed
// call): with every rank doing the same at once, ranks that share cores each see their share.
template <typename Fn>
double sustained_s(double window_s, Fn&& fn) {
  fn();
  int64_t calls = 0;
  const auto t0 = Clock::now();
  double elapsed = 0;
  do {
    fn();
    ++calls;
    elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  } while (elapsed < window_s);
  return elapsed / static_cast<double>(calls);
}

// 1 / c as a bandwidth or rate, bounded so that a vanishing slope does not become infinite.
double rate_of(double seconds_per_unit) {
  return 1.0 / std::max(seconds_per_unit, 1e-13);
}

}  // namespace

MachineSpec probe_machine(dist::World& world) {
  torch::NoGradGuard no_grad;
  const int previous_threads = at::get_num_threads();
  at::set_num_threads(1);
  const int64_t W = world.size();
  const auto& wg = world.group();
  auto sync = [&] {
    if (W > 1) dist::barrier(wg);
  };
  // Every measured time, in a fixed order on every rank (averaged over the ranks at the end).
  std::vector<double> times;

  // 1. GEMMs of a few shapes on every rank at once (they share the cores, as in training).
  const std::vector<std::array<int64_t, 3>> shapes = {
      {32, 64, 64}, {128, 64, 256}, {256, 256, 256}, {512, 256, 512}, {512, 512, 1024}};
  std::vector<double> gemm_flops;
  for (const auto& [m, k, n] : shapes) {
    auto a = torch::randn({m, k}), b = torch::randn({k, n});
    sync();
    times.push_back(sustained_s(kWindowS, [&] { auto c = torch::mm(a, b); }));
    gemm_flops.push_back(2.0 * m * k * n);
  }
  // 2. Operator overhead under autograd: forward and backward of a chain of small operators. The
  //    model charges 3 * op_latency per operator and pass (forward, backward twice the forward).
  {
    torch::AutoGradMode grad_mode(true);
    auto x = torch::randn({16, 64}, torch::requires_grad());
    constexpr int kChain = 20;  // 3 operators each, plus the sum
    sync();
    times.push_back(sustained_s(kWindowS,
                                [&] {
                                  auto y = x;
                                  for (int i = 0; i < kChain; ++i)
                                    y = torch::gelu(y * 1.0001 + 0.5);
                                  y.sum().backward();
                                }) /
                    (3.0 * (3 * kChain + 1)));
  }
  // 3. Attention's batched small GEMMs: forward and backward of the scores (scale and causal
  //    mask fused, one baddbmm) and of p v over kSeqs sequences of kSeq tokens and kHeads heads
  //    of kHeadDim, laid out as the model (CausalSelfAttention) has them.
  constexpr int64_t kSeqs = 32, kSeq = 64, kHeads = 4, kHeadDim = 16;
  const double attention_flops = 3.0 * 4.0 * kSeqs * kHeads * kSeq * kSeq * kHeadDim;
  {
    torch::AutoGradMode grad_mode(true);
    auto qkv = torch::randn({kSeqs, kSeq, 3 * kHeads * kHeadDim}, torch::requires_grad());
    auto causal = torch::full({kSeq, kSeq}, -std::numeric_limits<double>::infinity()).triu(1);
    auto dy = torch::randn({kSeqs * kHeads, kSeq, kHeadDim});
    sync();
    times.push_back(sustained_s(kWindowS, [&] {
      auto parts = qkv.split(kHeads * kHeadDim, -1);
      auto heads = [&](const torch::Tensor& t) {
        return t.view({kSeqs, kSeq, kHeads, kHeadDim})
            .transpose(1, 2)
            .reshape({kSeqs * kHeads, kSeq, kHeadDim});
      };
      auto scores = torch::baddbmm(causal, heads(parts[0]), heads(parts[1]).transpose(1, 2), 1.0,
                                   1.0 / std::sqrt(static_cast<double>(kHeadDim)));
      auto y = torch::bmm(scores, heads(parts[2]));
      torch::autograd::grad({y}, {qkv}, {dy});
    }));
  }
  // 4. Streamed bytes: an activation (2 passes) and an add (3 passes) over 2 MiB tensors.
  const int64_t stream_elems = int64_t{1} << 19;
  const double stream_bytes = 5.0 * 4.0 * static_cast<double>(stream_elems);
  {
    auto x = torch::randn({stream_elems}), y = torch::randn({stream_elems});
    sync();
    times.push_back(sustained_s(kWindowS, [&] {
      auto a = torch::gelu(x);
      auto c = x + y;
    }));
  }
  // 5. Collectives over groups of consecutive ranks (every group of a size at once), a few sizes.
  struct CollSample {
    Collective kind;
    int64_t g;
    double bytes;
  };
  std::vector<CollSample> coll;
  const std::vector<int64_t> sizes = {int64_t{4} << 10, int64_t{64} << 10, int64_t{512} << 10};
  for (int64_t g = 2; g <= W; ++g) {
    if (W % g != 0) continue;
    dist::Group mine;
    for (int64_t start = 0; start < W; start += g) {
      std::vector<int64_t> ranks(g);
      for (int64_t i = 0; i < g; ++i) ranks[i] = start + i;
      auto grp =
          world.new_group("plan_probe_g" + std::to_string(g) + "_" + std::to_string(start), ranks);
      if (grp.is_member()) mine = grp;
    }
    for (int64_t bytes : sizes) {
      const int64_t elems = bytes / 4 / g * g;  // float32, divisible by g
      auto x = torch::randn({elems, 1});
      const std::vector<int64_t> even(g, elems / g);
      for (Collective kind : {Collective::kAllToAll, Collective::kAllGather, Collective::kAllReduce,
                              Collective::kReduceScatter, Collective::kP2P}) {
        if (kind == Collective::kP2P && g != 2) continue;
        std::function<void()> op;
        double n = static_cast<double>(elems * 4);
        switch (kind) {
          case Collective::kAllToAll:
            op = [&] { dist::all_to_all(x, even, even, mine); };
            break;
          case Collective::kAllGather: {
            op = [&] { dist::all_gather_rows(x.narrow(0, 0, elems / g), mine, even); };
            break;
          }
          case Collective::kAllReduce:
            op = [&] { dist::all_reduce_sum(x, mine); };
            break;
          case Collective::kReduceScatter:
            op = [&] { dist::reduce_scatter_rows(x, mine, even); };
            break;
          case Collective::kP2P: {
            // An exchange between the two ranks of the pair: all rows go to the other rank.
            const std::vector<int64_t> send =
                mine.rank == 0 ? std::vector<int64_t>{0, elems} : std::vector<int64_t>{elems, 0};
            op = [&, send] { dist::all_to_all(x, send, send, mine); };
            break;
          }
        }
        sync();
        times.push_back(median_s(9, op));
        coll.push_back({kind, g, n});
      }
    }
  }
  // 6. Overlap: an all-to-all over the world alone, GEMMs of about its time alone (the same count
  //    on every rank), and both issued together (the all-to-all in flight during the GEMMs).
  const size_t overlap_at = times.size();
  if (W > 1) {
    const int64_t elems = (int64_t{1} << 20) / W * W;  // 4 MiB of float32
    auto x = torch::randn({elems, 1});
    const std::vector<int64_t> even(W, elems / W);
    auto exchange = [&] { dist::all_to_all(x, even, even, wg); };
    auto a = torch::randn({256, 256}), b = torch::randn({256, 256});
    sync();
    const double t_exchange = median_s(5, exchange);
    const double t_gemm = sustained_s(kWindowS, [&] { auto c = torch::mm(a, b); });
    const double ratio = dist::sum_over_ranks(t_exchange / t_gemm, wg);
    const int64_t reps =
        std::clamp<int64_t>(std::llround(ratio / static_cast<double>(W)), 1, 10000);
    auto gemms = [&] {
      for (int64_t i = 0; i < reps; ++i) auto c = torch::mm(a, b);
    };
    auto both = [&] {
      auto in_flight = dist::all_to_all_async("probe_overlap", x, even, even, wg);
      gemms();
      in_flight.wait();
    };
    // Rounds of the three, interleaved so that each sees the same machine; the median of each.
    const std::array<std::function<void()>, 3> kinds = {exchange, gemms, both};
    std::array<std::vector<double>, 3> rounds;
    for (int round = 0; round < kOverlapRounds; ++round)
      for (size_t i = 0; i < kinds.size(); ++i) {
        sync();
        const auto t0 = Clock::now();
        kinds[i]();
        rounds[i].push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      }
    for (auto& r : rounds) {
      std::sort(r.begin(), r.end());
      times.push_back(r[r.size() / 2]);
    }
  }

  // 7. The same figures on every rank: the mean over the ranks (the cores last).
  times.push_back(static_cast<double>(local_cores()));
  times = dist::sum_over_ranks(times, wg);
  for (double& t : times) t /= static_cast<double>(W);

  // 8. Fits: t = calls * latency + flops / rate; collectives per the formulas of plan.h.
  MachineSpec machine;
  machine.source = "probe";
  std::vector<Sample> gemm;
  for (size_t i = 0; i < shapes.size(); ++i) gemm.push_back({1.0, gemm_flops[i], times[i]});
  const auto [gemm_latency, s_per_flop] = fit_nonnegative(gemm);
  machine.gemm_latency_s = gemm_latency;
  machine.gemm_flops = rate_of(s_per_flop);
  machine.op_latency_s = times[shapes.size()];
  machine.attention_flops = rate_of(times[shapes.size() + 1] / attention_flops);
  machine.stream_bytes_per_s = rate_of(times[shapes.size() + 2] / stream_bytes);
  const size_t first = shapes.size() + 3;
  for (int c = 0; c < kNumCollectives; ++c) {
    std::vector<Sample> samples;
    for (size_t i = 0; i < coll.size(); ++i) {
      const auto& cs = coll[i];
      if (static_cast<int>(cs.kind) != c) continue;
      const double steps = static_cast<double>(cs.g - 1);
      const double factor = cs.kind == Collective::kAllReduce ? 2.0 : 1.0;
      if (cs.kind == Collective::kP2P) {
        samples.push_back({1.0, cs.bytes, times[first + i]});
      } else {
        samples.push_back({factor * steps, factor * steps / static_cast<double>(cs.g) * cs.bytes,
                           times[first + i]});
      }
    }
    if (samples.empty()) continue;  // one rank: keep the defaults
    const auto [latency, s_per_byte] = fit_nonnegative(samples);
    machine.intra[c] = LinkFit{latency, rate_of(s_per_byte)};
  }
  machine.inter = machine.intra;
  machine.cores = std::max<int64_t>(1, std::llround(times.back()));
  if (W > 1) {
    const double t_exchange = times[overlap_at], t_gemms = times[overlap_at + 1];
    const double t_both = times[overlap_at + 2];
    machine.overlap_efficiency = std::clamp(
        (t_exchange + t_gemms - t_both) / std::max(std::min(t_exchange, t_gemms), 1e-9), 0.0, 1.0);
  }
  at::set_num_threads(previous_threads);
  return machine;
}

}  // namespace hybridmoe::plan
