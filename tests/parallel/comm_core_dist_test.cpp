// comm_core_dist_test.cpp — the comm core (src/parallel/comm/work.cpp) on real ranks: the
// asynchronous all-to-all's handle (received rows, repeated wait, a timeout naming the operation
// and group), the recompute tape at the handle (a replay does not communicate; Taping::kNever
// always does), the count gathers, and bfloat16 through every collective over Gloo, compared with
// float32.
#include <gtest/gtest.h>

#include "hybridmoe/collectives.h"
#include "hybridmoe/detail/comm_tape.h"
#include "support/multirank.h"

namespace hybridmoe {
namespace {

using testing::RankContext;
using testing::run_on_ranks;

TEST(CommCore, AsyncAllToAllDeliversSelfDescribingRowsAndWaitsOnce) {
  run_on_ranks(3, [](RankContext& ctx) {
    const auto& g = ctx.group();
    const int64_t p = g.size(), me = g.rank;
    // Rank me sends me + dst rows to dst, each row [me, dst, k].
    std::vector<int64_t> in_splits, out_splits;
    std::vector<double> values;
    for (int64_t dst = 0; dst < p; ++dst) {
      in_splits.push_back(me + dst);
      out_splits.push_back(dst + me);
      for (int64_t k = 0; k < me + dst; ++k)
        values.insert(values.end(), {double(me), double(dst), double(k)});
    }
    auto x = torch::tensor(values, torch::kFloat64).view({-1, 3});
    dist::PendingWork work = dist::all_to_all_async("test_async", x, out_splits, in_splits, g);
    EXPECT_FALSE(work.done());
    auto y = work.wait();
    EXPECT_TRUE(work.done());
    EXPECT_TRUE(y.is_same(work.wait()));  // a second wait returns the same result
    int64_t row = 0;
    for (int64_t src = 0; src < p; ++src)
      for (int64_t k = 0; k < out_splits[src]; ++k, ++row) {
        EXPECT_EQ(y[row][0].item<double>(), src);
        EXPECT_EQ(y[row][1].item<double>(), me);
        EXPECT_EQ(y[row][2].item<double>(), k);
      }
    EXPECT_EQ(row, y.size(0));
  });
}

TEST(CommCore, AnUnansweredAsyncAllToAllTimesOutNamingOpAndGroup) {
  run_on_ranks(2, [](RankContext& ctx) {
    auto g = ctx.world.new_group("pairs", {0, 1});
    g.timeout = std::chrono::milliseconds(1500);
    if (ctx.rank() == 1) {
      auto x = torch::ones({2, 2});
      try {
        dist::all_to_all_async("lonely_all_to_all", x, {1, 1}, {1, 1}, g).wait();
        ADD_FAILURE() << "the all-to-all returned without its peer";
      } catch (const c10::Error& e) {
        const std::string what = e.what_without_backtrace();
        for (const char* part : {"lonely_all_to_all", "group 'pairs'", "world ranks [0,1]",
                                 "failed after", "HMOE_TIMEOUT_S"})
          EXPECT_NE(what.find(part), std::string::npos) << part << " not in: " << what;
      }
    }
    dist::barrier(ctx.world.group());
  });
}

TEST(CommCore, TheTapeReplaysAtTheHandleAndNeverTapesBackward) {
  run_on_ranks(2, [](RankContext& ctx) {
    const auto& g = ctx.group();
    auto x = torch::full({2, 1}, static_cast<double>(ctx.rank()), torch::kFloat64);
    dist::CommTape tape;
    torch::Tensor recorded;
    {
      dist::CommTapeScope rec(&tape, dist::CommTape::Mode::kRecord);
      recorded = dist::all_to_all_async("taped", x, {1, 1}, {1, 1}, g).wait();
      // Not taped: communicates and leaves the tape alone.
      dist::all_to_all_async("untaped", x, {1, 1}, {1, 1}, g, dist::Taping::kNever).wait();
    }
    EXPECT_EQ(tape.size(), 1);
    // Only rank 0 replays: if the replay communicated it would wait for rank 1 and time out.
    if (ctx.rank() == 0) {
      dist::CommTapeScope rep(&tape, dist::CommTape::Mode::kReplay);
      auto replayed = dist::all_to_all_async("taped", x, {1, 1}, {1, 1}, g).wait();
      EXPECT_TRUE(torch::equal(replayed, recorded));
      EXPECT_EQ(tape.remaining(), 0);
    }
    dist::barrier(g);
  });
}

TEST(CommCore, AllGatherCountsListsInRankOrder) {
  run_on_ranks(4, [](RankContext& ctx) {
    const auto& g = ctx.group();
    std::vector<int64_t> mine;
    for (int64_t i = 0; i < 3; ++i) mine.push_back(10 * g.rank + i);
    const auto all = dist::all_gather_counts(mine, g);
    ASSERT_EQ(static_cast<int64_t>(all.size()), g.size());
    for (int64_t q = 0; q < g.size(); ++q)
      EXPECT_EQ(all[q], (std::vector<int64_t>{10 * q, 10 * q + 1, 10 * q + 2}));
    EXPECT_EQ(dist::all_gather_counts(g.rank + 5, g), (std::vector<int64_t>{5, 6, 7, 8}));
    const auto none = dist::all_gather_counts(std::vector<int64_t>{}, g);
    EXPECT_EQ(none, std::vector<std::vector<int64_t>>(4));
  });
}

// Small integers: exact in bfloat16, float32 and every sum below; the bfloat16 results must equal
// the float32 ones.
TEST(CommCore, BFloat16CrossesGlooInEveryCollective) {
  run_on_ranks(4, [](RankContext& ctx) {
    const auto& g = ctx.group();
    const int64_t p = g.size(), me = g.rank;
    auto base = (torch::arange(4 * p * 2, torch::kFloat32).view({4 * p, 2}) + 8 * me)
                    .remainder(64)
                    .requires_grad_();
    auto run_all = [&](torch::ScalarType dtype) {
      std::vector<torch::Tensor> out;
      auto x = base.to(dtype);
      const std::vector<int64_t> splits(p, 4);
      out.push_back(dist::all_to_all(x, splits, splits, g));
      out.push_back(dist::all_gather_rows(x.narrow(0, 0, me + 1), g));
      out.push_back(dist::reduce_scatter_rows(x, g));
      out.push_back(dist::all_reduce_sum(x, g));
      std::vector<torch::Tensor> list = {x.detach().clone(), x.detach().narrow(0, 1, 2).clone()};
      dist::all_reduce_coalesced_(list, g);
      out.insert(out.end(), list.begin(), list.end());
      std::vector<torch::Tensor> bcast = {x.detach() + me};
      dist::broadcast_(bcast, /*root=*/2, g);
      out.push_back(bcast[0]);
      auto flat = x.detach().reshape(-1);
      auto counts = dist::even_split(flat.numel(), p);
      auto shard = torch::empty({counts[me]}, flat.options());
      dist::reduce_scatter_flat_(flat, shard, counts, g);
      out.push_back(shard);
      auto gathered = torch::zeros_like(flat);
      dist::all_gather_flat_(gathered, shard, counts, g);
      out.push_back(gathered);
      // Backward of the autograd ones (the conjugate collectives) in the same dtype.
      auto loss = (out[0].sum() + out[1].sum() + out[2].sum() + out[3].sum()).to(torch::kFloat32);
      auto grad = torch::autograd::grad({loss}, {base})[0];
      out.push_back(grad);
      return out;
    };
    auto f32 = run_all(torch::kFloat32);
    auto bf16 = run_all(torch::kBFloat16);
    ASSERT_EQ(f32.size(), bf16.size());
    for (size_t i = 0; i < f32.size(); ++i) {
      EXPECT_EQ(bf16[i].scalar_type(), i + 1 == f32.size() ? torch::kFloat32 : torch::kBFloat16)
          << "result " << i;
      EXPECT_TRUE(torch::equal(bf16[i].to(torch::kFloat32), f32[i].to(torch::kFloat32)))
          << "result " << i;
    }
  });
}

}  // namespace
}  // namespace hybridmoe
