// config_keys_test.cpp — the typed configuration keys of `hmoe train` (train.h): the enum names
// (dtype, layout mode, pipeline schedule, recompute) round trip and refuse bad text naming it and
// the accepted names; the typed keys keep their TOML / flag spelling (defaults, every accepted
// value set and read back, printed and re-read as TOML); a bad value is refused naming the key;
// the key table made from HMOE_TRAIN_CONFIG_KEYS sets the field of its name.
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "hybridmoe/train.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

using testing::throws_with;

TEST(TypedNames, RoundTripAndRefusalNamingTheTextAndTheNames) {
  for (DType d : {DType::kFloat32, DType::kFloat64}) EXPECT_EQ(parse_dtype(to_string(d)), d);
  EXPECT_EQ(scalar_type(DType::kFloat32), torch::kFloat32);
  EXPECT_EQ(scalar_type(DType::kFloat64), torch::kFloat64);
  EXPECT_TRUE(throws_with([] { parse_dtype("half"); },
                          "dtype: expected one of \"float32\", \"float64\", got \"half\""));
  for (LayoutMode m : {LayoutMode::kManual, LayoutMode::kAuto})
    EXPECT_EQ(parse_layout_mode(to_string(m)), m);
  EXPECT_TRUE(throws_with([] { parse_layout_mode("planned"); },
                          "layout: expected one of \"manual\", \"auto\", got \"planned\""));
  for (PipelineSchedule s : {PipelineSchedule::kOneFOneB, PipelineSchedule::kGPipe})
    EXPECT_EQ(parse_pipeline_schedule(to_string(s)), s);
  EXPECT_TRUE(
      throws_with([] { parse_pipeline_schedule("zigzag"); },
                  "pipeline_schedule: expected one of \"1f1b\", \"gpipe\", got \"zigzag\""));
  for (Recompute r : {Recompute::kNone, Recompute::kBlock, Recompute::kMoE})
    EXPECT_EQ(parse_recompute(recompute_name(r)), r);
  for (ConfigKind k : {ConfigKind::kInt, ConfigKind::kFloat, ConfigKind::kBool})
    EXPECT_NE(to_string(k), to_string(ConfigKind::kString));
  EXPECT_EQ(to_string(ConfigKind::kFloat), "float");
}

TEST(TypedConfigKeys, DefaultsKeepTheirSpelling) {
  const TrainConfig c;
  EXPECT_EQ(get_config_value(c, "expert_layout"), "fixed");
  EXPECT_EQ(get_config_value(c, "adaptive_r"), "1");
  EXPECT_EQ(get_config_value(c, "dtype"), "float32");
  EXPECT_EQ(get_config_value(c, "pipeline_schedule"), "1f1b");
  EXPECT_EQ(get_config_value(c, "recompute"), "none");
  EXPECT_EQ(get_config_value(c, "layout"), "manual");
  EXPECT_EQ(c.expert_layout, ExpertLayout::kFixed);
  EXPECT_EQ(c.adaptive_r, AdaptiveR::value(1));
  EXPECT_EQ(c.dtype, DType::kFloat32);
  EXPECT_EQ(c.layout_mode, LayoutMode::kManual);
  // Typed keys are strings in TOML and on the command line.
  for (const auto& k : train_config_keys()) {
    if (k.name == "expert_layout" || k.name == "adaptive_r" || k.name == "dtype" ||
        k.name == "pipeline_schedule" || k.name == "recompute" || k.name == "layout") {
      EXPECT_EQ(k.kind, ConfigKind::kString) << k.name;
    }
  }
}

TEST(TypedConfigKeys, EveryAcceptedValueSetsTheFieldAndReadsBack) {
  struct Values {
    std::string key;
    std::vector<std::string> accepted;
  };
  const std::vector<Values> typed = {
      {"expert_layout", {"fixed", "adaptive"}},
      {"adaptive_r", {"0", "1", "2", "16", "auto", "every-step"}},
      {"dtype", {"float32", "float64"}},
      {"pipeline_schedule", {"1f1b", "gpipe"}},
      {"recompute", {"none", "block", "moe"}},
      {"layout", {"manual", "auto"}},
  };
  for (const auto& t : typed)
    for (const auto& v : t.accepted) {
      TrainConfig c;
      set_config_value(c, t.key, v);
      EXPECT_EQ(get_config_value(c, t.key), v) << t.key;
    }
  // The key of each name sets the field of that name.
  TrainConfig c;
  set_config_value(c, "expert_layout", "adaptive");
  set_config_value(c, "adaptive_r", "auto");
  set_config_value(c, "dtype", "float64");
  set_config_value(c, "pipeline_schedule", "gpipe");
  set_config_value(c, "recompute", "moe");
  set_config_value(c, "layout", "auto");
  EXPECT_EQ(c.expert_layout, ExpertLayout::kAdaptive);
  EXPECT_EQ(c.adaptive_r, AdaptiveR::automatic());
  EXPECT_EQ(c.dtype, DType::kFloat64);
  EXPECT_EQ(c.pipeline_schedule, PipelineSchedule::kGPipe);
  EXPECT_EQ(c.recompute, Recompute::kMoE);
  EXPECT_EQ(c.layout_mode, LayoutMode::kAuto);
  set_config_value(c, "adaptive_r", "4");
  EXPECT_EQ(c.adaptive_r, AdaptiveR::value(4));
}

TEST(TypedConfigKeys, BadValuesAreRefusedNamingKeyValueAndAcceptedNames) {
  TrainConfig c;
  EXPECT_TRUE(throws_with([&] { set_config_value(c, "expert_layout", "tiled"); },
                          "config key `expert_layout`: expert_layout: expected one of \"fixed\", "
                          "\"adaptive\", got \"tiled\""));
  EXPECT_TRUE(throws_with([&] { set_config_value(c, "dtype", "half"); },
                          "config key `dtype`: dtype: expected one of \"float32\", \"float64\", "
                          "got \"half\""));
  EXPECT_TRUE(throws_with([&] { set_config_value(c, "layout", "planned"); },
                          "config key `layout`: layout: expected one of"));
  EXPECT_TRUE(throws_with([&] { set_config_value(c, "recompute", "all"); },
                          "config key `recompute`: recompute must be"));
  EXPECT_TRUE(throws_with([&] { set_config_value(c, "adaptive_r", "-1"); },
                          "config key `adaptive_r`: adaptive_r: expected auto, every-step or an "
                          "integer >= 0, got \"-1\""));
  EXPECT_TRUE(
      throws_with([&] { set_config_value(c, "pipeline_schedule", "zigzag"); }, "got \"zigzag\""));
  EXPECT_EQ(get_config_value(c, "expert_layout"), "fixed");  // unchanged by the refusals
  // TOML: typed values are strings; another TOML type is refused naming the key.
  EXPECT_TRUE(throws_with([&] { apply_toml_text(c, "adaptive_r = 2\n", "t.toml"); },
                          "t.toml: config key `adaptive_r` expects a string value"));
  EXPECT_TRUE(throws_with([&] { apply_toml_text(c, "[memory]\ndtype = \"bf16\"\n", "t.toml"); },
                          "t.toml: config key `dtype`"));
}

TEST(TypedConfigKeys, NonDefaultTypedValuesSurviveTheTomlPrintout) {
  TrainConfig c;
  c.ep = 1;
  c.expert_layout = ExpertLayout::kAdaptive;
  c.adaptive_r = AdaptiveR::value(0);
  c.dtype = DType::kFloat64;
  c.pipeline_schedule = PipelineSchedule::kGPipe;
  c.recompute = Recompute::kBlock;
  c.layout_mode = LayoutMode::kAuto;
  const std::string toml = config_to_toml(c);
  EXPECT_NE(toml.find("expert_layout = \"adaptive\""), std::string::npos) << toml;
  EXPECT_NE(toml.find("adaptive_r = \"0\""), std::string::npos) << toml;
  EXPECT_NE(toml.find("layout = \"auto\""), std::string::npos) << toml;
  TrainConfig d;
  apply_toml_text(d, toml, "printed");
  EXPECT_EQ(d.expert_layout, c.expert_layout);
  EXPECT_EQ(d.adaptive_r, c.adaptive_r);
  EXPECT_EQ(d.dtype, c.dtype);
  EXPECT_EQ(d.pipeline_schedule, c.pipeline_schedule);
  EXPECT_EQ(d.recompute, c.recompute);
  EXPECT_EQ(d.layout_mode, c.layout_mode);
}

TEST(TypedConfigKeys, KeyTableIsTheOneListInOrderWithUniqueNames) {
  const auto& keys = train_config_keys();
  std::set<std::string> names;
  for (const auto& k : keys) {
    EXPECT_TRUE(names.insert(k.name).second) << "duplicate key " << k.name;
    EXPECT_FALSE(k.help.empty()) << k.name;
    EXPECT_FALSE(k.group.empty()) << k.name;
  }
  // The list's first and last keys, and the renamed field (key `layout`, TrainConfig::layout_mode).
  ASSERT_FALSE(keys.empty());
  EXPECT_EQ(keys.front().name, "d_model");
  EXPECT_EQ(keys.back().name, "eval");
  EXPECT_EQ(names.count("layout"), 1u);
  EXPECT_EQ(names.count("layout_mode"), 0u);
  // Every key reads back what the printout gives it (no key without a field or a printer).
  const TrainConfig defaults;
  for (const auto& k : keys) {
    TrainConfig c;
    set_config_value(c, k.name, get_config_value(defaults, k.name));
    EXPECT_EQ(get_config_value(c, k.name), get_config_value(defaults, k.name)) << k.name;
  }
}

TEST(TypedConfigKeys, CheckConfigRefusesAdaptiveRTheTrainerCannotRun) {
  TrainConfig c;  // 4 ranks, tp 1, dp 2, pp 2: a stage of 2 ranks, 4 experts: S = 1
  c.ep = 1;
  c.expert_layout = ExpertLayout::kAdaptive;
  c.adaptive_r = AdaptiveR::every_step();  // verify's, not the trainer's
  const std::string why = check_config(c);
  EXPECT_NE(why.find("config key `adaptive_r` = \"every-step\": expected auto or one of 0, 1 "
                     "(S = 1 ranks per expert)"),
            std::string::npos)
      << why;
  c.adaptive_r = AdaptiveR::value(1);
  EXPECT_EQ(check_config(c), "");
  c.expert_layout = ExpertLayout::kFixed;
  c.ep = 2;
  c.adaptive_r = AdaptiveR::automatic();
  EXPECT_NE(check_config(c).find("`adaptive_r` = \"auto\" needs `expert_layout` = \"adaptive\""),
            std::string::npos);
  // The trainer's placement: W = tp * dp.
  TrainConfig w;
  w.dp = 4;
  w.pp = 1;
  w.num_experts = 2;
  w.expert_layout = ExpertLayout::kAdaptive;
  w.ep = 1;
  EXPECT_EQ(w.placement().stage_size, 4);
  EXPECT_EQ(w.placement().valid_r, (std::vector<int64_t>{0, 1, 2}));
}

}  // namespace
}  // namespace hybridmoe
