// config_keys.cpp — see train.h and config_keys.h: the names of the trainer's typed values (dtype,
// layout mode, key kinds), the key table generated from HMOE_TRAIN_CONFIG_KEYS, and what is made
// from it: set_config_value, get_config_value, apply_config_values, train_config_keys and
// config_to_toml.
#include "train/config_keys.h"

#include <sstream>
#include <type_traits>

#include "core/enum_names.h"

namespace hybridmoe {

namespace {

const detail::EnumNames<DType> kDTypeNames{
    "dtype", {{DType::kFloat32, "float32"}, {DType::kFloat64, "float64"}}};
const detail::EnumNames<LayoutMode> kLayoutModeNames{
    "layout", {{LayoutMode::kManual, "manual"}, {LayoutMode::kAuto, "auto"}}};
const detail::EnumNames<ConfigKind> kConfigKindNames{"config key kind",
                                                     {{ConfigKind::kInt, "int"},
                                                      {ConfigKind::kFloat, "float"},
                                                      {ConfigKind::kBool, "bool"},
                                                      {ConfigKind::kString, "string"},
                                                      {ConfigKind::kIntList, "int list"}}};

// The text form of a typed key (a string in TOML and on the command line): each type parses and
// prints its own names.
template <typename T>
struct TextValue;
template <>
struct TextValue<ExpertLayout> {
  static ExpertLayout parse(const std::string& s) { return parse_expert_layout(s); }
  static std::string print(ExpertLayout v) { return to_string(v); }
};
template <>
struct TextValue<ReplicatePlacement> {
  static ReplicatePlacement parse(const std::string& s) { return parse_replicate_placement(s); }
  static std::string print(ReplicatePlacement v) { return to_string(v); }
};
template <>
struct TextValue<A2AAlgorithm> {
  static A2AAlgorithm parse(const std::string& s) { return parse_a2a_algorithm(s); }
  static std::string print(A2AAlgorithm v) { return to_string(v); }
};
template <>
struct TextValue<AdaptiveR> {
  static AdaptiveR parse(const std::string& s) { return AdaptiveR::parse(s); }
  static std::string print(const AdaptiveR& v) { return v.to_string(); }
};
template <>
struct TextValue<DType> {
  static DType parse(const std::string& s) { return parse_dtype(s); }
  static std::string print(DType v) { return to_string(v); }
};
template <>
struct TextValue<PipelineSchedule> {
  static PipelineSchedule parse(const std::string& s) { return parse_pipeline_schedule(s); }
  static std::string print(PipelineSchedule v) { return to_string(v); }
};
template <>
struct TextValue<Recompute> {
  static Recompute parse(const std::string& s) { return parse_recompute(s); }
  static std::string print(Recompute v) { return recompute_name(v); }
};
template <>
struct TextValue<LayoutMode> {
  static LayoutMode parse(const std::string& s) { return parse_layout_mode(s); }
  static std::string print(LayoutMode v) { return to_string(v); }
};
template <>
struct TextValue<ModelFamily> {
  static ModelFamily parse(const std::string& s) { return parse_model_family(s); }
  static std::string print(ModelFamily v) { return to_string(v); }
};
template <>
struct TextValue<NormType> {
  static NormType parse(const std::string& s) { return parse_norm_type(s); }
  static std::string print(NormType v) { return to_string(v); }
};
template <>
struct TextValue<PositionType> {
  static PositionType parse(const std::string& s) { return parse_position_type(s); }
  static std::string print(PositionType v) { return to_string(v); }
};
template <>
struct TextValue<RopeScaling> {
  static RopeScaling parse(const std::string& s) { return parse_rope_scaling(s); }
  static std::string print(RopeScaling v) { return to_string(v); }
};
template <>
struct TextValue<TokenDType> {
  static TokenDType parse(const std::string& s) { return parse_token_dtype(s); }
  static std::string print(TokenDType v) { return to_string(v); }
};
template <>
struct TextValue<AttentionType> {
  static AttentionType parse(const std::string& s) { return parse_attention_type(s); }
  static std::string print(AttentionType v) { return to_string(v); }
};
template <>
struct TextValue<QKNorm> {
  static QKNorm parse(const std::string& s) { return parse_qk_norm(s); }
  static std::string print(QKNorm v) { return to_string(v); }
};
template <>
struct TextValue<Activation> {
  static Activation parse(const std::string& s) { return parse_activation(s); }
  static std::string print(Activation v) { return to_string(v); }
};
template <>
struct TextValue<ScoreFunction> {
  static ScoreFunction parse(const std::string& s) { return parse_score_function(s); }
  static std::string print(ScoreFunction v) { return to_string(v); }
};
// A list of integers: "1,3", "1, 3", "[1, 3]"; "" or "[]" is the empty list. Printed "[1, 3]",
// which TOML (and JSON) read as an array.
template <>
struct TextValue<std::vector<int64_t>> {
  static std::vector<int64_t> parse(const std::string& s) {
    auto trim = [](const std::string& t) {
      const size_t b = t.find_first_not_of(" \t"), e = t.find_last_not_of(" \t");
      return b == std::string::npos ? std::string() : t.substr(b, e - b + 1);
    };
    auto refuse = [&s] {
      TORCH_CHECK(false, "expected integers separated by commas (\"1,3\" or \"[1, 3]\"), got \"", s,
                  "\"");
    };
    std::string body = trim(s);
    if (!body.empty() && body.front() == '[') {
      if (body.back() != ']') refuse();
      body = trim(body.substr(1, body.size() - 2));
    }
    std::vector<int64_t> out;
    if (body.empty()) return out;
    if (body.back() == ',') refuse();
    std::istringstream items(body);
    std::string item;
    while (std::getline(items, item, ',')) {
      item = trim(item);
      size_t used = 0;
      try {
        out.push_back(std::stoll(item, &used));
      } catch (const std::exception&) {
        refuse();
      }
      if (used != item.size()) refuse();
    }
    return out;
  }
  static std::string print(const std::vector<int64_t>& v) {
    std::string out = "[";
    for (size_t i = 0; i < v.size(); ++i) out += (i > 0 ? ", " : "") + std::to_string(v[i]);
    return out + "]";
  }
};

template <typename T>
constexpr ConfigKind kind_of() {
  if constexpr (std::is_same_v<T, int64_t>) return ConfigKind::kInt;
  if constexpr (std::is_same_v<T, double>) return ConfigKind::kFloat;
  if constexpr (std::is_same_v<T, bool>) return ConfigKind::kBool;
  if constexpr (std::is_same_v<T, std::vector<int64_t>>) return ConfigKind::kIntList;
  return ConfigKind::kString;  // std::string and the typed keys
}

template <typename T>
detail::ConfigKeyAccess make_key(const char* name, const char* group, const char* help,
                                 T TrainConfig::*field) {
  constexpr ConfigKind kind = kind_of<T>();
  detail::ConfigKeyAccess k;
  k.key = ConfigKey{name, kind, group, help};
  const std::string key = name;
  k.set = [field, key](TrainConfig& c, const std::string& v) {
    try {
      size_t used = v.size();
      if constexpr (std::is_same_v<T, int64_t>) {
        c.*field = std::stoll(v, &used);
      } else if constexpr (std::is_same_v<T, double>) {
        c.*field = std::stod(v, &used);
      } else if constexpr (std::is_same_v<T, bool>) {
        TORCH_CHECK(v == "true" || v == "false" || v == "1" || v == "0", "config key `", key,
                    "`: expected true or false, got \"", v, "\"");
        c.*field = v == "true" || v == "1";
      } else if constexpr (std::is_same_v<T, std::string>) {
        c.*field = v;
      } else {
        try {
          c.*field = TextValue<T>::parse(v);
        } catch (const c10::Error& e) {
          TORCH_CHECK(false, "config key `", key, "`: ", e.what_without_backtrace());
        }
      }
      TORCH_CHECK(used == v.size(), "config key `", key, "`: trailing characters in \"", v, "\"");
    } catch (const std::invalid_argument&) {
      TORCH_CHECK(false, "config key `", key, "`: \"", v, "\" is not a valid ", to_string(kind));
    } catch (const std::out_of_range&) {
      TORCH_CHECK(false, "config key `", key, "`: \"", v, "\" is out of range");
    }
  };
  k.get = [field](const TrainConfig& c) -> std::string {
    if constexpr (std::is_same_v<T, int64_t>) {
      return std::to_string(c.*field);
    } else if constexpr (std::is_same_v<T, double>) {
      return detail::format_config_double(c.*field);
    } else if constexpr (std::is_same_v<T, bool>) {
      return c.*field ? "true" : "false";
    } else if constexpr (std::is_same_v<T, std::string>) {
      return c.*field;
    } else {
      return TextValue<T>::print(c.*field);
    }
  };
  return k;
}

}  // namespace

std::string to_string(DType dtype) {
  return kDTypeNames.name_of(dtype);
}
DType parse_dtype(const std::string& text) {
  return kDTypeNames.parse(text);
}
torch::ScalarType scalar_type(DType dtype) {
  return dtype == DType::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

std::string to_string(LayoutMode mode) {
  return kLayoutModeNames.name_of(mode);
}
LayoutMode parse_layout_mode(const std::string& text) {
  return kLayoutModeNames.parse(text);
}

std::string to_string(ConfigKind kind) {
  return kConfigKindNames.name_of(kind);
}

namespace detail {

std::string format_config_double(double v) {
  std::ostringstream s;
  s.precision(10);
  s << v;
  std::string t = s.str();
  if (t.find_first_of(".eEn") == std::string::npos) t += ".0";
  return t;
}

const std::vector<ConfigKeyAccess>& config_key_table() {
#define HMOE_CONFIG_KEY_ACCESS(type, member, key, init, group, help) \
  make_key<type>(key, group, help, &TrainConfig::member),
  static const std::vector<ConfigKeyAccess> keys = {HMOE_TRAIN_CONFIG_KEYS(HMOE_CONFIG_KEY_ACCESS)};
#undef HMOE_CONFIG_KEY_ACCESS
  return keys;
}

const ConfigKeyAccess& find_config_key(const std::string& name, const std::string& origin) {
  for (const auto& k : config_key_table())
    if (k.key.name == name) return k;
  std::ostringstream known;
  for (const auto& k : config_key_table()) known << (known.tellp() > 0 ? ", " : "") << k.key.name;
  TORCH_CHECK(false, origin.empty() ? "" : origin + ": ", "unknown config key `", name,
              "`; known keys: ", known.str());
}

}  // namespace detail

const std::vector<ConfigKey>& train_config_keys() {
  static const std::vector<ConfigKey> keys = [] {
    std::vector<ConfigKey> out;
    for (const auto& k : detail::config_key_table()) out.push_back(k.key);
    return out;
  }();
  return keys;
}

void set_config_value(TrainConfig& config, const std::string& key, const std::string& value) {
  detail::find_config_key(key).set(config, value);
}

std::string get_config_value(const TrainConfig& config, const std::string& key) {
  return detail::find_config_key(key).get(config);
}

void apply_config_values(TrainConfig& config, const ConfigValues& given) {
  // 1. The family first: its preset under every key given with it, whatever their order.
  const std::string* family = nullptr;
  for (const auto& [key, value] : given) {
    detail::find_config_key(key);  // an unknown key is refused before anything is set
    if (key == "model") family = &value;
  }
  const std::string* hf_dir = nullptr;
  for (const auto& [key, value] : given)
    if (key == "init_from_hf") hf_dir = value.empty() ? nullptr : &value;
  if (hf_dir != nullptr) {
    apply_hf_model(config, *hf_dir);
    if (family != nullptr) {
      TrainConfig chosen = config;
      set_config_value(chosen, "model", *family);
      TORCH_CHECK(chosen.model == config.model, "config: model ", *family,
                  " contradicts init_from_hf ", *hf_dir, ", whose config.json is ",
                  to_string(config.model));
    }
  } else if (family != nullptr) {
    TrainConfig chosen = config;
    set_config_value(chosen, "model", *family);
    if (chosen.model != config.model) apply_model_preset(config, chosen.model);
  }
  // 2. Every key as given; a later one wins.
  for (const auto& [key, value] : given) set_config_value(config, key, value);
}

std::string config_to_toml(const TrainConfig& config) {
  std::ostringstream s;
  std::string group;
  for (const auto& k : detail::config_key_table()) {
    if (k.key.group != group) {
      group = k.key.group;
      s << (s.tellp() > 0 ? "\n" : "") << "# ---- " << group << " ----\n";
    }
    std::string v = k.get(config);
    if (k.key.kind == ConfigKind::kString) {
      std::string q;
      for (char ch : v)
        q += (ch == '"' || ch == '\\') ? std::string("\\") + ch : std::string(1, ch);
      v = "\"" + q + "\"";
    }
    s << k.key.name << " = " << v << "  # " << k.key.help << "\n";
  }
  return s.str();
}

}  // namespace hybridmoe
