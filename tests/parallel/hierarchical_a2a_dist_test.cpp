// hierarchical_a2a_dist_test.cpp — the two-level all-to-all against the flat one on 4 ranks whose
// "nodes" are blocks of 1, 2 or 4 world ranks (the algorithm only reads ranks per node, so one
// host can play several nodes): forward results and input gradients equal bit for bit in float64
// for uneven splits, zero splits and an exchange that sends nothing; the cross-node traffic
// equals what the split matrix says (rows of each node pair in one message); nodes holding
// different numbers of members are refused; a recomputed forward replays the taped result.
#include <gtest/gtest.h>

#include "hybridmoe/collectives.h"
#include "hybridmoe/comm_stats.h"
#include "hybridmoe/detail/comm_tape.h"
#include "hybridmoe/detail/hierarchical_all_to_all.h"
#include "support/multirank.h"

namespace hybridmoe {
namespace {

using testing::RankContext;
using testing::run_on_ranks;
using Matrix = std::vector<std::vector<int64_t>>;  // M[source][destination] rows

// Uneven counts with zeros: rows from s to d, the same on every rank.
Matrix uneven(int64_t P) {
  Matrix m(P, std::vector<int64_t>(P));
  for (int64_t s = 0; s < P; ++s)
    for (int64_t d = 0; d < P; ++d) m[s][d] = (3 * s + 5 * d + s * d) % 4;  // 0..3
  return m;
}

void check_against_flat(RankContext& ctx, const Matrix& m, int64_t per_node) {
  const dist::Group& g = ctx.group();
  const int64_t P = g.size(), me = g.rank;
  std::vector<int64_t> in(P), out(P);
  for (int64_t k = 0; k < P; ++k) {
    in[k] = m[me][k];
    out[k] = m[k][me];
  }
  int64_t rows = 0;
  for (int64_t v : in) rows += v;
  // Rows that say where they come from: 100 * source + index, 3 columns.
  auto base = (torch::arange(rows, torch::kFloat64) + 100.0 * static_cast<double>(me))
                  .unsqueeze(1)
                  .repeat({1, 3}) +
              torch::arange(3, torch::kFloat64) / 7.0;
  auto x1 = base.clone().requires_grad_(true);
  auto x2 = base.clone().requires_grad_(true);
  auto flat = dist::all_to_all(x1, out, in, g);
  dist::CrossNodeTraffic traffic;
  auto two_level = dist::hierarchical_all_to_all(x2, out, in, g, per_node, &traffic);
  ASSERT_EQ(flat.sizes(), two_level.sizes());
  EXPECT_TRUE(torch::equal(flat, two_level)) << "per node " << per_node;
  auto grad = torch::sin(torch::arange(flat.numel(), torch::kFloat64)).view(flat.sizes());
  flat.backward(grad);
  two_level.backward(grad);
  EXPECT_TRUE(torch::equal(x1.grad(), x2.grad())) << "per node " << per_node;
  // Cross-node traffic, from the matrix: to (n2, l) everything node n sends there.
  const int64_t G = std::min(per_node, P), n = me / G, l = me % G;
  dist::CrossNodeTraffic expected;
  for (int64_t n2 = 0; n2 < P / G; ++n2) {
    if (n2 == n) continue;
    int64_t r = 0;
    for (int64_t l1 = 0; l1 < G; ++l1) r += m[n * G + l1][n2 * G + l];
    expected.bytes += r * 3 * 8;
    expected.messages += r > 0;
  }
  EXPECT_EQ(traffic.bytes, expected.bytes) << "per node " << per_node;
  EXPECT_EQ(traffic.messages, expected.messages) << "per node " << per_node;
  const auto f = dist::flat_cross_node_traffic(in, 3 * 8, g, per_node);
  int64_t flat_bytes = 0, flat_messages = 0;
  for (int64_t k = 0; k < P; ++k) {
    if (k / G == n || in[k] == 0) continue;
    flat_bytes += in[k] * 3 * 8;
    flat_messages += 1;
  }
  EXPECT_EQ(f.bytes, flat_bytes);
  EXPECT_EQ(f.messages, flat_messages);
}

TEST(HierarchicalAllToAll, EqualsFlatBitForBit) {
  run_on_ranks(4, [](RankContext& ctx) {
    for (int64_t per_node : {1, 2, 4}) {
      check_against_flat(ctx, uneven(4), per_node);
      check_against_flat(ctx, Matrix(4, std::vector<int64_t>(4, 0)), per_node);  // nothing
      Matrix one_sender(4, std::vector<int64_t>(4, 0));
      one_sender[3] = {2, 0, 1, 5};  // only rank 3 sends, nothing to rank 1
      check_against_flat(ctx, one_sender, per_node);
    }
  });
}

TEST(HierarchicalAllToAll, RecomputeReplaysTheTapedResult) {
  run_on_ranks(4, [](RankContext& ctx) {
    const dist::Group& g = ctx.group();
    const Matrix m = uneven(4);
    const int64_t me = g.rank;
    std::vector<int64_t> in(4), out(4);
    for (int64_t k = 0; k < 4; ++k) {
      in[k] = m[me][k];
      out[k] = m[k][me];
    }
    int64_t rows = 0;
    for (int64_t v : in) rows += v;
    auto x = torch::arange(rows * 2, torch::kFloat64).view({rows, 2}) + 100.0 * me;
    // 1. The first forward records its result on the tape.
    dist::CommTape tape;
    torch::Tensor recorded;
    {
      dist::CommTapeScope record(&tape, dist::CommTape::Mode::kRecord);
      recorded = dist::hierarchical_all_to_all(x, out, in, g, 2);
    }
    EXPECT_EQ(tape.size(), 1);
    // 2. The recomputed forward takes it from the tape and sends nothing.
    auto x2 = x.clone().requires_grad_(true);
    dist::reset_comm_stats();
    torch::Tensor replayed;
    {
      dist::CommTapeScope replay(&tape, dist::CommTape::Mode::kReplay);
      replayed = dist::hierarchical_all_to_all(x2, out, in, g, 2);
    }
    EXPECT_EQ(dist::comm_stats()["p2p_send"].calls, 0);
    EXPECT_EQ(tape.remaining(), 0);
    EXPECT_TRUE(torch::equal(replayed, recorded));
    // 3. Its backward is still the real conjugate exchange: the flat one's gradient.
    auto x3 = x.clone().requires_grad_(true);
    auto flat = dist::all_to_all(x3, out, in, g);
    auto grad = torch::cos(torch::arange(flat.numel(), torch::kFloat64)).view(flat.sizes());
    flat.backward(grad);
    replayed.backward(grad);
    EXPECT_TRUE(torch::equal(x2.grad(), x3.grad()));
  });
}

TEST(HierarchicalAllToAll, RefusesUnevenNodes) {
  run_on_ranks(4, [](RankContext& ctx) {
    // Nodes of 3 world ranks: 3 members on the first node, 1 on the second.
    auto x = torch::zeros({4, 1}, torch::kFloat64);
    EXPECT_THROW(
        {
          try {
            dist::hierarchical_all_to_all(x, {1, 1, 1, 1}, {1, 1, 1, 1}, ctx.group(), 3);
          } catch (const c10::Error& e) {
            EXPECT_NE(std::string(e.what_without_backtrace())
                          .find("group 'world' of 4 members has 3 on its first node (nodes of 3 "
                                "world ranks); every node should hold the same number of them"),
                      std::string::npos)
                << e.what_without_backtrace();
            throw;
          }
        },
        c10::Error);
  });
}

}  // namespace
}  // namespace hybridmoe
