// recompute_test.cpp — activation checkpointing: checkpoint() against the plain computation, the
// GPT with recompute = block | moe against recompute = none (same loss, same gradients, the
// noisy gate's random draws replayed), and on 4 ranks the communication cache: the recomputation
// repeats no collective (the same all-to-all calls and bytes per step as without recompute),
// while recompute without the cache repeats them.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "hybridmoe/collectives.h"
#include "hybridmoe/comm_stats.h"
#include "hybridmoe/detail/comm_tape.h"
#include "hybridmoe/model.h"
#include "hybridmoe/recompute.h"
#include "model/gpt_fixtures.h"
#include "support/compare.h"
#include "support/multirank.h"

namespace hybridmoe {
namespace {

using testing::random_tokens;
using testing::rel_err;
using testing::throws_with;

// Every block an MoE layer.
GPTOptions small_options(const std::string& gate_type = "topk") {
  return testing::tiny_gpt_options(/*moe_every=*/1, gate_type);
}

// ---- checkpoint() -----------------------------------------------------------------------------

TEST(Checkpoint, EqualsThePlainComputation) {
  torch::manual_seed(3);
  auto w = torch::randn({5, 4}, torch::kFloat64).requires_grad_(true);
  auto region = [w](const std::vector<torch::Tensor>& in) {
    auto h = torch::tanh(torch::matmul(in[0], w));
    return std::vector<torch::Tensor>{h * in[1], h.sum()};
  };
  auto x = torch::randn({3, 5}, torch::kFloat64).requires_grad_(true);
  auto s = torch::randn({3, 4}, torch::kFloat64);  // needs no gradient
  auto dy = torch::randn({3, 4}, torch::kFloat64);
  // 1. Plain.
  auto plain = region({x, s});
  (plain[0] * dy).sum().add(plain[1] * 0.5).backward();
  auto dx = x.grad().clone(), dw = w.grad().clone();
  x.mutable_grad().reset();
  w.mutable_grad().reset();
  // 2. Checkpointed: the same outputs, the same gradients (the region is recomputed).
  int calls = 0;
  auto outs = checkpoint(
      [&calls, region](const std::vector<torch::Tensor>& in) {
        ++calls;
        return region(in);
      },
      {x, s});
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(torch::equal(outs[0], plain[0].detach()));
  (outs[0] * dy).sum().add(outs[1] * 0.5).backward();
  EXPECT_EQ(calls, 2);
  EXPECT_TRUE(torch::equal(x.grad(), dx));
  EXPECT_TRUE(torch::equal(w.grad(), dw));
  // 3. Parameters get their gradients even when no input needs one.
  w.mutable_grad().reset();
  auto frozen = checkpoint(region, {x.detach(), s});
  frozen[1].backward();
  ASSERT_TRUE(w.grad().defined());
  // 4. Outside grad mode the region simply runs.
  torch::NoGradGuard no_grad;
  auto inference = checkpoint(region, {x, s});
  EXPECT_FALSE(inference[0].requires_grad());
}

TEST(Checkpoint, RefusesBadUse) {
  auto x = torch::ones({2}, torch::kFloat64).requires_grad_(true);
  auto identity = [](const std::vector<torch::Tensor>& in) { return in; };
  EXPECT_TRUE(throws_with([&] { checkpoint(identity, {x}); }, "is one of the inputs"));
  EXPECT_TRUE(throws_with([&] { checkpoint(identity, {torch::ones({2}, torch::kInt64)}); },
                          "input 0 must be a defined floating-point tensor, got Long"));
  EXPECT_TRUE(throws_with([] { parse_recompute("all"); },
                          "recompute must be \"none\", \"block\" or \"moe\", got \"all\""));
}

TEST(CommTape, ReplayChecksTheOrderOfCollectives) {
  dist::CommTape tape;
  tape.record("all_to_all", torch::ones({2, 3}));
  tape.record("all_gather_rows", torch::zeros({4}));
  EXPECT_EQ(tape.bytes(), 2 * 3 * 4 + 4 * 4);
  EXPECT_TRUE(torch::equal(tape.replay("all_to_all"), torch::ones({2, 3})));
  EXPECT_EQ(tape.remaining(), 1);
  EXPECT_TRUE(throws_with([&] { tape.replay("all_reduce_sum"); },
                          "collective 1 of the recomputed forward is 'all_reduce_sum' but the "
                          "original forward ran 'all_gather_rows'"));
  tape.replay("all_gather_rows");
  EXPECT_TRUE(throws_with([&] { tape.replay("all_to_all"); }, "after all 2 collectives"));
}

// ---- the GPT on one process -------------------------------------------------------------------

struct StepResult {
  double loss = 0.0;
  std::map<std::string, torch::Tensor> grads;
  torch::Tensor rng_after;  // a draw of the global generator after the step
  std::map<std::string, dist::OpStats> comm;
};

StepResult one_step(GPTImpl& model, const torch::Tensor& tokens, const torch::Tensor& targets) {
  model.zero_grad();
  dist::reset_comm_stats();
  torch::manual_seed(77);  // the noisy gate draws from the global generator
  auto out = model.forward(tokens);
  auto loss = lm_loss(out.logits, targets) + out.aux_loss;
  loss.backward();
  StepResult r;
  r.loss = loss.item<double>();
  for (auto& kv : model.named_parameters()) {
    EXPECT_TRUE(kv.value().grad().defined()) << kv.key();
    if (kv.value().grad().defined()) r.grads[kv.key()] = kv.value().grad().clone();
  }
  r.rng_after = torch::randn({4}, torch::kFloat64);
  r.comm = dist::comm_stats();
  return r;
}

void expect_same_step(const StepResult& got, const StepResult& want, const std::string& what) {
  EXPECT_EQ(got.loss, want.loss) << what;
  ASSERT_EQ(got.grads.size(), want.grads.size()) << what;
  for (const auto& kv : want.grads)
    EXPECT_LT(rel_err(got.grads.at(kv.first), kv.second), 1e-12) << what << " " << kv.first;
}

TEST(Recompute, BlockAndMoEEqualNoRecomputeOnOneProcess) {
  for (const std::string gate : {"topk", "noisy"}) {
    auto o = small_options(gate);
    torch::manual_seed(5);
    GPT model(o);
    model->to(torch::kFloat64);
    auto tokens = random_tokens(2, 8, 1), targets = random_tokens(2, 8, 2);
    auto want = one_step(*model, tokens, targets);
    for (auto mode : {Recompute::kBlock, Recompute::kMoE}) {
      model->set_recompute(mode);
      auto got = one_step(*model, tokens, targets);
      const std::string what = gate + " recompute=" + recompute_name(mode);
      expect_same_step(got, want, what);
      // The generators continue as if nothing had been recomputed.
      EXPECT_TRUE(torch::equal(got.rng_after, want.rng_after)) << what;
    }
    model->set_recompute(Recompute::kNone);
  }
}

TEST(Recompute, ConfigOptionReachesTheBlocks) {
  GPT model(small_options().recompute(parse_recompute("moe")));
  for (auto& b : model->block_list) EXPECT_EQ(b->recompute(), Recompute::kMoE);
  EXPECT_TRUE(throws_with([] { GPT bad(small_options().recompute(parse_recompute("layers"))); },
                          "\"layers\""));
}

// ---- on 4 ranks: the communication cache ------------------------------------------------------

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
    auto o = small_options();
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
