// collectives_dist_test.cpp — the collectives on 2, 4 and 8 real ranks (Gloo over loopback, one
// thread each): self-describing all-to-all with uneven and zero splits and its backward, uneven
// all-gather / reduce-scatter, the g/f pair's gradients, count exchange, coalesced all-reduce and
// broadcast, and ParallelGroups whose process groups connect exactly the listed ranks.
#include <numeric>

#include <gtest/gtest.h>

#include "hybridmoe/collectives.h"
#include "hybridmoe/parallel.h"
#include "support/multirank.h"

namespace hybridmoe {
namespace {

using testing::RankContext;
using testing::run_on_ranks;

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

/// Rows rank `src` sends to rank `dst` out of `p`: uneven, with zeros; the last rank sends
/// nothing and rank 0 receives nothing.
int64_t rows_sent(int64_t src, int64_t dst, int64_t p) {
  if (src == p - 1 || dst == 0) return 0;
  return (src + 2 * dst) % 3;
}

void check_all_to_all(RankContext& ctx) {
  const dist::Group& g = ctx.group();
  const int64_t p = g.size(), me = g.rank;
  // 1. Each input row says where it comes from: [source rank, row index, destination rank].
  std::vector<int64_t> input_splits, output_splits;
  std::vector<double> values;
  int64_t row = 0;
  for (int64_t dst = 0; dst < p; ++dst) {
    input_splits.push_back(rows_sent(me, dst, p));
    output_splits.push_back(rows_sent(dst, me, p));
    for (int64_t k = 0; k < input_splits.back(); ++k, ++row) {
      values.insert(values.end(), {double(me), double(row), double(dst)});
    }
  }
  auto x = torch::tensor(values, kF64).view({row, 3}).requires_grad_();

  // 2. The count exchange tells each rank what it will receive.
  EXPECT_EQ(dist::exchange_counts(input_splits, g), output_splits);

  // 3. Every received row sits in the block of its source, in the source's order.
  auto y = dist::all_to_all(x, output_splits, input_splits, g);
  ASSERT_EQ(y.size(0), std::accumulate(output_splits.begin(), output_splits.end(), int64_t{0}));
  int64_t out_row = 0;
  for (int64_t src = 0; src < p; ++src) {
    int64_t offset = 0;  // index of src's first row for me
    for (int64_t d = 0; d < me; ++d) offset += rows_sent(src, d, p);
    for (int64_t k = 0; k < output_splits[src]; ++k, ++out_row) {
      EXPECT_EQ(y[out_row][0].item<double>(), src) << "row " << out_row;
      EXPECT_EQ(y[out_row][1].item<double>(), offset + k) << "row " << out_row;
      EXPECT_EQ(y[out_row][2].item<double>(), me) << "row " << out_row;
    }
  }

  // 4. Backward: each row's gradient returns to the row it came from.
  (y * y).sum().backward();
  EXPECT_TRUE(torch::equal(x.grad(), 2 * x.detach()));

  // 5. Tensor form of the count exchange, two entries per peer.
  std::vector<int64_t> two;
  for (int64_t dst = 0; dst < p; ++dst) two.insert(two.end(), {me * 10 + dst, -1});
  auto got = dist::exchange_counts(torch::tensor(two, torch::kInt64), g);
  for (int64_t src = 0; src < p; ++src) {
    EXPECT_EQ(got[2 * src].item<int64_t>(), src * 10 + me);
    EXPECT_EQ(got[2 * src + 1].item<int64_t>(), -1);
  }
}

TEST(Collectives, AllToAll2) {
  run_on_ranks(2, check_all_to_all);
}
TEST(Collectives, AllToAll4) {
  run_on_ranks(4, check_all_to_all);
}
TEST(Collectives, AllToAll8) {
  run_on_ranks(8, check_all_to_all);
}

void check_gather_scatter(RankContext& ctx) {
  const dist::Group& g = ctx.group();
  const int64_t p = g.size(), me = g.rank;
  // 1. all_gather_rows with uneven rows (rank 0 has none): rows [rank, i].
  std::vector<int64_t> counts;
  for (int64_t r = 0; r < p; ++r) counts.push_back(r % 3);
  auto x = torch::stack(
               {torch::full({counts[me]}, double(me), kF64), torch::arange(counts[me], kF64)}, 1)
               .requires_grad_();
  for (bool given : {false, true}) {
    auto all = dist::all_gather_rows(x, g, given ? counts : std::vector<int64_t>{});
    int64_t row = 0;
    for (int64_t r = 0; r < p; ++r) {
      for (int64_t i = 0; i < counts[r]; ++i, ++row) {
        EXPECT_EQ(all[row][0].item<double>(), r);
        EXPECT_EQ(all[row][1].item<double>(), i);
      }
    }
    ASSERT_EQ(all.size(0), row);
    // Backward: the loss weighs global row j by (j + 100 * rank); my rows collect every rank's.
    auto w = (torch::arange(row, kF64) + 100.0 * me).unsqueeze(1).expand({row, 2});
    (all * w).sum().backward();
    int64_t first = 0;
    for (int64_t r = 0; r < me; ++r) first += counts[r];
    auto expected = (p * (torch::arange(counts[me], kF64) + first) + 100.0 * p * (p - 1) / 2)
                        .unsqueeze(1)
                        .expand({counts[me], 2});
    EXPECT_TRUE(torch::allclose(x.grad(), expected)) << x.grad() << expected;
    x.mutable_grad().reset();
  }

  // 2. reduce_scatter_rows with uneven blocks: x_m[i] = (m + 1) * (i + 1).
  std::vector<int64_t> blocks;
  for (int64_t r = 0; r < p; ++r) blocks.push_back((r + 1) % 3);  // includes zero blocks
  const int64_t n = std::accumulate(blocks.begin(), blocks.end(), int64_t{0});
  auto full = ((me + 1.0) * (torch::arange(n, kF64) + 1)).unsqueeze(1).repeat({1, 2});
  full.requires_grad_();
  auto mine = dist::reduce_scatter_rows(full, g, blocks);
  int64_t first = 0;
  for (int64_t r = 0; r < me; ++r) first += blocks[r];
  auto expected = ((torch::arange(blocks[me], kF64) + first + 1) * (p * (p + 1) / 2.0))
                      .unsqueeze(1)
                      .repeat({1, 2});
  EXPECT_TRUE(torch::equal(mine, expected)) << mine << expected;
  // Backward: rank j's gradient (j + 1) lands on block j of every rank's input.
  (mine * (me + 1.0)).sum().backward();
  std::vector<double> grad_rows;
  for (int64_t r = 0; r < p; ++r) grad_rows.insert(grad_rows.end(), blocks[r], r + 1.0);
  EXPECT_TRUE(
      torch::equal(full.grad(), torch::tensor(grad_rows, kF64).unsqueeze(1).repeat({1, 2})));

  // 3. Without rows_per_rank the rows split evenly (the first n % p ranks get one more).
  auto even = dist::reduce_scatter_rows(torch::ones({2 * p + 1, 3}, kF64), g);
  EXPECT_EQ(even.size(0), dist::even_split(2 * p + 1, p)[me]);
  EXPECT_TRUE(torch::equal(even, torch::full({even.size(0), 3}, double(p), kF64)));
}

TEST(Collectives, GatherScatterRows2) {
  run_on_ranks(2, check_gather_scatter);
}
TEST(Collectives, GatherScatterRows4) {
  run_on_ranks(4, check_gather_scatter);
}
TEST(Collectives, GatherScatterRows8) {
  run_on_ranks(8, check_gather_scatter);
}

void check_reduce_pair(RankContext& ctx) {
  const dist::Group& g = ctx.group();
  const double p = g.size(), me = g.rank;
  // g: forward sums, backward passes the gradient through.
  auto x = torch::full({2, 3}, me + 1, kF64).requires_grad_();
  auto y = dist::all_reduce_sum(x, g);
  EXPECT_TRUE(torch::equal(y, torch::full({2, 3}, p * (p + 1) / 2, kF64)));
  EXPECT_TRUE(torch::equal(x, torch::full({2, 3}, me + 1, kF64)));  // input untouched
  (y * (me + 1)).sum().backward();
  EXPECT_TRUE(torch::equal(x.grad(), torch::full({2, 3}, me + 1, kF64)));
  // f: forward is the identity, backward sums the gradient.
  auto a = torch::full({4}, me, kF64).requires_grad_();
  auto b = dist::copy_to_group(a, g);
  EXPECT_TRUE(torch::equal(b, a));
  (b * (me + 1)).sum().backward();
  EXPECT_TRUE(torch::equal(a.grad(), torch::full({4}, p * (p + 1) / 2, kF64)));
}

TEST(Collectives, AllReduceAndCopyToGroup4) {
  run_on_ranks(4, check_reduce_pair);
}

void check_coalesced(RankContext& ctx) {
  const dist::Group& g = ctx.group();
  const double p = g.size(), m = g.rank;
  auto base = [](int64_t i) { return torch::arange(i, i + 6, kF64).view({2, 3}); };
  // Mixed dtypes, a non-contiguous view, an undefined entry, and 40-byte buckets.
  auto storage = (m + 1) * base(10);
  std::vector<torch::Tensor> ts = {(m + 1) * base(0), torch::full({5}, int64_t(m + 1)),
                                   torch::Tensor(), storage.t(),
                                   ((m + 1) * base(20)).to(torch::kFloat32)};
  dist::CoalesceOptions small;
  small.bucket_bytes = 40;
  dist::all_reduce_coalesced_(ts, g, small);
  const double s = p * (p + 1) / 2;
  EXPECT_TRUE(torch::equal(ts[0], s * base(0)));
  EXPECT_TRUE(torch::equal(ts[1], torch::full({5}, int64_t(s))));
  EXPECT_FALSE(ts[2].defined());
  EXPECT_TRUE(torch::equal(storage, s * base(10)));  // written through the view
  EXPECT_TRUE(torch::equal(ts[4], (s * base(20)).to(torch::kFloat32)));
  // Average, one big bucket.
  std::vector<torch::Tensor> avg = {(m + 1) * base(0)};
  dist::all_reduce_coalesced_(avg, g, {int64_t{1} << 20, /*average=*/true});
  EXPECT_TRUE(torch::allclose(avg[0], (p + 1) / 2 * base(0)));
  // Broadcast from group rank 1 (parameters with requires_grad are written in place).
  std::vector<torch::Tensor> params = {((m + 1) * base(0)).requires_grad_(),
                                       torch::full({3}, int64_t(m))};
  dist::broadcast_(params, 1, g, small);
  EXPECT_TRUE(torch::equal(params[0], 2 * base(0)));
  EXPECT_TRUE(torch::equal(params[1], torch::full({3}, int64_t{1})));
  dist::barrier(g);
  EXPECT_EQ(dist::all_gather_counts(g.rank * 2, g)[g.size() - 1], 2 * (g.size() - 1));
}

TEST(Collectives, CoalescedAllReduceAndBroadcast4) {
  run_on_ranks(4, check_coalesced);
}

/// Builds the groups of `config` and checks every group: its ranks, this rank's index, and that
/// an all-reduce over its process group sums exactly the world ranks it lists.
void check_groups(RankContext& ctx, const ParallelConfig& config) {
  auto groups = ParallelGroups::build(config, ctx.world);
  EXPECT_EQ(groups.world_rank, ctx.rank());
  for (GroupKind kind : all_group_kinds()) {
    const dist::Group& g = groups.get(kind);
    const auto expected = group_ranks(config, kind, ctx.rank());
    EXPECT_EQ(g.name, to_string(kind));
    EXPECT_EQ(g.ranks, expected) << to_string(kind);
    ASSERT_TRUE(g.is_member());
    EXPECT_EQ(g.ranks[g.rank], ctx.rank());
    ASSERT_TRUE(g.pg);
    EXPECT_EQ(g.pg->getSize(), g.size());
    EXPECT_EQ(g.pg->getRank(), g.rank);
    auto sum = dist::all_reduce_sum(torch::full({1}, double(ctx.rank()), kF64), g);
    const double expected_sum = std::accumulate(expected.begin(), expected.end(), 0.0);
    EXPECT_EQ(sum.item<double>(), expected_sum) << to_string(kind);
  }
  // Kinds with the same members share one process group.
  EXPECT_EQ(groups.slice.pg.get(), groups.tp.pg.get());
  // A second build on the same world gets fresh store keys and works too.
  auto again = ParallelGroups::build(config, ctx.world);
  auto sum = dist::all_reduce_sum(torch::ones({1}, kF64), again.ep);
  EXPECT_EQ(sum.item<double>(), double(config.ep));
}

TEST(ParallelGroupsBuild, Tp2Dp2Ep2Etp1) {
  run_on_ranks(4, [](RankContext& ctx) { check_groups(ctx, {2, 2, 1, 2, 1}); });
}

TEST(ParallelGroupsBuild, Tp2Dp2Pp2Ep2Etp2) {
  run_on_ranks(8, [](RankContext& ctx) { check_groups(ctx, {2, 2, 2, 2, 2}); });
}

}  // namespace
}  // namespace hybridmoe
