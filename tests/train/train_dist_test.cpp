// train_dist_test.cpp — the trainer: configuration checks, data, learning rate, the global gradient
// norm against one process, a short run that learns, resume equal to an uninterrupted run, and
// checkpoints refused when corrupted, incomplete or of another layout.
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

using testing::error_of;
using testing::read_file;
using testing::snapshot;
using testing::test_dir;
using testing::tiny_config;

TEST(TrainConfig, UnknownKeysAreRefusedByName) {
  TrainConfig c;
  auto e = error_of([&] { apply_toml_text(c, "steps = 5\nbogus_key = 3\n", "test.toml"); });
  EXPECT_NE(e.find("bogus_key"), std::string::npos) << e;
  e = error_of([&] { apply_toml_text(c, "[optim]\nlearning_rat = 0.1\n", "test.toml"); });
  EXPECT_NE(e.find("learning_rat"), std::string::npos) << e;
  e = error_of([&] { apply_toml_text(c, "steps = \"many\"\n", "test.toml"); });
  EXPECT_NE(e.find("steps"), std::string::npos) << e;
  e = error_of([&] { set_config_value(c, "d_model", "12x"); });
  EXPECT_NE(e.find("d_model"), std::string::npos) << e;
}

TEST(TrainConfig, NonDividingDegreesAreRefusedByName) {
  TrainConfig c;
  EXPECT_EQ(check_config(c), "");
  auto with = [](std::function<void(TrainConfig&)> f) {
    TrainConfig c;
    f(c);
    return check_config(c);
  };
  EXPECT_NE(with([](TrainConfig& c) {
              c.pp = 1;
              c.ep = 3;
              c.dp = 3;
              c.nproc = 3;
            }).find("`ep`"),
            std::string::npos);
  EXPECT_NE(with([](TrainConfig& c) { c.batch_size = 15; }).find("`batch_size`"),
            std::string::npos);
  EXPECT_NE(with([](TrainConfig& c) { c.micro_batches = 3; }).find("`micro_batches`"),
            std::string::npos);
  EXPECT_NE(with([](TrainConfig& c) { c.dp = 1; }).find("`nproc`"), std::string::npos);
  EXPECT_NE(with([](TrainConfig& c) {
              c.tp = 8;
              c.dp = 1;
              c.pp = 1;
              c.nproc = 8;
              c.ep = 8;
              c.num_experts = 8;
            }).find("`tp`"),
            std::string::npos);
  EXPECT_NE(with([](TrainConfig& c) {
              c.pp = 5;
              c.nproc = 10;
            }).find("`pp`"),
            std::string::npos);
  // A typed key's bad text is refused where it is read, naming the key.
  auto set_error = [](const std::string& key, const std::string& value) {
    TrainConfig c;
    return error_of([&] { set_config_value(c, key, value); });
  };
  EXPECT_NE(set_error("pipeline_schedule", "zigzag").find("`pipeline_schedule`"),
            std::string::npos);
  EXPECT_NE(with([](TrainConfig& c) { c.seq_len = 128; }).find("`seq_len`"), std::string::npos);
  EXPECT_NE(with([](TrainConfig& c) { c.zero_stage = 2; }).find("`zero_stage`"), std::string::npos);
  EXPECT_NE(set_error("dtype", "half").find("`dtype`"), std::string::npos);
  EXPECT_NE(with([](TrainConfig& c) {
              c.expert_layout = ExpertLayout::kAdaptive;
            }).find("`expert_layout`"),
            std::string::npos);
  // adaptive_r = auto needs a re-timing period longer than the valid r (here 0, 1, 2: 3).
  const auto short_period = with([](TrainConfig& c) {
    c.nproc = c.dp = 4;
    c.pp = 1;
    c.ep = 1;
    c.num_experts = 2;
    c.expert_layout = ExpertLayout::kAdaptive;
    c.adaptive_r = AdaptiveR::automatic();
    c.adaptive_recheck_every = 3;
  });
  EXPECT_NE(short_period.find("`adaptive_recheck_every` = 3 must exceed the number of valid r (3: "
                              "0, 1, 2)"),
            std::string::npos)
      << short_period;
  const auto bad_r = with([](TrainConfig& c) {
    c.expert_layout = ExpertLayout::kAdaptive;
    c.ep = 1;
    c.adaptive_r = AdaptiveR::value(3);
  });
  EXPECT_NE(bad_r.find("`adaptive_r`"), std::string::npos) << bad_r;
  EXPECT_NE(bad_r.find("0, 1"), std::string::npos) << bad_r;  // the valid values are listed
  EXPECT_EQ(with([](TrainConfig& c) {
              c.expert_layout = ExpertLayout::kAdaptive;
              c.ep = 1;
              c.adaptive_r = AdaptiveR::automatic();
            }),
            "");
  EXPECT_NE(with([](TrainConfig& c) {
              c.ep = 1;
              c.a2a_overlap_degree = 2;
            }).find("`a2a_overlap_degree`"),
            std::string::npos);
  EXPECT_NE(with([](TrainConfig& c) { c.gate = "nope"; }).find("`gate`"), std::string::npos);
}

TEST(TrainConfig, TomlRoundTripAndTables) {
  TrainConfig c;
  apply_toml_text(c,
                  "[model]\nd_model = 48\n[optim]\nlr = 0.01\nsteps = 7\n[output]\nresume = true\n"
                  "[data]\ndata = \"x.txt\"\n",
                  "t.toml");
  EXPECT_EQ(c.d_model, 48);
  EXPECT_EQ(c.steps, 7);
  EXPECT_DOUBLE_EQ(c.lr, 0.01);
  EXPECT_TRUE(c.resume);
  EXPECT_EQ(c.data, "x.txt");
  TrainConfig d;
  apply_toml_text(d, config_to_toml(c), "printed");
  for (const auto& k : train_config_keys())
    EXPECT_EQ(get_config_value(d, k.name), get_config_value(c, k.name)) << k.name;
}

TEST(TrainData, SyntheticCorpusIsDeterministicWithHeldOutSamples) {
  auto a = Corpus::synthetic(3, 500, 5), b = Corpus::synthetic(3, 500, 5);
  EXPECT_EQ(a.text(), b.text());
  EXPECT_NE(a.text(), Corpus::synthetic(4, 500, 5).text());
  ASSERT_EQ(a.held_out().size(), 4u * 5u);
  for (const auto& s : a.held_out()) {
    EXPECT_EQ(a.text().find(s.prompt + s.answer + "\n"), std::string::npos) << s.prompt;
    EXPECT_EQ(s.prompt.substr(s.prompt.size() - 4), " -> ");
  }
  EXPECT_NE(a.text().find("sort: "), std::string::npos);
  EXPECT_NE(a.text().find("reverse: "), std::string::npos);
  EXPECT_NE(a.text().find("add: "), std::string::npos);
  auto [x, y] = a.batch(1, 5, 0, 4, 16);
  EXPECT_EQ(x.sizes(), (std::vector<int64_t>{4, 16}));
  EXPECT_TRUE(torch::equal(x.narrow(1, 1, 15), y.narrow(1, 0, 15)));
  auto [x2, y2] = a.batch(1, 5, 0, 4, 16);
  EXPECT_TRUE(torch::equal(x, x2));
  EXPECT_TRUE(torch::equal(shard_batch(x, 2, 1), x.narrow(0, 2, 2)));
}

TEST(TrainLoop, LearningRateWarmsUpThenDecays) {
  TrainConfig c;
  c.steps = 100;
  c.warmup_steps = 10;
  c.lr = 1.0;
  c.min_lr = 0.1;
  EXPECT_NEAR(learning_rate(c, 0), 0.1, 1e-12);
  EXPECT_NEAR(learning_rate(c, 9), 1.0, 1e-12);
  EXPECT_NEAR(learning_rate(c, 10), 1.0, 1e-12);
  EXPECT_NEAR(learning_rate(c, 99), 0.1, 1e-12);
  EXPECT_GT(learning_rate(c, 50), 0.1);
  EXPECT_LT(learning_rate(c, 50), 1.0);
}

TEST(TrainLoop, ShortRunLowersTheLoss) {
  const auto dir = test_dir("short_run");
  fs::remove_all(dir);
  auto c = tiny_config(dir);
  c.steps = 40;
  c.eval = true;
  auto world = dist::init();
  TrainResult r = train(c, *world);
  ASSERT_EQ(r.losses.size(), 40u);
  double tail = 0;
  for (size_t i = 35; i < 40; ++i) tail += r.losses[i] / 5;
  // From ~ln(256) = 5.5 the byte model must lose at least 2 nats in 40 steps.
  EXPECT_LT(tail, r.losses.front() - 2.0) << "initial " << r.losses.front() << " final " << tail;
  EXPECT_TRUE(fs::exists(dir + "/summary.json"));
  EXPECT_TRUE(fs::exists(dir + "/report.html"));
  EXPECT_TRUE(fs::exists(dir + "/metrics.jsonl"));
  EXPECT_EQ(r.task_accuracy.size(), 4u);
  const auto summary = read_file(dir + "/summary.json");
  for (auto* key :
       {"initial_loss", "final_loss", "tokens_per_s", "steps", "layout", "task_accuracy"})
    EXPECT_NE(summary.find(key), std::string::npos) << key;
  // The consolidated model of the final checkpoint generates like the trained model.
  GPT loaded = load_full_model(latest_checkpoint(dir));
  EXPECT_FALSE(generate_text(*loaded, "copy: abc -> ", 8).empty() &&
               generate_text(*loaded, "sort: 321 -> ", 8).empty());
}

TEST(TrainCheckpoint, ResumeEqualsUninterruptedRun) {
  const auto dir_a = test_dir("resume_a"), dir_b = test_dir("resume_b");
  fs::remove_all(dir_a);
  fs::remove_all(dir_b);
  auto world = dist::init();
  auto a = tiny_config(dir_a);
  a.micro_batches = 2;
  TrainResult full = train(a, *world);
  auto b = tiny_config(dir_b);
  b.micro_batches = 2;
  b.stop_after = 5;
  TrainResult first = train(b, *world);
  EXPECT_EQ(first.losses.size(), 5u);
  b.stop_after = 0;
  b.resume = true;
  TrainResult second = train(b, *world);
  ASSERT_EQ(second.losses.size(), 12u);  // 5 read back from metrics, 7 run
  for (size_t i = 0; i < 12; ++i) EXPECT_EQ(second.losses[i], full.losses[i]) << "step " << i + 1;
}

TEST(TrainCheckpoint, CorruptMissingOrForeignCheckpointsAreRefused) {
  const auto dir = test_dir("corrupt");
  fs::remove_all(dir);
  auto world = dist::init();
  auto c = tiny_config(dir);
  c.steps = 4;
  c.stop_after = 2;
  train(c, *world);
  const std::string ckpt = latest_checkpoint(dir);
  ASSERT_FALSE(ckpt.empty());
  c.stop_after = 0;
  c.resume = true;
  // 1. A corrupted shard: refused, nothing changed on disk.
  const std::string shard = ckpt + "/rank_0.pt";
  const std::string shard_intact = read_file(shard);
  std::string bytes = shard_intact;
  bytes[bytes.size() / 2] ^= 0x5a;
  std::ofstream(shard, std::ios::binary | std::ios::trunc) << bytes;
  auto before = snapshot(dir);
  auto e = error_of([&] { train(c, *world); });
  EXPECT_NE(e.find("corrupted"), std::string::npos) << e;
  EXPECT_EQ(snapshot(dir), before);
  // 2. A missing shard.
  fs::remove(shard);
  before = snapshot(dir);
  e = error_of([&] { train(c, *world); });
  EXPECT_NE(e.find("missing"), std::string::npos) << e;
  EXPECT_EQ(snapshot(dir), before);
  // 3. Another layout.
  auto meta = read_file(ckpt + "/checkpoint.meta");
  meta.replace(meta.find("layout = "), std::string("layout = tp1.dp1.pp1.ep1.etp1").size(),
               "layout = tp1.dp2.pp1.ep2.etp1");
  std::ofstream(ckpt + "/checkpoint.meta", std::ios::trunc) << meta;
  // ... is converted from the consolidated files, which are checked first.
  const std::string optim = ckpt + "/optimizer.pt";
  const std::string intact = read_file(optim);
  std::string obytes = intact;
  obytes[obytes.size() / 2] ^= 0x5a;
  std::ofstream(optim, std::ios::binary | std::ios::trunc) << obytes;
  before = snapshot(dir);
  e = error_of([&] { train(c, *world); });
  EXPECT_NE(e.find("optimizer.pt is corrupted"), std::string::npos) << e;
  EXPECT_EQ(snapshot(dir), before);
  // 4. Another model shape (the checkpoint intact again).
  std::ofstream(optim, std::ios::binary | std::ios::trunc) << intact;
  std::ofstream(shard, std::ios::binary | std::ios::trunc) << shard_intact;
  auto other = c;
  other.d_model = 64;
  meta.replace(meta.find("layout = "), std::string("layout = tp1.dp2.pp1.ep2.etp1").size(),
               "layout = tp1.dp1.pp1.ep1.etp1");
  std::ofstream(ckpt + "/checkpoint.meta", std::ios::trunc) << meta;
  e = error_of([&] { train(other, *world); });
  EXPECT_NE(e.find("`d_model`"), std::string::npos) << e;
}

// The global norm of the reduced gradients under a layout equals the single-process norm.
void check_grad_norm(dist::World& world, const ParallelConfig& layout, int64_t run_id) {
  const std::string tag = "norm" + std::to_string(run_id);
  std::vector<int64_t> members(layout.world_size());
  for (int64_t r = 0; r < layout.world_size(); ++r) members[r] = r;
  auto sub = world.new_group(tag, members);
  auto groups = std::make_shared<ParallelGroups>(
      ParallelGroups::build(layout, sub, world.store(), false, tag));
  auto o = tiny_config("").model_options().context(8).d_model(16).n_heads(4);
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
  const double norm =
      clip_global_grad_norm(*net, gradient_replicas(*net, *groups, gdp), 0.0, groups->world);
  EXPECT_NEAR(norm, std::sqrt(ref_sq), 1e-9 * std::sqrt(ref_sq)) << layout.to_string();
}

TEST(TrainMultiRank, GlobalGradNormEqualsOneProcess) {
  testing::run_on_ranks(4, [](testing::RankContext& ctx) {
    at::set_num_threads(1);
    check_grad_norm(ctx.world, ParallelConfig{2, 2, 1, 2, 1}, 0);
    check_grad_norm(ctx.world, ParallelConfig{2, 2, 1, 2, 2}, 1);
    check_grad_norm(ctx.world, ParallelConfig{1, 4, 1, 4, 1}, 2);
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
  testing::run_on_ranks(2, [&](testing::RankContext& ctx) {
    at::set_num_threads(1);
    TrainResult full = train(cfg(d2, 2), ctx.world);
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
    for (const auto& c : {z, o, a, rb, rm}) {
      TrainResult r = train(c, ctx.world);
      ASSERT_EQ(r.losses.size(), plain.losses.size()) << c.out;
      for (size_t i = 0; i < r.losses.size(); ++i)
        EXPECT_NEAR(r.losses[i], plain.losses[i], 1e-9 * std::abs(plain.losses[i]))
            << c.out << " step " << i + 1;
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

// A checkpoint written under layout A resumes under layout B: the loss curve (float64) equals an
// uninterrupted run under B (balance loss off, so that A and B compute the same function). Cases:
// zero_stage 1 → 0, (tp2) → (dp2, ep2), (pp2) → (pp1), (dp2, ep2) → (dp4, ep4).
TEST(TrainConvert, CheckpointsLoadIntoOtherLayouts) {
  auto cfg = [](const std::string& name, int64_t tp, int64_t dp, int64_t pp, int64_t ep,
                int64_t zero) {
    auto c = tiny_config(test_dir(name));
    c.tp = tp;
    c.dp = dp;
    c.pp = pp;
    c.ep = ep;
    c.nproc = tp * dp * pp;
    c.zero_stage = zero;
    c.steps = 6;
    c.dtype = DType::kFloat64;
    // The balance loss depends on how the batch is split into routing groups (one per dp rank
    // and tp slice): without it, and dropless, every layout computes the same function.
    c.aux_loss_coef = 0.0;
    return c;
  };
  // Runs A for 3 steps into `name`'s directory.
  auto first_half = [&](TrainConfig a, dist::World& world) {
    a.stop_after = 3;
    train(a, world);
  };
  // Resumes under B in the same directory and compares with B run straight through.
  auto second_half = [&](TrainConfig b, dist::World& world) {
    TrainConfig straight = b;
    straight.out = b.out + "_straight";
    b.resume = true;
    TrainResult resumed = train(b, world);
    TrainResult ref = train(straight, world);
    ASSERT_EQ(resumed.losses.size(), ref.losses.size()) << b.out;
    for (size_t i = 0; i < ref.losses.size(); ++i)
      EXPECT_NEAR(resumed.losses[i], ref.losses[i], 1e-9 * std::abs(ref.losses[i]))
          << b.out << " step " << i + 1;
  };
  if (!testing::is_worker())
    for (const char* d : {"cv_zero", "cv_tp", "cv_pp", "cv_dp4"})
      for (const char* suffix : {"", "_straight"}) fs::remove_all(test_dir(d) + suffix);
  testing::run_on_ranks(2, [&](testing::RankContext& ctx) {
    at::set_num_threads(1);
    first_half(cfg("cv_zero", 1, 2, 1, 2, 1), ctx.world);
    second_half(cfg("cv_zero", 1, 2, 1, 2, 0), ctx.world);
    first_half(cfg("cv_tp", 2, 1, 1, 1, 0), ctx.world);
    second_half(cfg("cv_tp", 1, 2, 1, 2, 0), ctx.world);
    first_half(cfg("cv_pp", 1, 1, 2, 1, 0), ctx.world);
    first_half(cfg("cv_dp4", 1, 2, 1, 2, 1), ctx.world);
  });
  testing::run_on_ranks(4, [&](testing::RankContext& ctx) {
    at::set_num_threads(1);
    second_half(cfg("cv_dp4", 1, 4, 1, 4, 1), ctx.world);
  });
  if (testing::is_worker()) return;
  auto world = dist::init();
  second_half(cfg("cv_pp", 1, 1, 1, 1, 0), *world);
}

}  // namespace
}  // namespace hybridmoe
