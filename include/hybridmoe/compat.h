// compat.h — the one place where hybridmoe absorbs differences between LibTorch versions
// (Debian's 1.13 and pip's 2.x). Everything else includes this header instead of testing versions.
#pragma once

#include <torch/torch.h>
#include <torch/version.h>

#define HMOE_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||       \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace hybridmoe::compat {

/// Stable sort along dim 0 (ties keep their input order). Returns the permutation.
/// values: [n] any sortable dtype.
inline torch::Tensor stable_argsort(const torch::Tensor& values, bool descending = false) {
  return std::get<1>(values.sort(/*stable=*/true, /*dim=*/0, descending));
}

/// A string naming the LibTorch version this was built against, e.g. "1.13.1".
inline std::string torch_version() { return TORCH_VERSION; }

}  // namespace hybridmoe::compat
