// train_dist_test.cpp — the trainer on several ranks: the global gradient norm under a layout
// equals one process; a distributed run resumes exactly; two pipeline stages (1f1b, gpipe, block
// recompute) follow the one-stage loss curve and resume exactly; ZeRO-1, overlapped all-to-alls,
// the adaptive expert layout, recomputation and hot-expert replication follow the plain run's
// losses (replication's choices logged per step and shown in the report).
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "hybridmoe/collectives.h"
#include "hybridmoe/train.h"
#include "support/multirank.h"
#include "train/train_fixtures.h"

namespace hybridmoe {
namespace {

namespace fs = std::filesystem;

using testing::test_dir;
using testing::tiny_config;

// The global norm of the reduced gradients under a layout equals the single-process norm. With
// `shared`, the MoE layer has a gated shared expert (split over tp): its slices count their dp
// copies only, its gate every tp * dp copy.
void check_grad_norm(dist::World& world, const ParallelConfig& layout, int64_t run_id,
                     bool shared = false) {
  const std::string tag = "norm" + std::to_string(run_id);
  std::vector<int64_t> members(layout.world_size());
  for (int64_t r = 0; r < layout.world_size(); ++r) members[r] = r;
  auto sub = world.new_group(tag, members);
  auto groups = std::make_shared<ParallelGroups>(
      ParallelGroups::build(layout, sub, world.store(), false, tag));
  auto o = tiny_config("").model_options().context(8).d_model(16).n_heads(4);
  if (shared)
    o.shared_expert_hidden(8).shared_expert_gate(true).expert_activation(Activation::kSwiGLU);
  torch::manual_seed(5);
  GPT ref(o);
  ref->to(torch::kFloat64);
  GPT net(o, groups);
  net->to(torch::kFloat64);
  net->load_shard_from(*ref);
  GroupedDataParallel gdp(net.ptr(), groups);
  const int64_t b = 2, S = 8;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
  auto tokens = torch::randint(0, 256, {layout.dp * b, S}, gen, torch::kInt64);
  auto out = ref(tokens, moe_group_sizes(layout, b * S));
  (lm_loss(out.logits, tokens) + out.aux_loss).backward();
  double ref_sq = 0;
  for (auto& p : ref->parameters()) ref_sq += p.grad().pow(2).sum().item<double>();
  auto mine = tokens.narrow(0, groups->coords().dp * b, b);
  auto o2 = net(mine);
  (lm_loss(o2.logits, mine) + o2.aux_loss).backward();
  gdp.reduce_gradients(1.0 / static_cast<double>(layout.dp));
  const auto replicas = gradient_replicas(*net, *groups, gdp);
  const double norm = clip_global_grad_norm(*net, replicas, 0.0, groups->world);
  EXPECT_NEAR(norm, std::sqrt(ref_sq), 1e-9 * std::sqrt(ref_sq)) << layout.to_string();
  if (!shared) return;
  int64_t slices = 0, gates = 0;
  for (const auto& [name, n] : replicas) {
    if (name.find(".moe.shared_expert.") != std::string::npos) {
      ++slices;
      EXPECT_EQ(n, layout.tp > 1 ? layout.dp : layout.tp * layout.dp) << layout.to_string() << name;
    } else if (name.find(".moe.shared_expert_gate") != std::string::npos) {
      ++gates;
      EXPECT_EQ(n, layout.tp * layout.dp) << layout.to_string() << name;
    }
  }
  EXPECT_GT(slices, 0) << layout.to_string();
  EXPECT_EQ(gates, 1) << layout.to_string();
}

TEST(TrainMultiRank, GlobalGradNormEqualsOneProcess) {
  testing::run_on_ranks(4, [](testing::RankContext& ctx) {
    at::set_num_threads(1);
    check_grad_norm(ctx.world, ParallelConfig{2, 2, 1, 2, 1}, 0);
    check_grad_norm(ctx.world, ParallelConfig{2, 2, 1, 2, 2}, 1);
    check_grad_norm(ctx.world, ParallelConfig{1, 4, 1, 4, 1}, 2);
  });
}

TEST(TrainMultiRank, GlobalGradNormCountsTpSplitSharedExpertOnce) {
  testing::run_on_ranks(4, [](testing::RankContext& ctx) {
    at::set_num_threads(1);
    check_grad_norm(ctx.world, ParallelConfig{2, 2, 1, 2, 1}, 10, true);
    check_grad_norm(ctx.world, ParallelConfig{4, 1, 1, 1, 4}, 11, true);
    check_grad_norm(ctx.world, ParallelConfig{4, 1, 1, 4, 1}, 12, true);
    check_grad_norm(ctx.world, ParallelConfig{1, 4, 1, 4, 1}, 13, true);
  });
}

TEST(TrainMultiRank, DistributedResumeEqualsUninterruptedRun) {
  testing::run_on_ranks(2, [](testing::RankContext& ctx) {
    at::set_num_threads(1);
    const auto dir_a = test_dir("mr_resume_a"), dir_b = test_dir("mr_resume_b");
    if (ctx.rank() == 0) {
      fs::remove_all(dir_a);
      fs::remove_all(dir_b);
    }
    auto cfg = [&](const std::string& dir) {
      auto c = tiny_config(dir);
      c.nproc = 2;
      c.dp = 2;
      c.ep = 2;
      c.steps = 8;
      return c;
    };
    TrainResult full = train(cfg(dir_a), ctx.world);
    auto b = cfg(dir_b);
    b.stop_after = 4;
    train(b, ctx.world);
    b.stop_after = 0;
    b.resume = true;
    TrainResult second = train(b, ctx.world);
    ASSERT_EQ(second.losses.size(), 8u);
    for (size_t i = 0; i < 8; ++i) EXPECT_EQ(second.losses[i], full.losses[i]) << i;
    EXPECT_LT(full.losses.back(), full.losses.front());
  });
}

// The losses of metrics.jsonl, in step order.
std::vector<double> logged_losses(const std::string& dir) {
  std::vector<double> out;
  std::ifstream in(dir + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    long long step = 0;
    double loss = 0;
    if (std::sscanf(line.c_str(), "{\"step\": %lld, \"loss\": %lf", &step, &loss) == 2)
      out.push_back(loss);
  }
  return out;
}

// Two pipeline stages (gpipe and 1f1b, 2 micro-batches, clipping active so that the tied
// embedding's replicas count) follow the one-stage loss curve; a pipelined run resumes exactly.
TEST(TrainMultiRank, PipelineStagesFollowOneStageAndResume) {
  auto cfg = [](const std::string& dir, int64_t pp) {
    auto c = tiny_config(dir);
    c.nproc = pp;
    c.pp = pp;
    c.steps = 6;
    c.micro_batches = 2;
    c.grad_clip = 0.05;
    return c;
  };
  const auto d1 = test_dir("pp1"), d2 = test_dir("pp2"), d3 = test_dir("pp2_gpipe"),
             d4 = test_dir("pp2_resume"), d5 = test_dir("pp2_recompute");
  if (!testing::is_worker())
    for (const auto& d : {d1, d2, d3, d4, d5}) fs::remove_all(d);
  // The model's size, each parameter once: a one-process model's count, whatever the layout.
  const auto model_size = [&] {
    GPT m(cfg(d1, 1).model_options());
    int64_t n = 0;
    for (const auto& p : m->parameters()) n += p.numel();
    return n;
  };
  testing::run_on_ranks(2, [&](testing::RankContext& ctx) {
    at::set_num_threads(1);
    TrainResult full = train(cfg(d2, 2), ctx.world);
    EXPECT_EQ(full.parameters, model_size());
    auto g = cfg(d3, 2);
    g.pipeline_schedule = PipelineSchedule::kGPipe;
    TrainResult gpipe = train(g, ctx.world);
    for (size_t i = 0; i < full.losses.size(); ++i)
      EXPECT_EQ(gpipe.losses[i], full.losses[i]) << "step " << i + 1;
    // Recomputing each block inside the pipeline's micro-batches changes nothing.
    auto rc = cfg(d5, 2);
    rc.recompute = Recompute::kBlock;
    TrainResult recomputed = train(rc, ctx.world);
    for (size_t i = 0; i < full.losses.size(); ++i)
      EXPECT_NEAR(recomputed.losses[i], full.losses[i], 1e-6 * std::abs(full.losses[i]))
          << "step " << i + 1;
    auto b = cfg(d4, 2);
    b.stop_after = 3;
    train(b, ctx.world);
    b.stop_after = 0;
    b.resume = true;
    TrainResult second = train(b, ctx.world);
    ASSERT_EQ(second.losses.size(), full.losses.size());
    for (size_t i = 0; i < full.losses.size(); ++i)
      EXPECT_EQ(second.losses[i], full.losses[i]) << "step " << i + 1;
  });
  if (testing::is_worker()) return;
  auto world = dist::init();
  TrainResult one = train(cfg(d1, 1), *world);
  EXPECT_EQ(one.parameters, model_size());
  const auto two = logged_losses(d2);
  ASSERT_EQ(two.size(), one.losses.size());
  for (size_t i = 0; i < two.size(); ++i)
    EXPECT_NEAR(two[i], one.losses[i], 1e-4 * std::abs(one.losses[i])) << "step " << i + 1;
}

// The trainer's memory and layout options change nothing but speed and memory: in float64,
// ZeRO-1, overlapped all-to-alls, the adaptive expert layout with r = auto (timed, switching
// every few steps) and recomputation (block, and moe without the communication cache over the
// overlapped exchange) follow the plain dp2 · ep2 run's losses.
TEST(TrainMultiRank, ZeroOverlapAndAdaptiveFollowThePlainRun) {
  testing::run_on_ranks(2, [](testing::RankContext& ctx) {
    at::set_num_threads(1);
    auto cfg = [&](const std::string& name) {
      auto c = tiny_config(test_dir(name));
      c.nproc = 2;
      c.dp = 2;
      c.ep = 2;
      c.steps = 5;
      c.dtype = DType::kFloat64;
      c.grad_clip = 0.05;
      if (ctx.rank() == 0) fs::remove_all(c.out);
      return c;
    };
    TrainResult plain = train(cfg("opt_plain"), ctx.world);
    auto z = cfg("opt_zero1");
    z.zero_stage = 1;
    z.optimizer_tile_mb = 0.01;  // several tiles
    auto o = cfg("opt_overlap");
    o.a2a_overlap_degree = 2;
    auto a = cfg("opt_adaptive");
    a.ep = 1;
    a.expert_layout = ExpertLayout::kAdaptive;
    a.adaptive_r = AdaptiveR::automatic();
    a.adaptive_recheck_every = 3;
    auto rb = cfg("opt_recompute_block");
    rb.recompute = Recompute::kBlock;
    auto rm = cfg("opt_recompute_moe_overlap");
    rm.recompute = Recompute::kMoE;
    rm.recompute_cache_comm = false;
    rm.a2a_overlap_degree = 2;
    auto rp = cfg("opt_replicate");
    rp.replicate = "1";  // the hottest expert of every step, on both ranks
    for (const auto& c : {z, o, a, rb, rm, rp}) {
      TrainResult r = train(c, ctx.world);
      ASSERT_EQ(r.losses.size(), plain.losses.size()) << c.out;
      for (size_t i = 0; i < r.losses.size(); ++i)
        EXPECT_NEAR(r.losses[i], plain.losses[i], 1e-9 * std::abs(plain.losses[i]))
            << c.out << " step " << i + 1;
    }
    // The replication choices: every step's in metrics.jsonl, their frequency in the report.
    if (ctx.rank() == 0) {
      const auto metrics = testing::read_file(rp.out + "/metrics.jsonl");
      size_t steps_with_choice = 0;
      for (size_t at = metrics.find("\"replicated\": [["); at != std::string::npos;
           at = metrics.find("\"replicated\": [[", at + 1))
        ++steps_with_choice;
      EXPECT_EQ(steps_with_choice, 5u) << metrics;
      EXPECT_NE(testing::read_file(rp.out + "/report.html").find("Hot-expert replication"),
                std::string::npos);
      EXPECT_EQ(testing::read_file(z.out + "/report.html").find("Hot-expert replication"),
                std::string::npos);
    }
    // ZeRO-1 resumes exactly from its sharded optimizer state.
    auto b = cfg("opt_zero1_resume");
    b.zero_stage = 1;
    b.stop_after = 2;
    train(b, ctx.world);
    b.stop_after = 0;
    b.resume = true;
    TrainResult second = train(b, ctx.world);
    TrainResult straight = train(
        [&] {
          auto c = cfg("opt_zero1_straight");
          c.zero_stage = 1;
          return c;
        }(),
        ctx.world);
    ASSERT_EQ(second.losses.size(), straight.losses.size());
    for (size_t i = 0; i < second.losses.size(); ++i)
      EXPECT_EQ(second.losses[i], straight.losses[i]) << "step " << i + 1;
  });
}

}  // namespace
}  // namespace hybridmoe
