// config_keys.h — internal to the trainer's configuration: the key table made from
// HMOE_TRAIN_CONFIG_KEYS (train_config_keys.h), each key with how to read and write it as text, for
// the TOML reader and the checks in config.cpp.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "hybridmoe/train.h"

namespace hybridmoe::detail {

/// One key: its description and how to read and write it as text on a TrainConfig.
struct ConfigKeyAccess {
  ConfigKey key;
  /// Sets the field from its text form; an error naming the key when the text does not parse.
  std::function<void(TrainConfig&, const std::string&)> set;
  /// The field's text form (what set() reads back).
  std::function<std::string(const TrainConfig&)> get;
};

/// Every key, in train_config_keys() order.
const std::vector<ConfigKeyAccess>& config_key_table();

/// The key named `name`; an unknown name is an error listing the known keys, led by `origin`
/// (a file) when there is one.
const ConfigKeyAccess& find_config_key(const std::string& name, const std::string& origin = "");

/// A float key's text form: 10 significant digits, always with a '.', an exponent or nan/inf
/// ("64.0", "0.003", "1e-05"), so that TOML reads it back as a float.
std::string format_config_double(double v);

}  // namespace hybridmoe::detail
