// pipeline_dist_test.cpp — pipeline parallelism on several ranks: the exact pass order of the 1F1B
// and GPipe schedules, activations and gradients that cross the stages (a chain of scalar stages
// with known derivatives), inference through the stages, and GPT pipeline layouts (with tp, dp,
// ep and etp inside the stages) equal to one process in loss and every parameter; a receive
// without a sender times out naming the peer.
#include <gtest/gtest.h>

#include <sstream>

#include "hybridmoe/collectives.h"
#include "hybridmoe/model.h"
#include "hybridmoe/pipeline.h"
#include "hybridmoe/verify.h"
#include "support/multirank.h"

namespace hybridmoe {
namespace {

// The order of passes 1F1B must run on stage s of P with M micro-batches, built from its
// definition: min(P - s - 1, M) warm-up forwards, then pairs, then the remaining backwards.
std::string expected_order(int64_t P, int64_t s, int64_t M, PipelineSchedule schedule) {
  std::vector<std::string> ops;
  if (schedule == PipelineSchedule::kGPipe) {
    for (int64_t m = 0; m < M; ++m) ops.push_back("F" + std::to_string(m));
    for (int64_t m = 0; m < M; ++m) ops.push_back("B" + std::to_string(m));
  } else {
    const int64_t warm = std::min(P - s - 1, M);
    int64_t f = 0, b = 0;
    for (; f < warm; ++f) ops.push_back("F" + std::to_string(f));
    for (; f < M; ++f, ++b) {
      ops.push_back("F" + std::to_string(f));
      ops.push_back("B" + std::to_string(b));
    }
    for (; b < M; ++b) ops.push_back("B" + std::to_string(b));
  }
  std::ostringstream out;
  for (size_t i = 0; i < ops.size(); ++i) out << (i ? " " : "") << ops[i];
  return out.str();
}

// Stage s multiplies its input by w_s = s + 2; the first stage's input of micro-batch m is
// (m + 1) * [1, 2, 3]; the last stage's loss is sum(y) / M. Checks every received activation
// (self-describing payloads), the pass order, the in-flight peak and dL/dw_s.
void check_scalar_chain(const dist::Group& pp, int64_t M, PipelineSchedule schedule) {
  const int64_t P = pp.size(), s = pp.rank;
  auto w = torch::full({}, static_cast<double>(s + 2), torch::kFloat64).requires_grad_(true);
  auto base = torch::tensor({1.0, 2.0, 3.0}, torch::kFloat64);
  double before = 1.0;  // product of the earlier stages' weights
  for (int64_t t = 0; t < s; ++t) before *= static_cast<double>(t + 2);
  PipelineOptions po;
  po.micro_batches = M;
  po.schedule = schedule;
  po.activation_sizes = {3};
  po.activation_options = torch::kFloat64;
  auto stats = run_pipeline(pp, po, [&](int64_t m, const torch::Tensor& in) {
    torch::Tensor x = base * static_cast<double>(m + 1);
    if (s > 0) {
      EXPECT_TRUE(torch::allclose(in, x * before)) << "stage " << s << " micro " << m;
      x = in;
    }
    StageForward f;
    f.output = x * w;
    if (s == P - 1) f.loss = f.output.sum() / static_cast<double>(M);
    return f;
  });
  EXPECT_EQ(stats.order, expected_order(P, s, M, schedule)) << "stage " << s;
  EXPECT_EQ(stats.forwards, M);
  EXPECT_EQ(stats.backwards, M);
  const int64_t peak = schedule == PipelineSchedule::kGPipe ? M : std::min(P - s, M);
  EXPECT_EQ(stats.peak_in_flight, peak) << "stage " << s;
  // dL/dw_s = sum_m sum(x_m) * prod_{t != s} w_t / M, with sum_m (m + 1) = M (M + 1) / 2.
  double others = 1.0;
  for (int64_t t = 0; t < P; ++t)
    if (t != s) others *= static_cast<double>(t + 2);
  const double expected = 6.0 * (M * (M + 1) / 2.0) * others / static_cast<double>(M);
  ASSERT_TRUE(w.grad().defined());
  EXPECT_NEAR(w.grad().item<double>(), expected, 1e-12 * expected) << "stage " << s;
}

TEST(PipelineMultiRank, SchedulesRunTheirOrderAndCarryActivationsAndGradients) {
  testing::run_on_ranks(4, [](testing::RankContext& ctx) {
    at::set_num_threads(1);
    for (int64_t P : {2, 4}) {
      std::vector<int64_t> members(P);
      for (int64_t r = 0; r < P; ++r) members[r] = r;
      auto g = ctx.world.new_group("chain" + std::to_string(P), members);
      if (!g.is_member()) continue;
      for (int64_t M : {1, 3, 6})
        for (auto schedule : {PipelineSchedule::kOneFOneB, PipelineSchedule::kGPipe})
          check_scalar_chain(g, M, schedule);
    }
  });
}

TEST(PipelineMultiRank, ARecvWithoutASenderTimesOutNamingThePeer) {
  testing::run_on_ranks(2, [](testing::RankContext& ctx) {
    auto g = ctx.world.new_group("lonely", {0, 1});
    g.timeout = std::chrono::milliseconds(1500);
    if (ctx.rank() == 1) {
      try {
        dist::recv({2}, torch::kFloat32, 0, 7, g);
        ADD_FAILURE() << "recv returned without a sender";
      } catch (const c10::Error& e) {
        const std::string what = e.what_without_backtrace();
        EXPECT_NE(what.find("peer 0"), std::string::npos) << what;
        EXPECT_NE(what.find("lonely"), std::string::npos) << what;
      }
    }
    dist::barrier(ctx.world.group());
  });
}

TEST(PipelineMultiRank, GptPipelineLayoutsEqualOneProcess) {
  testing::run_on_ranks(4, [](testing::RankContext& ctx) {
    at::set_num_threads(1);
    VerifyOptions o;
    o.steps = 2;
    int64_t run = 0;
    for (auto layout : {ParallelConfig{1, 1, 2, 1, 1}, ParallelConfig{1, 2, 2, 2, 1},
                        ParallelConfig{2, 1, 2, 2, 1}, ParallelConfig{1, 1, 4, 1, 1},
                        ParallelConfig{2, 1, 2, 1, 2}})
      for (auto schedule : {PipelineSchedule::kOneFOneB, PipelineSchedule::kGPipe})
        for (const char* gate : {"topk", "topk@1.0"}) {
          o.schedule = schedule;
          VerifyRow row = verify_gpt_layout(ctx.world, layout, GateSpec::parse(gate), o, run++);
          if (layout.world_size() > ctx.world.size() || ctx.rank() >= layout.world_size()) continue;
          EXPECT_TRUE(row.pass) << layout.to_string() << " " << to_string(schedule) << " " << gate
                                << ": loss " << row.loss_rel_err << " params " << row.param_rel_err;
          EXPECT_EQ(row.micro_batches, layout.pp + 1);
        }
  });
}

TEST(PipelineMultiRank, InferenceThroughStagesEqualsOneProcess) {
  testing::run_on_ranks(2, [](testing::RankContext& ctx) {
    at::set_num_threads(1);
    ParallelConfig layout{1, 1, 2, 1, 1};
    auto groups = std::make_shared<ParallelGroups>(ParallelGroups::build(layout, ctx.world));
    auto o = GPTOptions().vocab_size(32).context(8).d_model(16).n_heads(2).n_layers(3).moe_every(2);
    torch::manual_seed(3);
    GPT full(o);
    full->to(torch::kFloat64);
    GPT net(o, groups);
    net->to(torch::kFloat64);
    net->load_shard_from(*full);
    EXPECT_EQ(net->block_list.size(), ctx.rank() == 0 ? 2u : 1u);
    EXPECT_EQ(static_cast<bool>(net->pos_emb), ctx.rank() == 0);
    EXPECT_EQ(static_cast<bool>(net->ln_f), ctx.rank() == 1);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
    auto tokens = torch::randint(32, {3, 8}, gen, torch::kInt64);
    torch::NoGradGuard ng;
    auto ref = full(tokens);
    auto got = net(tokens);
    EXPECT_TRUE(torch::allclose(got.logits, ref.logits, 1e-12, 1e-12));
    ASSERT_EQ(got.moe_stats.size(), 1u);  // block 1 (stage 0) is the only MoE block
    const int64_t counted = got.moe_stats[0].tokens_per_expert.sum().item<int64_t>();
    EXPECT_EQ(counted, ctx.rank() == 0 ? 3 * 8 * 2 : 0);
    // Gathering the stages back gives the one-process model.
    GPT back(o);
    back->to(torch::kFloat64);
    net->gather_full(*back);
    auto src = full->named_parameters();
    for (auto& kv : back->named_parameters())
      EXPECT_TRUE(torch::equal(kv.value(), src[kv.key()])) << kv.key();
  });
}

}  // namespace
}  // namespace hybridmoe
