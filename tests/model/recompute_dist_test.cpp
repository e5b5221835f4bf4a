// recompute_dist_test.cpp — activation checkpointing on 4 ranks, the communication cache: the
// recomputation repeats no collective (the same all-to-all calls and bytes per step as without
// recompute), while recompute without the cache repeats them; loss and gradients equal the run
// without recompute.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "hybridmoe/collectives.h"
#include "hybridmoe/comm_stats.h"
#include "hybridmoe/model.h"
#include "hybridmoe/recompute.h"
#include "model/gpt_fixtures.h"
#include "support/multirank.h"

namespace hybridmoe {
namespace {

using testing::expect_same_step;
using testing::one_step;
using testing::random_tokens;
using testing::tiny_gpt_options;

// Calls and bytes of the token all-to-alls (expert exchange, count exchange, overlapped chunks).
std::pair<int64_t, int64_t> all_to_all_totals(const std::map<std::string, dist::OpStats>& comm) {
  const dist::OpStats t = dist::total_of(comm, dist::is_token_exchange);
  return {t.calls, t.bytes_sent};
}

int64_t all_calls(const std::map<std::string, dist::OpStats>& comm) {
  return dist::total_of(comm).calls;
}

struct DistCase {
  ParallelConfig layout;
  GPTOptions options;
};

void check_recompute_layout(dist::World& world, const DistCase& c, int64_t run_id) {
  const std::string tag = "recompute" + std::to_string(run_id);
  std::vector<int64_t> members(c.layout.world_size());
  for (int64_t r = 0; r < c.layout.world_size(); ++r) members[r] = r;
  auto sub = world.new_group(tag, members);
  auto groups = std::make_shared<ParallelGroups>(
      ParallelGroups::build(c.layout, sub, world.store(), false, tag));
  torch::manual_seed(11);
  GPT full(c.options.single_process());
  full->to(torch::kFloat64);
  GPT net(c.options, groups);
  net->to(torch::kFloat64);
  net->load_shard_from(*full);
  const auto coords = groups->coords();
  auto tokens = random_tokens(2, 8, 30 + coords.dp), targets = random_tokens(2, 8, 40 + coords.dp);
  auto want = one_step(*net, tokens, targets);
  const auto [want_calls, want_bytes] = all_to_all_totals(want.comm);
  const std::string name = c.layout.to_string() + " " + to_string(c.options.expert_layout()) +
                           " overlap=" + std::to_string(c.options.a2a_overlap_degree());
  EXPECT_GT(want_calls, 0) << name;
  for (auto mode : {Recompute::kBlock, Recompute::kMoE})
    for (bool cache : {true, false}) {
      net->set_recompute(mode, cache);
      auto got = one_step(*net, tokens, targets);
      const std::string what =
          name + " recompute=" + recompute_name(mode) + (cache ? " cached" : " repeated");
      expect_same_step(got, want, what);
      const auto [calls, bytes] = all_to_all_totals(got.comm);
      if (cache) {
        // Nothing is exchanged twice: every collective, the token all-to-alls included.
        EXPECT_EQ(calls, want_calls) << what;
        EXPECT_EQ(bytes, want_bytes) << what;
        EXPECT_EQ(all_calls(got.comm), all_calls(want.comm)) << what;
      } else {
        EXPECT_GT(calls, want_calls) << what;
        EXPECT_GT(bytes, want_bytes) << what;
      }
    }
  net->set_recompute(Recompute::kNone);
}

TEST(RecomputeMultiRank, CachedRecomputeRepeatsNoExchange) {
  testing::run_on_ranks(4, [](testing::RankContext& ctx) {
    at::set_num_threads(1);
    auto o = tiny_gpt_options(/*moe_every=*/1);  // every block an MoE layer
    std::vector<DistCase> cases = {
        {ParallelConfig{2, 2, 1, 2, 1}, o},                                    // tp, slices, ep
        {ParallelConfig{2, 2, 1, 2, 2}, o},                                    // etp gathers
        {ParallelConfig{1, 4, 1, 4, 1}, GPTOptions(o).a2a_overlap_degree(2)},  // overlapped
        {ParallelConfig{1, 4, 1, 1, 1},
         GPTOptions(o).num_experts(2).expert_layout(ExpertLayout::kAdaptive).adaptive_r(2)},
    };
    for (size_t i = 0; i < cases.size(); ++i)
      check_recompute_layout(ctx.world, cases[i], static_cast<int64_t>(i));
  });
}

}  // namespace
}  // namespace hybridmoe
