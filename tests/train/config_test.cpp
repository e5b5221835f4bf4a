// config_test.cpp — the trainer's configuration (TrainConfig, train.h): unknown keys refused by
// name, degrees that do not divide refused naming the key (typed keys where they are read), and
// the TOML printout read back with its tables.
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "hybridmoe/train.h"
#include "train/train_fixtures.h"

namespace hybridmoe {
namespace {

using testing::error_of;

TEST(TrainConfig, UnknownKeysAreRefusedByName) {
  TrainConfig c;
  auto e = error_of([&] { apply_toml_text(c, "steps = 5\nbogus_key = 3\n", "test.toml"); });
  EXPECT_NE(e.find("bogus_key"), std::string::npos) << e;
  e = error_of([&] { apply_toml_text(c, "[optim]\nlearning_rat = 0.1\n", "test.toml"); });
  EXPECT_NE(e.find("learning_rat"), std::string::npos) << e;
  e = error_of([&] { apply_toml_text(c, "steps = \"many\"\n", "test.toml"); });
  EXPECT_NE(e.find("steps"), std::string::npos) << e;
  e = error_of([&] { set_config_value(c, "d_model", "12x"); });
  EXPECT_NE(e.find("d_model"), std::string::npos) << e;
}

TEST(TrainConfig, NonDividingDegreesAreRefusedByName) {
  TrainConfig c;
  EXPECT_EQ(check_config(c), "");
  auto with = [](std::function<void(TrainConfig&)> f) {
    TrainConfig c;
    f(c);
    return check_config(c);
  };
  EXPECT_NE(with([](TrainConfig& c) {
              c.pp = 1;
              c.ep = 3;
              c.dp = 3;
              c.nproc = 3;
            }).find("`ep`"),
            std::string::npos);
  EXPECT_NE(with([](TrainConfig& c) { c.batch_size = 15; }).find("`batch_size`"),
            std::string::npos);
  EXPECT_NE(with([](TrainConfig& c) { c.micro_batches = 3; }).find("`micro_batches`"),
            std::string::npos);
  EXPECT_NE(with([](TrainConfig& c) { c.dp = 1; }).find("`nproc`"), std::string::npos);
  EXPECT_NE(with([](TrainConfig& c) {
              c.tp = 8;
              c.dp = 1;
              c.pp = 1;
              c.nproc = 8;
              c.ep = 8;
              c.num_experts = 8;
            }).find("`tp`"),
            std::string::npos);
  EXPECT_NE(with([](TrainConfig& c) {
              c.pp = 5;
              c.nproc = 10;
            }).find("`pp`"),
            std::string::npos);
  // A typed key's bad text is refused where it is read, naming the key.
  auto set_error = [](const std::string& key, const std::string& value) {
    TrainConfig c;
    return error_of([&] { set_config_value(c, key, value); });
  };
  EXPECT_NE(set_error("pipeline_schedule", "zigzag").find("`pipeline_schedule`"),
            std::string::npos);
  EXPECT_NE(with([](TrainConfig& c) { c.seq_len = 128; }).find("`seq_len`"), std::string::npos);
  EXPECT_NE(with([](TrainConfig& c) { c.zero_stage = 2; }).find("`zero_stage`"), std::string::npos);
  EXPECT_NE(set_error("dtype", "half").find("`dtype`"), std::string::npos);
  EXPECT_NE(with([](TrainConfig& c) {
              c.expert_layout = ExpertLayout::kAdaptive;
            }).find("`expert_layout`"),
            std::string::npos);
  // adaptive_r = auto needs a re-timing period longer than the valid r (here 0, 1, 2: 3).
  const auto short_period = with([](TrainConfig& c) {
    c.nproc = c.dp = 4;
    c.pp = 1;
    c.ep = 1;
    c.num_experts = 2;
    c.expert_layout = ExpertLayout::kAdaptive;
    c.adaptive_r = AdaptiveR::automatic();
    c.adaptive_recheck_every = 3;
  });
  EXPECT_NE(short_period.find("`adaptive_recheck_every` = 3 must exceed the number of valid r (3: "
                              "0, 1, 2)"),
            std::string::npos)
      << short_period;
  const auto bad_r = with([](TrainConfig& c) {
    c.expert_layout = ExpertLayout::kAdaptive;
    c.ep = 1;
    c.adaptive_r = AdaptiveR::value(3);
  });
  EXPECT_NE(bad_r.find("`adaptive_r`"), std::string::npos) << bad_r;
  EXPECT_NE(bad_r.find("0, 1"), std::string::npos) << bad_r;  // the valid values are listed
  EXPECT_EQ(with([](TrainConfig& c) {
              c.expert_layout = ExpertLayout::kAdaptive;
              c.ep = 1;
              c.adaptive_r = AdaptiveR::automatic();
            }),
            "");
  EXPECT_NE(with([](TrainConfig& c) {
              c.ep = 1;
              c.a2a_overlap_degree = 2;
            }).find("`a2a_overlap_degree`"),
            std::string::npos);
  EXPECT_NE(with([](TrainConfig& c) { c.gate = "nope"; }).find("`gate`"), std::string::npos);
}

// `replicate`: off, auto or N, on layouts that can replicate (ep > 1, the fixed experts, any etp),
// refused by name otherwise; it and `replicate_placement` reach the MoE layers' options.
TEST(TrainConfig, ReplicateIsCheckedAndReachesTheLayers) {
  auto with = [](std::function<void(TrainConfig&)> f) {
    TrainConfig c;
    f(c);
    return check_config(c);
  };
  EXPECT_EQ(with([](TrainConfig& c) { c.replicate = "auto"; }), "");
  EXPECT_EQ(with([](TrainConfig& c) { c.replicate = "2"; }), "");
  for (const auto& bad : std::vector<std::function<void(TrainConfig&)>>{
           [](TrainConfig& c) { c.replicate = "often"; }, [](TrainConfig& c) { c.replicate = "0"; },
           [](TrainConfig& c) {
             c.replicate = "auto";
             c.ep = 1;
           },
           [](TrainConfig& c) {
             c.replicate = "1";
             c.expert_layout = ExpertLayout::kAdaptive;
           }}) {
    const auto why = with(bad);
    EXPECT_NE(why.find("`replicate`"), std::string::npos) << why;
  }
  EXPECT_EQ(with([](TrainConfig& c) {
              c.replicate = "1";
              c.nproc = 8;
              c.tp = 2;
              c.etp = 2;
            }),
            "");
  TrainConfig c;
  c.replicate = "3";
  EXPECT_EQ(c.model_options().moe_options().replicate().placement(), ReplicatePlacement::kSource);
  set_config_value(c, "replicate_placement", "spread");
  const auto r = c.model_options().moe_options().replicate();
  EXPECT_EQ(r.mode(), ReplicateMode::kHottest);
  EXPECT_EQ(r.hottest(), 3);
  EXPECT_EQ(r.placement(), ReplicatePlacement::kSpread);
  EXPECT_EQ(get_config_value(c, "replicate_placement"), "spread");
  const auto e = error_of([&] { set_config_value(c, "replicate_placement", "nearby"); });
  EXPECT_NE(e.find("expected \"source\" or \"spread\", got \"nearby\""), std::string::npos) << e;
  EXPECT_EQ(c.model_options().single_process().moe_options().replicate().mode(),
            ReplicateMode::kOff);
}

TEST(TrainConfig, TomlRoundTripAndTables) {
  TrainConfig c;
  apply_toml_text(c,
                  "[model]\nd_model = 48\n[optim]\nlr = 0.01\nsteps = 7\n[output]\nresume = true\n"
                  "[data]\ndata = \"x.txt\"\n",
                  "t.toml");
  EXPECT_EQ(c.d_model, 48);
  EXPECT_EQ(c.steps, 7);
  EXPECT_DOUBLE_EQ(c.lr, 0.01);
  EXPECT_TRUE(c.resume);
  EXPECT_EQ(c.data, "x.txt");
  TrainConfig d;
  apply_toml_text(d, config_to_toml(c), "printed");
  for (const auto& k : train_config_keys())
    EXPECT_EQ(get_config_value(d, k.name), get_config_value(c, k.name)) << k.name;
}

}  // namespace
}  // namespace hybridmoe
