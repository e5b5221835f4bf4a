// checkpoint_convert_dist_test.cpp — the trainer's checkpoints load into other layouts, on 1, 2
// and 4 ranks: a run resumed under another layout follows the loss curve of an uninterrupted run
// under that layout (the cases are listed at the test).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>

#include "hybridmoe/train.h"
#include "support/multirank.h"
#include "train/train_fixtures.h"

namespace hybridmoe {
namespace {

namespace fs = std::filesystem;

using testing::test_dir;
using testing::tiny_config;

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
