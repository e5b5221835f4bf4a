// exchange_dist_test.cpp — self-describing tests of the expert-parallel exchange: each rank fills
// its tokens with (rank, token index); after dispatch every row sits where its routing says, in the
// documented order (expert, then source rank, then token); after the way back the input returns,
// gradients included. Tokens per rank differ, one rank has none, some experts get nothing.
#include <gtest/gtest.h>

#include "hybridmoe/collectives.h"
#include "hybridmoe/detail/exchange.h"
#include "support/compare.h"
#include "support/multirank.h"

namespace hybridmoe {
namespace {

using testing::identical;
using testing::RankContext;
using testing::run_on_ranks;

constexpr int64_t kExperts = 8;
const std::vector<int64_t> kTokens = {5, 3, 0, 7};  // tokens of each rank

// The routing under test: top-1, expert of (rank, t) = (3 * rank + t) % 5 — experts 5..7 idle.
int64_t expert_of(int64_t rank, int64_t t) {
  return (3 * rank + t) % 5;
}

// x: [T, 2] with row t = (rank, t).
torch::Tensor tokens_of(int64_t rank) {
  const int64_t T = kTokens[rank];
  auto x = torch::empty({T, 2}, torch::kFloat64);
  for (int64_t t = 0; t < T; ++t) {
    x[t][0] = static_cast<double>(rank);
    x[t][1] = static_cast<double>(t);
  }
  return x;
}

RouterOutput routing_of(int64_t rank) {
  const int64_t T = kTokens[rank];
  std::vector<int64_t> e(T);
  for (int64_t t = 0; t < T; ++t) e[t] = expert_of(rank, t);
  RouterOutput r;
  r.token_index = torch::arange(T, torch::kInt64);
  r.expert_index = torch::tensor(e, torch::kInt64);
  r.weight = torch::ones({T}, torch::kFloat64);
  return r;
}

TEST(ExpertExchange, RowsLandWhereRoutingSaysAndComeBack) {
  run_on_ranks(4, [](RankContext& ctx) {
    const int64_t me = ctx.rank(), P = ctx.size(), L = kExperts / P;
    auto x = tokens_of(me).requires_grad_(true);
    auto routing = routing_of(me);
    auto plan = make_plan(routing, kTokens[me], kExperts);
    auto xp = make_exchange_plan(plan, ctx.group());
    auto received = exchange_tokens(permute(x, plan), xp, ctx.group());
    // 1. Expected rows: for each local expert, sources in rank order, tokens in order.
    std::vector<double> expect;
    std::vector<int64_t> per_expert(L, 0);
    for (int64_t e = 0; e < L; ++e)
      for (int64_t src = 0; src < P; ++src)
        for (int64_t t = 0; t < kTokens[src]; ++t)
          if (expert_of(src, t) == me * L + e) {
            expect.push_back(static_cast<double>(src));
            expect.push_back(static_cast<double>(t));
            ++per_expert[e];
          }
    const int64_t R = static_cast<int64_t>(expect.size()) / 2;
    EXPECT_TRUE(identical(received.detach(), torch::tensor(expect, torch::kFloat64).view({R, 2})))
        << "rank " << me;
    EXPECT_EQ(xp.local_counts, per_expert);
    // 2. The way back returns every row to its token; top-1 unpermute is the identity.
    auto back = unpermute(exchange_back(received, xp, ctx.group()), plan, /*weighted=*/false);
    EXPECT_TRUE(identical(back.detach(), x.detach()));
    // 3. Gradients: each received row gets a gradient naming (receiving rank, row); the rows
    //    describe themselves, so the gathered (row, tag) pairs say what every token must get back.
    auto tag = (torch::arange(R, torch::kFloat64) + 1000.0 * me).unsqueeze(1).expand({R, 2});
    (received * tag).sum().backward();
    auto all_rows = dist::all_gather_rows(received.detach().contiguous(), ctx.group());
    auto all_tags = dist::all_gather_rows(tag.contiguous(), ctx.group());
    int64_t seen = 0;
    for (int64_t i = 0; i < all_rows.size(0); ++i) {
      if (all_rows[i][0].item<double>() != static_cast<double>(me)) continue;
      const auto t = static_cast<int64_t>(all_rows[i][1].item<double>());
      EXPECT_DOUBLE_EQ(x.grad()[t][0].item<double>(), all_tags[i][0].item<double>()) << t;
      EXPECT_DOUBLE_EQ(x.grad()[t][1].item<double>(), all_tags[i][1].item<double>()) << t;
      ++seen;
    }
    EXPECT_EQ(seen, kTokens[me]);
  });
}

}  // namespace
}  // namespace hybridmoe
