// trainer_test.cpp — the trainer on one process: the synthetic corpus and its batches, the
// learning-rate schedule, a short run that learns (with its summary, report and final checkpoint),
// resume equal to an uninterrupted run, and checkpoints refused when corrupted, incomplete or of
// another layout or model shape.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "hybridmoe/cpu_runtime.h"
#include "hybridmoe/dist.h"
#include "hybridmoe/train.h"
#include "train/train_fixtures.h"

namespace hybridmoe {
namespace {

namespace fs = std::filesystem;

using testing::error_of;
using testing::read_file;
using testing::snapshot;
using testing::test_dir;
using testing::tiny_config;

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
  for (auto* key : {"initial_loss", "final_loss", "tokens_per_s", "steps", "layout",
                    "task_accuracy", "peak_rss_mb_max"})
    EXPECT_NE(summary.find(key), std::string::npos) << key;
  // Each step's peak resident memory, where this system lets a process restart its peak mark.
  const auto metrics = read_file(dir + "/metrics.jsonl");
  if (reset_peak_resident_memory()) {
    EXPECT_NE(metrics.find("\"peak_rss_mb\": {\"max\": "), std::string::npos);
    EXPECT_EQ(metrics.find("\"peak_rss_mb\": null"), std::string::npos);
  } else {
    EXPECT_NE(metrics.find("\"peak_rss_mb\": null"), std::string::npos);
  }
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

// Micro-batches side by side (micro_batch_threads = 2, two intra-op threads) train like one
// thread: the first step's loss is the same bits (its passes are computed alike, single-threaded);
// later steps differ only through the step's own reductions (the gradient norm), float64.
TEST(TrainLoop, MicroBatchesSideBySideTrainLikeOneThread) {
  const auto dir_a = test_dir("side_a"), dir_b = test_dir("side_b");
  fs::remove_all(dir_a);
  fs::remove_all(dir_b);
  auto world = dist::init();
  const int previous = at::get_num_threads();
  auto a = tiny_config(dir_a);
  a.micro_batches = 4;
  a.steps = 4;
  a.dtype = DType::kFloat64;
  auto b = a;
  b.out = dir_b;
  a.micro_batch_threads = 1;
  b.micro_batch_threads = 2;
  at::set_num_threads(1);
  TrainResult one = train(a, *world);
  at::set_num_threads(2);
  TrainResult two = train(b, *world);
  // Refused where the step cannot run side by side, naming why.
  auto c = b;
  c.out = test_dir("side_c");
  c.micro_batch_threads = 3;
  c.micro_batches = 2;
  fs::remove_all(c.out);
  const auto too_many = error_of([&] { train(c, *world); });
  c.micro_batch_threads = 2;
  c.gate = "noisy";
  fs::remove_all(c.out);
  const auto noisy = error_of([&] { train(c, *world); });
  at::set_num_threads(previous);
  ASSERT_EQ(one.losses.size(), 4u);
  ASSERT_EQ(two.losses.size(), 4u);
  EXPECT_EQ(two.losses[0], one.losses[0]);
  for (size_t i = 1; i < 4; ++i)
    EXPECT_NEAR(two.losses[i], one.losses[i], 1e-10 * std::abs(one.losses[i])) << "step " << i + 1;
  EXPECT_NE(too_many.find("`micro_batch_threads` = 3 exceeds `micro_batches` = 2"),
            std::string::npos)
      << too_many;
  EXPECT_NE(noisy.find("gate \"noisy\" draws random numbers"), std::string::npos) << noisy;
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

}  // namespace
}  // namespace hybridmoe
