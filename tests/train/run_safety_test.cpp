// run_safety_test.cpp — nothing lost, nothing silent, on one process: durable checkpoint writes
// that fail cleanly (a full disk mid-shard or at the last small files), resume from the newest
// complete checkpoint when `latest` is missing, empty or broken, retention, non-finite losses
// skipped and then stopping the run with nothing non-finite written, runs never clobbered, and
// fuzzed configuration and checkpoint-metadata parsers that refuse by name and never crash. A
// full disk on one rank of two is in run_safety_dist_test.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "hybridmoe/train.h"
#include "train/checkpoint_files.h"
#include "train/train_fixtures.h"

namespace hybridmoe {
namespace {

namespace fs = std::filesystem;

using testing::error_of;
using testing::has;
using testing::read_file;
using testing::snapshot;
using testing::test_dir;
using testing::tiny_config;
using testing::tmp_entries;

// Sets an environment variable for the scope.
struct ScopedEnv {
  std::string name;
  ScopedEnv(std::string n, const std::string& value) : name(std::move(n)) {
    ::setenv(name.c_str(), value.c_str(), 1);
  }
  ~ScopedEnv() { ::unsetenv(name.c_str()); }
};

TEST(DurableWrite, WritesOrFailsNamingPathAndErrnoLeavingTheOldFile) {
  const auto dir = test_dir("durable");
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string path = dir + "/file.bin";
  detail::write_file_durable(path, "first version");
  EXPECT_EQ(read_file(path), "first version");
  ScopedEnv fault("HMOE_FAULT_WRITE", "file.bin");
  const auto e = error_of([&] { detail::write_file_durable(path, std::string(1000, 'x')); });
  EXPECT_TRUE(has(e, path + ".tmp")) << e;
  EXPECT_TRUE(has(e, "No space left on device")) << e;
  EXPECT_EQ(read_file(path), "first version");  // untouched
  EXPECT_TRUE(tmp_entries(dir).empty());
  const auto missing = error_of([&] { detail::write_file_durable(dir + "/no/such/dir/x", "y"); });
  EXPECT_TRUE(has(missing, "cannot create")) << missing;
  EXPECT_TRUE(has(missing, "No such file or directory")) << missing;
}

// A disk that fills while a checkpoint is written: in the middle of the shard, or at the last
// small writes (checkpoint.meta, latest). The run ends with an error naming the file and the
// cause, no temporary stays, `latest` still names the previous checkpoint, and resume works.
TEST(TrainCheckpoint, FullDiskDuringACheckpointFailsCleanlyAndTheRunResumes) {
  int64_t n = 0;
  for (const std::string victim : {"/rank_0.pt", "/checkpoint.meta", "/model.pt", "/latest"}) {
    const auto dir = test_dir("disk_full_" + std::to_string(n++));
    fs::remove_all(dir);
    auto world = dist::init();
    auto c = tiny_config(dir);
    c.steps = 4;
    c.checkpoint_every = 2;
    c.stop_after = 2;
    train(c, *world);  // step_000002 is latest
    c.stop_after = 0;
    c.resume = true;
    std::string e;
    {
      ScopedEnv fault("HMOE_FAULT_WRITE", victim);
      e = error_of([&] { train(c, *world); });
    }
    EXPECT_TRUE(has(e, "checkpoint of step 4")) << victim << ": " << e;
    EXPECT_TRUE(has(e, victim)) << e;
    EXPECT_TRUE(has(e, "No space left on device")) << e;
    EXPECT_TRUE(has(e, "`latest` still names the previous checkpoint")) << e;
    EXPECT_TRUE(tmp_entries(dir).empty()) << victim << ": " << tmp_entries(dir).front();
    EXPECT_EQ(read_file(dir + "/checkpoints/latest"), "step_000002\n") << victim;
    EXPECT_EQ(verify_checkpoint(dir + "/checkpoints/step_000002"), "");
    // With space again, the run resumes from step 2 (or from the complete step 4, when only
    // `latest` could not be rewritten) and finishes.
    TrainResult r = train(c, *world);
    EXPECT_EQ(r.steps, 4);
    EXPECT_EQ(read_file(dir + "/checkpoints/latest"), "step_000004\n");
  }
}

TEST(TrainCheckpoint, ResumeFallsBackToTheNewestCompleteCheckpoint) {
  const auto dir = test_dir("fallback");
  fs::remove_all(dir);
  auto world = dist::init();
  auto c = tiny_config(dir);
  c.steps = 6;
  c.checkpoint_every = 1;
  c.checkpoint_keep = 0;
  c.stop_after = 3;
  train(c, *world);
  ASSERT_EQ(list_checkpoints(dir).size(), 3u);
  const std::string latest = dir + "/checkpoints/latest";
  // 1. `latest` empty (the disk filled as it was written): step 3, with a note.
  std::ofstream(latest, std::ios::trunc).close();
  auto p = find_resume_checkpoint(dir);
  EXPECT_EQ(p.dir, checkpoint_dir(dir, 3));
  EXPECT_TRUE(has(p.note, "empty")) << p.note;
  // 2. `latest` missing: the same.
  fs::remove(latest);
  EXPECT_EQ(find_resume_checkpoint(dir).dir, checkpoint_dir(dir, 3));
  // 3. The newest checkpoint's shard corrupted: step 2, naming the broken file.
  std::ofstream(latest) << "step_000003\n";
  const std::string shard = checkpoint_dir(dir, 3) + "/rank_0.pt";
  std::string bytes = read_file(shard);
  bytes[bytes.size() / 3] ^= 0x21;
  std::ofstream(shard, std::ios::binary | std::ios::trunc) << bytes;
  p = find_resume_checkpoint(dir);
  EXPECT_EQ(p.dir, checkpoint_dir(dir, 2));
  EXPECT_TRUE(has(p.note, "rank_0.pt is corrupted")) << p.note;
  EXPECT_TRUE(has(verify_checkpoint(checkpoint_dir(dir, 3)), "rank_0.pt")) << p.note;
  // 4. The run resumes from step 2 and ends equal to an uninterrupted run.
  c.stop_after = 0;
  c.resume = true;
  TrainResult resumed = train(c, *world);
  const auto ref_dir = test_dir("fallback_ref");
  fs::remove_all(ref_dir);
  auto ref = tiny_config(ref_dir);
  ref.steps = 6;
  TrainResult full = train(ref, *world);
  ASSERT_EQ(resumed.losses.size(), 6u);  // 2 read back (steps 1-2 of the log), 4 run
  EXPECT_EQ(resumed.losses.back(), full.losses.back());
}

TEST(TrainCheckpoint, RetentionKeepsTheNewestN) {
  const auto dir = test_dir("keep");
  fs::remove_all(dir);
  auto world = dist::init();
  auto c = tiny_config(dir);
  c.steps = 5;
  c.checkpoint_every = 1;
  c.checkpoint_keep = 2;
  train(c, *world);
  const std::vector<std::string> want = {checkpoint_dir(dir, 4), checkpoint_dir(dir, 5)};
  EXPECT_EQ(list_checkpoints(dir), want);
  EXPECT_EQ(read_file(dir + "/checkpoints/latest"), "step_000005\n");
}

// A dense model with an absurd learning rate: every step after the first is non-finite; each is
// skipped, and the third in a row stops the run naming the step and the values. Nothing
// non-finite reaches metrics.jsonl, summary.json or a checkpoint.
TEST(TrainLoop, NonFiniteLossesAreSkippedThenStopTheRun) {
  const auto dir = test_dir("nan");
  fs::remove_all(dir);
  auto world = dist::init();
  auto c = tiny_config(dir);
  c.moe_every = 0;
  c.lr = 1e30;
  c.min_lr = 0;
  c.warmup_steps = 0;
  c.grad_clip = 0;
  c.checkpoint_every = 1;
  c.steps = 10;
  const auto e = error_of([&] { train(c, *world); });
  EXPECT_TRUE(has(e, "3 steps in a row")) << e;
  EXPECT_TRUE(has(e, "max_nonfinite_steps = 3")) << e;
  EXPECT_TRUE(has(e, "non-finite loss")) << e;
  const std::string metrics = read_file(dir + "/metrics.jsonl");
  for (const char* bad : {": nan", ": -nan", ": inf", ": -inf", "NaN", "Infinity"})
    EXPECT_FALSE(has(metrics, bad)) << bad << " in " << metrics;
  EXPECT_TRUE(has(metrics, "\"loss\": null")) << metrics;
  EXPECT_TRUE(has(metrics, "\"skipped\": true")) << metrics;
  for (const auto& d : list_checkpoints(dir)) {
    GPT m = load_full_model(d);
    for (const auto& p : m->parameters()) EXPECT_TRUE(torch::isfinite(p).all().item<bool>()) << d;
  }
}

TEST(TrainLoop, AnExistingRunIsNeverClobbered) {
  const auto dir = test_dir("clobber");
  fs::remove_all(dir);
  fs::remove_all(dir + ".old-1");
  auto world = dist::init();
  auto c = tiny_config(dir);
  c.steps = 2;
  train(c, *world);
  const auto before = snapshot(dir);
  auto e = error_of([&] { train(c, *world); });
  EXPECT_TRUE(has(e, dir + " already holds a run")) << e;
  EXPECT_TRUE(has(e, "--overwrite")) << e;
  EXPECT_EQ(snapshot(dir), before);
  c.overwrite = true;
  train(c, *world);
  ASSERT_TRUE(fs::exists(dir + ".old-1/metrics.jsonl"));
  EXPECT_EQ(read_file(dir + ".old-1/metrics.jsonl"), before.at(dir + "/metrics.jsonl"));
  EXPECT_TRUE(fs::exists(dir + "/checkpoints/latest"));
}

// Mutations of a text: byte flips, deletions, duplications, truncations, inserted junk.
std::string mutate(const std::string& text, std::mt19937_64& rng) {
  std::string s = text;
  const int edits = 1 + static_cast<int>(rng() % 4);
  const std::string junk[] = {
      "=",    " = ",           "\n",   "[",  "]", "\"",     "-1", "nan", "1e400",
      "\xff", "shard.9 = 1 2", "step", "0x", "#", "[optim]"};
  for (int i = 0; i < edits && !s.empty(); ++i) {
    const size_t at = rng() % s.size();
    switch (rng() % 5) {
      case 0:
        s[at] = static_cast<char>(rng() % 256);
        break;
      case 1:
        s.erase(at, 1 + rng() % 8);
        break;
      case 2:
        s.insert(at, s.substr(at, 1 + rng() % 16));
        break;
      case 3:
        s.resize(at);
        break;
      default:
        s.insert(at, junk[rng() % (sizeof(junk) / sizeof(junk[0]))]);
    }
  }
  return s;
}

TEST(Fuzz, CheckpointMetaParserRefusesByNameAndNeverCrashes) {
  std::string meta =
      "format = hybridmoe-checkpoint-1\nstep = 12\nworld_size = 2\n"
      "layout = tp1.dp2.pp1.ep2.etp1\nshard.0 = 8a3f 1234\nshard.1 = 77 99\n"
      "model = abc 5\noptimizer = def 6\nconfig.lr = 0.003\n";
  EXPECT_EQ(detail::parse_meta(meta, "m").at("step"), "12");
  std::mt19937_64 rng(7);
  int refused = 0;
  for (int i = 0; i < 3000; ++i) {
    const std::string text = mutate(meta, rng);
    try {
      detail::parse_meta(text, "fuzz.meta");
    } catch (const c10::Error& e) {
      ++refused;
      const std::string msg = e.what_without_backtrace();
      EXPECT_TRUE(has(msg, "fuzz.meta")) << msg;
      EXPECT_GT(msg.size(), std::string("fuzz.meta: ").size() + 10) << msg;
    }
  }
  EXPECT_GT(refused, 1000);  // most mutations break something the parser checks
}

TEST(Fuzz, ConfigParserAndChecksRefuseByNameAndNeverCrash) {
  const std::string base = config_to_toml(tiny_config("fuzz_out"));
  std::mt19937_64 rng(11);
  int refused = 0, invalid = 0;
  for (int i = 0; i < 3000; ++i) {
    const std::string text = mutate(base, rng);
    TrainConfig c;
    try {
      apply_toml_text(c, text, "fuzz.toml");
    } catch (const c10::Error& e) {
      ++refused;
      EXPECT_TRUE(has(e.what_without_backtrace(), "fuzz.toml")) << e.what_without_backtrace();
      continue;
    }
    // What parses is checked without crashing (zero divisors, NaN, negative sizes); every
    // problem line names a key.
    const std::string why = check_config(c);
    if (why.empty()) continue;
    ++invalid;
    std::istringstream lines(why);
    std::string line;
    while (std::getline(lines, line)) EXPECT_TRUE(has(line, "`")) << line;
  }
  EXPECT_GT(refused, 500);
  EXPECT_GT(invalid, 10);
}

TEST(TrainConfig, SmallRefusals) {
  const auto dir = test_dir("cfg_dir");
  fs::create_directories(dir);
  TrainConfig c;
  auto e = error_of([&] { apply_toml_file(c, dir); });
  EXPECT_TRUE(has(e, "is a directory")) << e;
  e = error_of([&] { apply_toml_text(c, "[model]\nlr = 0.1\n", "t.toml"); });
  EXPECT_TRUE(has(e, "`lr` belongs in table [optim]")) << e;
  e = error_of([&] { apply_toml_text(c, "[optim.inner]\nlr = 0.1\n", "t.toml"); });
  EXPECT_TRUE(has(e, "do not nest")) << e;
  TrainConfig many;
  many.lr = std::nan("");
  many.n_heads = 3;
  many.capacity_factor = INFINITY;
  const std::string why = check_config(many);
  EXPECT_TRUE(has(why, "`lr`")) << why;
  EXPECT_TRUE(has(why, "`n_heads`")) << why;
  EXPECT_TRUE(has(why, "`capacity_factor` must be a finite number")) << why;
  TrainConfig zero;
  zero.n_heads = 0;  // no division by zero in the relations
  EXPECT_TRUE(has(check_config(zero), "`n_heads` must be >= 1")) << check_config(zero);
  TrainConfig both;
  both.resume = both.overwrite = true;
  EXPECT_TRUE(has(check_config(both), "exclude each other"));
  GPT tiny(tiny_config("").model_options());
  e = error_of([&] { generate_text(*tiny, "x", 4, std::nan("")); });
  EXPECT_TRUE(has(e, "temperature should be a finite number >= 0")) << e;
  e = error_of([&] { generate_text(*tiny, "x", -5); });
  EXPECT_TRUE(has(e, "max_new (--max-new) should be >= 0, got -5")) << e;
}

}  // namespace
}  // namespace hybridmoe
