// hf_dist_test.cpp — a Hugging Face checkpoint loaded straight into parallel layouts (each rank
// reading its own slices): for every family, on layouts with ep > 1, tp = etp > 1 and pp > 1, the
// gathered model equals the checkpoint's bit for bit, and (without stages) the layout's forward
// gives the one-process logits (float64, 1e-10). Each rank reads less than the whole checkpoint
// where it holds a part.
#include <gtest/gtest.h>

#include <filesystem>

#include <unistd.h>

#include "hybridmoe/collectives.h"
#include "hybridmoe/hf.h"
#include "model/gpt_fixtures.h"
#include "support/compare.h"
#include "support/multirank.h"

namespace hybridmoe {
namespace {

namespace fs = std::filesystem;
using testing::random_tokens;
using testing::rel_err;

void check_family(dist::World& world, ModelFamily f, const ParallelConfig& layout, int64_t run) {
  const std::string tag = "hf" + std::to_string(run);
  std::vector<int64_t> members(layout.world_size());
  for (int64_t r = 0; r < layout.world_size(); ++r) members[r] = r;
  auto sub = world.new_group(tag, members);
  auto groups = std::make_shared<ParallelGroups>(
      ParallelGroups::build(layout, sub, world.store(), false, tag));
  SCOPED_TRACE(to_string(f) + " " + layout.to_string());
  // 1. The checkpoint: a seeded model of the family written by this rank to its own directory.
  torch::manual_seed(7);
  GPT ref(model_preset(f).n_layers(3).vocab_size(300));
  ref->to(torch::kFloat64);
  {
    torch::NoGradGuard ng;
    for (auto& kv : ref->named_buffers())
      if (kv.key().find("expert_bias") != std::string::npos) kv.value().uniform_(-0.1, 0.1);
  }
  const std::string dir =
      (fs::temp_directory_path() / ("hmoe-hf-dist-" + std::to_string(getpid()) + "-" + tag))
          .string();
  fs::remove_all(dir);
  hf::SaveOptions so;
  so.dtype = torch::kFloat64;
  so.layout = run % 2 ? hf::ExpertLayout::kFused : hf::ExpertLayout::kPerExpert;
  so.max_shard_bytes = 30000;
  const auto wrote = hf::save(*ref, f, dir, so);
  // 2. The layout's model, loaded from it.
  const auto cfg = hf::read_config(dir);
  GPT net(cfg.options, groups);
  net->to(torch::kFloat64);
  const auto read = hf::load(*net, f, hf::Checkpoint::open(dir));
  fs::remove_all(dir);
  if (layout.ep > 1 || layout.tp > 1 || layout.pp > 1) {
    EXPECT_LT(read.bytes, wrote.bytes);  // only this rank's slices
  }
  // 3. Gathered back: the checkpoint's model, bit for bit.
  GPT back(cfg.options.single_process());
  back->to(torch::kFloat64);
  net->gather_full(*back);
  auto pb = back->named_parameters();
  for (auto& kv : ref->named_parameters())
    EXPECT_TRUE(torch::equal(kv.value(), pb[kv.key()])) << kv.key();
  auto bb = back->named_buffers();
  for (auto& kv : ref->named_buffers())
    if (kv.key().find("expert_bias") != std::string::npos && ref->options.gate().selection_bias()) {
      EXPECT_TRUE(torch::equal(kv.value(), bb[kv.key()])) << kv.key();
    }
  // 4. The layout's own forward on this rank's share equals the one-process forward.
  if (layout.pp == 1) {
    torch::NoGradGuard ng;
    const int64_t b = 2, S = 8;
    auto tokens = random_tokens(layout.dp * b, S, 5).remainder(300);
    auto expected = ref(tokens).logits;
    const auto c = groups->coords();
    auto got = net(tokens.narrow(0, c.dp * b, b)).logits;
    EXPECT_LT(rel_err(got, expected.narrow(0, c.dp * b, b)), 1e-10);
  }
}

TEST(HfMultiRank, CheckpointLoadsIntoLayoutsOnFourRanks) {
  testing::run_on_ranks(4, [](testing::RankContext& ctx) {
    at::set_num_threads(1);
    int64_t run = 0;
    for (auto f : moe_families()) {
      check_family(ctx.world, f, ParallelConfig{1, 4, 1, 4, 1}, run++);  // ep 4
      check_family(ctx.world, f, ParallelConfig{2, 2, 1, 2, 2}, run++);  // tp = etp 2, ep 2
      check_family(ctx.world, f, ParallelConfig{1, 2, 2, 2, 1}, run++);  // pp 2, ep 2
    }
  });
}

}  // namespace
}  // namespace hybridmoe
