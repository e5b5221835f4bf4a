// enum_names.h — internal: the text names of a closed set (an enum class) kept in one table, from
// which both parsing (with an error naming the option, the bad text and every accepted name) and
// printing are done. Used by the routing rules, the expert layout, the pipeline schedule and the
// trainer's typed configuration keys.
#pragma once

#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

namespace hybridmoe::detail {

/// One closed set: its names in enum order, and the option name used in errors.
///
/// Example:
///   const EnumNames<ExpertLayout> kNames{
///       "expert_layout", {{ExpertLayout::kFixed, "fixed"}, {ExpertLayout::kAdaptive,
///       "adaptive"}}};
///   kNames.parse("adaptive");  // ExpertLayout::kAdaptive
///   kNames.parse("tiled");     // error: expert_layout: expected one of "fixed", "adaptive", got
///                              // "tiled"
///   kNames.name_of(ExpertLayout::kFixed);  // "fixed"
template <typename Enum>
struct EnumNames {
  const char* option;
  std::vector<std::pair<Enum, const char*>> values;

  std::string name_of(Enum v) const {
    for (const auto& kv : values)
      if (kv.first == v) return kv.second;
    C10_THROW_ERROR(Error, c10::str(option, ": unknown value ", static_cast<int>(v)));
  }
  Enum parse(const std::string& text) const {
    std::ostringstream known;
    for (const auto& kv : values) {
      if (text == kv.second) return kv.first;
      known << (known.tellp() > 0 ? ", " : "") << '"' << kv.second << '"';
    }
    C10_THROW_ERROR(Error,
                    c10::str(option, ": expected one of ", known.str(), ", got \"", text, "\""));
  }
};

}  // namespace hybridmoe::detail
