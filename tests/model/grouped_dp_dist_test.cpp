// grouped_dp_dist_test.cpp — GroupedDataParallel: default tags from the module tree, overrides,
// broadcast from rank 0 of each tag group, and gradient sums over each parameter's own group.
#include <gtest/gtest.h>

#include "hybridmoe/collectives.h"
#include "hybridmoe/grouped_dp.h"
#include "hybridmoe/moe.h"
#include "support/compare.h"
#include "support/multirank.h"

namespace hybridmoe {
namespace {

using testing::close;
using testing::RankContext;
using testing::run_on_ranks;

// A dense layer around a distributed MoE layer.
struct NetImpl : torch::nn::Module {
  NetImpl(std::shared_ptr<const ParallelGroups> g) {
    fc = register_module("fc", torch::nn::Linear(4, 4));
    moe = register_module("moe", MoE(MoEOptions(4, 4).d_hidden(8).top_k(1), g));
  }
  torch::nn::Linear fc{nullptr};
  MoE moe{nullptr};
};
TORCH_MODULE(Net);

TEST(GroupedDataParallel, TagsBroadcastAndPerGroupSums) {
  run_on_ranks(4, [](RankContext& ctx) {
    // dp = 4, ep = 2 → edp = 2: experts are synchronized over pairs {0, 2} and {1, 3}.
    auto groups = std::make_shared<ParallelGroups>(
        ParallelGroups::build(ParallelConfig{1, 4, 1, 2, 1}, ctx.world));
    torch::manual_seed(100 + ctx.rank());  // every rank starts different
    Net net(groups);
    GroupedDataParallel gdp(net.ptr(), groups);
    // 1. Default tags.
    const auto& tags = gdp.tags();
    EXPECT_EQ(tags.at("fc.weight"), GroupKind::kDp);
    EXPECT_EQ(tags.at("moe.gate.weight"), GroupKind::kStage);
    EXPECT_EQ(tags.at("moe.experts.w1"), GroupKind::kEdp);
    EXPECT_EQ(tags.at("moe.experts.b2"), GroupKind::kEdp);
    EXPECT_TRUE(testing::throws_with([&] { gdp.set_tag("nope", GroupKind::kDp); },
                                     "no parameter named \"nope\""));
    // 2. After the broadcast every parameter equals rank 0's of its group.
    auto params = net->named_parameters();
    for (const auto& name : {"fc.weight", "moe.gate.weight", "moe.experts.w1"}) {
      const auto& g = groups->get(*tags.at(name));
      auto all = dist::all_gather_rows(params[name].detach().unsqueeze(0).contiguous(), g);
      for (int64_t j = 1; j < g.size(); ++j) EXPECT_TRUE(close(all[j], all[0], 0.0)) << name;
    }
    // 3. Gradients filled with (rank + 1) sum over the tag group; an untagged one stays local.
    gdp.set_tag("fc.bias", c10::nullopt);
    for (auto& p : net->parameters()) p.mutable_grad() = torch::full_like(p, ctx.rank() + 1.0);
    gdp.reduce_gradients(0.5);
    auto sum_of = [&](GroupKind k) {
      double s = 0;
      for (auto r : groups->get(k).ranks) s += static_cast<double>(r + 1);
      return 0.5 * s;
    };
    EXPECT_DOUBLE_EQ(params["fc.weight"].grad()[0][0].item<double>(), sum_of(GroupKind::kDp));
    EXPECT_DOUBLE_EQ(params["moe.gate.weight"].grad()[0][0].item<double>(),
                     sum_of(GroupKind::kStage));
    EXPECT_DOUBLE_EQ(params["moe.experts.w1"].grad()[0][0][0].item<double>(),
                     sum_of(GroupKind::kEdp));
    EXPECT_DOUBLE_EQ(params["fc.bias"].grad()[0].item<double>(), 0.5 * (ctx.rank() + 1.0));
  });
}

// A user module that declares its parameters' group; it nests one that declares none (not
// synchronized), and a plain Linear (inherits the declaration).
struct Unreplicated : torch::nn::Module, GradientGroupDeclarer {
  Unreplicated() { w = register_parameter("w", torch::ones({2})); }
  c10::optional<GroupKind> gradient_group() const override { return c10::nullopt; }
  torch::Tensor w;
};
struct StageSharedImpl : torch::nn::Module, GradientGroupDeclarer {
  StageSharedImpl() {
    inner = register_module("inner", std::make_shared<Unreplicated>());
    lin = register_module("lin", torch::nn::Linear(2, 2));
    scale = register_parameter("scale", torch::ones({1}));
  }
  c10::optional<GroupKind> gradient_group() const override { return GroupKind::kStage; }
  std::shared_ptr<Unreplicated> inner;
  torch::nn::Linear lin{nullptr};
  torch::Tensor scale;
};
struct OuterImpl : torch::nn::Module {
  OuterImpl() {
    shared = register_module("shared", std::make_shared<StageSharedImpl>());
    head = register_module("head", torch::nn::Linear(2, 2));
  }
  std::shared_ptr<StageSharedImpl> shared;
  torch::nn::Linear head{nullptr};
};

TEST(GroupedDataParallel, TagsComeFromTheInnermostDeclaringModule) {
  run_on_ranks(2, [](RankContext& ctx) {
    auto groups = std::make_shared<ParallelGroups>(
        ParallelGroups::build(ParallelConfig{1, 2, 1, 1, 1}, ctx.world));
    auto net = std::make_shared<OuterImpl>();
    GroupedDataParallel gdp(net, groups, GroupedDataParallelOptions().broadcast_at_start(false));
    const auto& tags = gdp.tags();
    EXPECT_EQ(tags.at("head.weight"), GroupKind::kDp);
    EXPECT_EQ(tags.at("shared.scale"), GroupKind::kStage);
    EXPECT_EQ(tags.at("shared.lin.weight"), GroupKind::kStage);
    EXPECT_EQ(tags.at("shared.inner.w"), c10::nullopt);
    EXPECT_EQ(tags.size(), 6u);  // head.{weight,bias}, shared.{scale,lin.weight,lin.bias,inner.w}
  });
}

}  // namespace
}  // namespace hybridmoe
