// version.h — the library's version.
#pragma once

namespace hybridmoe {
inline constexpr const char* kVersion = "0.1.0";
}  // namespace hybridmoe
