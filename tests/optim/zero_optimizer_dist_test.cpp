// zero_optimizer_dist_test.cpp — ZeroAdamW (zero.h) against torch::optim::AdamW on one process: the
// sharded optimizer (ZeRO-1) over groups of 1..4 ranks with uneven shards and buckets that cut
// parameters, weight-decay groups and a changing learning rate equals it exactly in float64; the
// tiled step equals the untiled one bit for bit (float64, float32, bfloat16 with a master copy);
// the global gradient norm under sharding equals the one-process norm; a mismatched or corrupted
// state shard is refused naming the entry; the flat collectives with uneven and empty blocks.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "hybridmoe/collectives.h"
#include "hybridmoe/zero.h"
#include "support/multirank.h"

namespace hybridmoe {
namespace {

using testing::RankContext;
using testing::run_on_ranks;
using NamedTensors = ZeroAdamW::NamedTensors;

struct Spec {
  std::string name;
  std::vector<int64_t> shape;
  c10::optional<GroupKind> tag;
};

// Sizes that divide by no group size; tags of every kind.
const std::vector<Spec>& specs() {
  static const std::vector<Spec> s = {
      {"a.weight", {7, 5}, GroupKind::kDp},  {"a.bias", {7}, GroupKind::kDp},
      {"gate.w", {3, 4}, GroupKind::kStage}, {"e.w1", {5, 6}, GroupKind::kEdp},
      {"e.b1", {11}, GroupKind::kEdp},       {"b.weight", {13, 3}, GroupKind::kDp},
      {"local.w", {2, 3}, c10::nullopt},     {"s", {1}, GroupKind::kDp},
  };
  return s;
}

ZeroAdamW::Tags tags() {
  ZeroAdamW::Tags t;
  for (const auto& s : specs()) t[s.name] = s.tag;
  return t;
}

// The same initial values on every rank. → named leaf tensors of `dtype`.
NamedTensors make_params(torch::ScalarType dtype) {
  NamedTensors out;
  for (size_t i = 0; i < specs().size(); ++i) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(100 + i);
    auto t = torch::randn(specs()[i].shape, gen, torch::kFloat64).to(dtype);
    out.emplace_back(specs()[i].name, t.set_requires_grad(true));
  }
  return out;
}

// The local gradient of parameter i at `step` on the rank of index j in its tag group
// (world rank for untagged ones). dyadic: multiples of 1/8, so sums over ranks are exact.
torch::Tensor local_grad(size_t i, int64_t step, int64_t j, torch::ScalarType dtype, bool dyadic) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7000 + 100 * step + 10 * i + j);
  auto g = torch::randn(specs()[i].shape, gen, torch::kFloat64);
  if (dyadic) g = (g * 8).round() / 8;
  return g.to(dtype);
}

int64_t index_in_tag(const ParallelGroups& groups, const Spec& s) {
  return s.tag ? groups.get(*s.tag).rank : groups.world_rank;
}

// The gradient the one-process model sees: the local gradients summed over the tag group.
torch::Tensor reduced_grad(const ParallelGroups& groups, size_t i, int64_t step,
                           torch::ScalarType dtype, bool dyadic) {
  const auto& s = specs()[i];
  if (!s.tag) return local_grad(i, step, groups.world_rank, dtype, dyadic).to(torch::kFloat64);
  auto sum = torch::zeros(s.shape, torch::kFloat64);
  for (int64_t j = 0; j < groups.get(*s.tag).size(); ++j)
    sum += local_grad(i, step, j, dtype, dyadic).to(torch::kFloat64);
  return sum;
}

ParallelConfig config_for(int64_t world) {
  ParallelConfig c;
  if (world == 2) c.dp = 2;                      // dp 2, edp 2, stage 2
  if (world == 3) c.dp = 3;                      // dp 3, edp 3
  if (world == 4) c.tp = 2, c.dp = 2, c.ep = 2;  // dp 2, edp 2, stage 4
  return c;
}

std::shared_ptr<ParallelGroups> build_groups(RankContext& ctx) {
  auto c = config_for(ctx.size());
  return std::make_shared<ParallelGroups>(ParallelGroups::build(c, ctx.world));
}

double lr_at(int64_t step) {
  return 0.01 * static_cast<double>(step + 1) / 3.0;
}

constexpr double kScale = 0.5;

// One step of a ZeroAdamW: local gradients in, reduce-scatter, lr, step.
void zero_step(ZeroAdamW& opt, NamedTensors& params, const ParallelGroups& groups, int64_t step,
               torch::ScalarType dtype, bool dyadic) {
  opt.zero_grad();
  for (size_t i = 0; i < params.size(); ++i)
    params[i].second.mutable_grad().copy_(
        local_grad(i, step, index_in_tag(groups, specs()[i]), dtype, dyadic));
  opt.reduce_gradients(kScale);
  opt.set_lr(lr_at(step));
  opt.step();
}

AdamWHyper hyper() {
  return AdamWHyper().lr(0.01).beta1(0.8).beta2(0.95).eps(1e-6).weight_decay(0.1);
}

// LibTorch's AdamW with the hyper() settings: matrices decayed, the rest not (the reference).
std::unique_ptr<torch::optim::AdamW> reference_adamw(const NamedTensors& ref) {
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& kv : ref) (kv.second.dim() >= 2 ? decay : no_decay).push_back(kv.second);
  const auto h = hyper();
  auto base = torch::optim::AdamWOptions(h.lr()).betas({h.beta1(), h.beta2()}).eps(h.eps());
  std::vector<torch::optim::OptimizerParamGroup> pgs;
  pgs.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                              torch::optim::AdamWOptions(base).weight_decay(h.weight_decay())));
  pgs.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions(base).weight_decay(0.0)));
  return std::make_unique<torch::optim::AdamW>(std::move(pgs), base);
}

// Sharded (tiled and untiled) vs torch::optim::AdamW on the reduced gradients, float64, exact.
void check_matches_torch(RankContext& ctx, int64_t stage, int64_t bucket_bytes) {
  auto groups = build_groups(ctx);
  auto tiled = make_params(torch::kFloat64), untiled = make_params(torch::kFloat64);
  auto ref = make_params(torch::kFloat64);
  auto opts = ZeroAdamWOptions().zero_stage(stage).bucket_bytes(bucket_bytes);
  ZeroAdamW z_tiled(tiled, tags(), ZeroAdamW::decay_groups(tiled, hyper()), groups,
                    ZeroAdamWOptions(opts).tile_mb(3 * 8 / 1048576.0));  // 3-element tiles
  ZeroAdamW z_untiled(untiled, tags(), ZeroAdamW::decay_groups(untiled, hyper()), groups,
                      ZeroAdamWOptions(opts).tile_mb(0));
  auto torch_opt = reference_adamw(ref);
  for (int64_t step = 0; step < 4; ++step) {
    zero_step(z_tiled, tiled, *groups, step, torch::kFloat64, true);
    zero_step(z_untiled, untiled, *groups, step, torch::kFloat64, true);
    torch_opt->zero_grad();
    for (size_t i = 0; i < ref.size(); ++i)
      ref[i].second.mutable_grad() = reduced_grad(*groups, i, step, torch::kFloat64, true) * kScale;
    for (auto& g : torch_opt->param_groups())
      static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr_at(step));
    torch_opt->step();
  }
  EXPECT_EQ(z_tiled.step_count(), 4);
  for (size_t i = 0; i < ref.size(); ++i) {
    EXPECT_TRUE(torch::equal(tiled[i].second, ref[i].second))
        << ref[i].first << " (tiled) differs by "
        << (tiled[i].second - ref[i].second).abs().max().item<double>();
    EXPECT_TRUE(torch::equal(untiled[i].second, ref[i].second))
        << ref[i].first << " (untiled) differs by "
        << (untiled[i].second - ref[i].second).abs().max().item<double>();
  }
}

TEST(ZeroAdamW, ShardedMatchesTorchAdamWExactlyOn1To4Ranks) {
  for (int64_t p = 1; p <= 4; ++p)
    run_on_ranks(p, [](RankContext& ctx) { check_matches_torch(ctx, 1, /*bucket_bytes=*/40); });
}

TEST(ZeroAdamW, ShardedMatchesTorchAdamWWithOneBigBucket) {
  run_on_ranks(4, [](RankContext& ctx) { check_matches_torch(ctx, 1, int64_t{1} << 20); });
}

TEST(ZeroAdamW, Stage0MatchesTorchAdamW) {
  run_on_ranks(4, [](RankContext& ctx) { check_matches_torch(ctx, 0, 40); });
}

// Tiled == untiled bit for bit with non-dyadic gradients in float64, float32 and bfloat16.
TEST(ZeroAdamW, TiledEqualsUntiledBitForBit) {
  run_on_ranks(2, [](RankContext& ctx) {
    auto groups = build_groups(ctx);
    for (auto dtype : {torch::kFloat64, torch::kFloat32, torch::kBFloat16}) {
      for (double tile_mb : {1e-5, 5.0 / 1048576.0, 1.0}) {
        auto a = make_params(dtype), b = make_params(dtype);
        auto opts = ZeroAdamWOptions().bucket_bytes(64);
        ZeroAdamW za(a, tags(), ZeroAdamW::decay_groups(a, hyper()), groups,
                     ZeroAdamWOptions(opts).tile_mb(tile_mb));
        ZeroAdamW zb(b, tags(), ZeroAdamW::decay_groups(b, hyper()), groups,
                     ZeroAdamWOptions(opts).tile_mb(0));
        for (int64_t step = 0; step < 3; ++step) {
          zero_step(za, a, *groups, step, dtype, false);
          zero_step(zb, b, *groups, step, dtype, false);
        }
        for (size_t i = 0; i < a.size(); ++i)
          EXPECT_TRUE(torch::equal(a[i].second, b[i].second))
              << a[i].first << " " << dtype << " tile_mb " << tile_mb;
        auto sa = za.state(), sb = zb.state();
        ASSERT_EQ(sa.size(), sb.size());
        for (size_t i = 0; i < sa.size(); ++i)
          EXPECT_TRUE(torch::equal(sa[i].second, sb[i].second)) << sa[i].first << " " << dtype;
      }
    }
  });
}

// bfloat16 parameters: the shard keeps a float32 master; every replica ends up with the master
// rounded, which equals torch::optim::AdamW run in float32 on the same (exact) gradients.
TEST(ZeroAdamW, LowPrecisionStepsAFloat32MasterLikeTorchAdamW) {
  run_on_ranks(2, [](RankContext& ctx) {
    auto groups = build_groups(ctx);
    auto p = make_params(torch::kBFloat16);
    ZeroAdamW z(p, tags(), ZeroAdamW::decay_groups(p, hyper()), groups,
                ZeroAdamWOptions().bucket_bytes(40).tile_mb(1e-5));
    bool has_master = false;
    for (const auto& [name, t] : z.state())
      if (name.find(".master") != std::string::npos) {
        has_master = true;
        EXPECT_EQ(t.scalar_type(), torch::kFloat32) << name;
      }
    EXPECT_TRUE(has_master);
    NamedTensors ref;
    for (const auto& [name, t] : p)
      ref.emplace_back(name, t.detach().to(torch::kFloat32).set_requires_grad(true));
    auto torch_opt = reference_adamw(ref);
    for (int64_t step = 0; step < 3; ++step) {
      zero_step(z, p, *groups, step, torch::kBFloat16, true);
      torch_opt->zero_grad();
      for (size_t i = 0; i < ref.size(); ++i)
        ref[i].second.mutable_grad() =
            (reduced_grad(*groups, i, step, torch::kBFloat16, true) * kScale).to(torch::kFloat32);
      for (auto& g : torch_opt->param_groups())
        static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr_at(step));
      torch_opt->step();
    }
    for (size_t i = 0; i < p.size(); ++i)
      EXPECT_TRUE(torch::equal(p[i].second, ref[i].second.to(torch::kBFloat16))) << p[i].first;
  });
}

// The one-process squared norm of the reduced gradients: each distinct tensor once (experts of
// every ep rank, untagged parameters of every rank).
double one_process_norm_sq(const ParallelGroups& g, int64_t step) {
  double total = 0.0;
  const auto& c = g.config;
  for (size_t i = 0; i < specs().size(); ++i) {
    const auto& s = specs()[i];
    auto norm_sq = [&](const torch::Tensor& t) { return (t * kScale).pow(2).sum().item<double>(); };
    if (!s.tag) {
      for (int64_t r = 0; r < g.world.size(); ++r)
        total += norm_sq(local_grad(i, step, r, torch::kFloat64, true));
    } else {
      const double copies = *s.tag == GroupKind::kEdp ? static_cast<double>(c.ep * c.etp) : 1.0;
      total += copies * norm_sq(reduced_grad(g, i, step, torch::kFloat64, true));
    }
  }
  return total;
}

TEST(ZeroAdamW, GlobalGradNormUnderShardingEqualsOneProcess) {
  run_on_ranks(4, [](RankContext& ctx) {
    auto groups = build_groups(ctx);
    const auto& c = groups->config;
    // Dense and gate tensors are replicated over every rank of the stage; experts over edp.
    std::map<std::string, int64_t> replicas;
    for (const auto& s : specs())
      replicas[s.name] = !s.tag ? 1 : *s.tag == GroupKind::kEdp ? c.edp() : c.tp * c.dp;
    for (int64_t stage : {0, 1}) {
      auto p = make_params(torch::kFloat64);
      ZeroAdamW z(p, tags(), ZeroAdamW::decay_groups(p, hyper()), groups,
                  ZeroAdamWOptions().zero_stage(stage).bucket_bytes(40));
      z.zero_grad();
      for (size_t i = 0; i < p.size(); ++i)
        p[i].second.mutable_grad().copy_(
            local_grad(i, 0, index_in_tag(*groups, specs()[i]), torch::kFloat64, true));
      z.reduce_gradients(kScale);
      const double expected = std::sqrt(one_process_norm_sq(*groups, 0));
      const double norm = z.clip_grad_norm(0.0, groups->world, replicas);
      EXPECT_NEAR(norm, expected, 1e-12 * expected) << "stage " << stage;
      // Clipping to half the norm leaves every rank's owned gradients at the clipped norm.
      z.clip_grad_norm(expected / 2, groups->world, replicas);
      const double after = z.clip_grad_norm(0.0, groups->world, replicas);
      EXPECT_NEAR(after, expected / 2 * expected / (expected + 1e-6), 1e-12 * expected);
    }
  });
}

// Runs `fn` and expects a c10::Error whose message contains every one of `parts`.
template <typename Fn>
void expect_error(Fn&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected an error mentioning " << parts.front();
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << msg;
  }
}

NamedTensors clone_state(const ZeroAdamW& z) {
  NamedTensors out;
  for (const auto& [n, t] : z.state()) out.emplace_back(n, t.clone());
  return out;
}

TEST(ZeroAdamW, StateRoundTripsAndCorruptedShardsAreRefused) {
  run_on_ranks(2, [](RankContext& ctx) {
    auto groups = build_groups(ctx);
    auto a = make_params(torch::kFloat64);
    ZeroAdamW za(a, tags(), ZeroAdamW::decay_groups(a, hyper()), groups,
                 ZeroAdamWOptions().bucket_bytes(40));
    for (int64_t step = 0; step < 2; ++step)
      zero_step(za, a, *groups, step, torch::kFloat64, false);
    auto saved = clone_state(za);
    // 1. A fresh optimizer over the same parameters continues identically after loading.
    auto b = make_params(torch::kFloat64);
    {
      torch::NoGradGuard ng;
      for (size_t i = 0; i < a.size(); ++i) b[i].second.copy_(a[i].second);
    }
    ZeroAdamW zb(b, tags(), ZeroAdamW::decay_groups(b, hyper()), groups,
                 ZeroAdamWOptions().bucket_bytes(40));
    zb.load_state(saved);
    EXPECT_EQ(zb.step_count(), 2);
    zero_step(za, a, *groups, 2, torch::kFloat64, false);
    zero_step(zb, b, *groups, 2, torch::kFloat64, false);
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
    // 2. Corruptions, each refused naming the entry, leaving the optimizer unchanged.
    auto before = clone_state(zb);
    const std::string space = "zero.dp.float64.";
    auto flipped = saved;
    for (auto& [n, t] : flipped)
      if (n == space + "exp_avg") t[0] += 1e-3;
    expect_error([&] { zb.load_state(flipped); }, {space + "checksum", "corrupted"});
    auto reshaped = saved;
    for (auto& [n, t] : reshaped)
      if (n == space + "exp_avg_sq") t = t.narrow(0, 0, t.numel() - 1);
    expect_error([&] { zb.load_state(reshaped); }, {space + "exp_avg_sq", "expected"});
    auto missing = saved;
    missing.erase(std::remove_if(missing.begin(), missing.end(),
                                 [&](const auto& kv) { return kv.first == space + "step"; }),
                  missing.end());
    expect_error([&] { zb.load_state(missing); }, {space + "step", "missing"});
    auto extra = saved;
    extra.emplace_back("zero.bogus.exp_avg", torch::zeros({1}));
    expect_error([&] { zb.load_state(extra); }, {"zero.bogus.exp_avg", "unknown"});
    auto after = clone_state(zb);
    for (size_t i = 0; i < before.size(); ++i)
      EXPECT_TRUE(torch::equal(before[i].second, after[i].second)) << before[i].first;
    // 3. A shard of another layout (other buckets) is refused naming its layout entry.
    auto c = make_params(torch::kFloat64);
    ZeroAdamW zc(c, tags(), ZeroAdamW::decay_groups(c, hyper()), groups,
                 ZeroAdamWOptions().bucket_bytes(48));
    expect_error([&] { zc.load_state(saved); }, {"layout", "another layout or rank"});
  });
}

TEST(ZeroAdamW, RefusesParametersOutsideTheParameterGroups) {
  run_on_ranks(1, [](RankContext& ctx) {
    auto groups = build_groups(ctx);
    auto p = make_params(torch::kFloat64);
    auto pg = ZeroAdamW::decay_groups(p, hyper());
    pg[0].names.pop_back();
    const std::string dropped = ZeroAdamW::decay_groups(p, hyper())[0].names.back();
    expect_error([&] { ZeroAdamW z(p, tags(), pg, groups); }, {dropped, "no parameter group"});
    expect_error(
        [&] {
          ZeroAdamW z(p, tags(), ZeroAdamW::decay_groups(p, hyper()), groups,
                      ZeroAdamWOptions().zero_stage(2));
        },
        {"zero_stage", "2"});
  });
}

TEST(FlatCollectives, UnevenAndEmptyBlocks) {
  run_on_ranks(3, [](RankContext& ctx) {
    const std::vector<int64_t> counts = {3, 0, 2};
    const int64_t r = ctx.rank();
    // Rank r holds (r + 1) * [0, 1, 2, 3, 4]; the sum is 6 * [0, 1, 2, 3, 4].
    auto flat = torch::arange(5, torch::kFloat64) * static_cast<double>(r + 1);
    const int64_t off = r == 0 ? 0 : r == 1 ? 3 : 3;
    auto mine = torch::empty({counts[r]}, torch::kFloat64);
    dist::reduce_scatter_flat_(flat, mine, counts, ctx.group());
    EXPECT_TRUE(
        torch::equal(mine, torch::arange(5, torch::kFloat64).narrow(0, off, counts[r]) * 6));
    auto gathered = torch::full({5}, -1.0, torch::kFloat64);
    auto block = gathered.narrow(0, off, counts[r]);
    block.copy_(torch::arange(off, off + counts[r], torch::kFloat64) * 10);
    dist::all_gather_flat_(gathered, block, counts, ctx.group());
    EXPECT_TRUE(torch::equal(gathered, torch::arange(5, torch::kFloat64) * 10));
  });
}

}  // namespace
}  // namespace hybridmoe
