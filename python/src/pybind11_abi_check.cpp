// pybind11_abi_check.cpp — the extension's pybind11 ABI equals torch's, or it does not compile.
// A module whose PYBIND11_INTERNALS_ID differs from torch's keeps its own pybind11 internals, in
// which torch's classes (c10d's ProcessGroup among them) are unknown: they could not be passed
// in. torch's values come from hmoe_torch_abi.h, written at configure time
// (cmake/HmoePybind11Abi.cmake, which also compiles this file alone to stop configuration early);
// an empty internals ID means torch did not publish it, and only the three parts are compared.
#include <string_view>

#include <pybind11/pybind11.h>

#include "hmoe_torch_abi.h"

namespace {

constexpr bool same(std::string_view extension, std::string_view torch) {
  return extension == torch;
}

}  // namespace

static_assert(same(PYBIND11_COMPILER_TYPE, HMOE_TORCH_PYBIND11_COMPILER_TYPE),
              "hybridmoe: PYBIND11_COMPILER_TYPE: the extension has " PYBIND11_COMPILER_TYPE
              ", torch has " HMOE_TORCH_PYBIND11_COMPILER_TYPE);
static_assert(same(PYBIND11_STDLIB, HMOE_TORCH_PYBIND11_STDLIB),
              "hybridmoe: PYBIND11_STDLIB: the extension has " PYBIND11_STDLIB
              ", torch has " HMOE_TORCH_PYBIND11_STDLIB);
static_assert(same(PYBIND11_BUILD_ABI, HMOE_TORCH_PYBIND11_BUILD_ABI),
              "hybridmoe: PYBIND11_BUILD_ABI: the extension has " PYBIND11_BUILD_ABI
              ", torch has " HMOE_TORCH_PYBIND11_BUILD_ABI);
static_assert(std::string_view(HMOE_TORCH_PYBIND11_INTERNALS_ID).empty() ||
                  same(PYBIND11_INTERNALS_ID, HMOE_TORCH_PYBIND11_INTERNALS_ID),
              "hybridmoe: PYBIND11_INTERNALS_ID: the extension has " PYBIND11_INTERNALS_ID
              ", torch has " HMOE_TORCH_PYBIND11_INTERNALS_ID);
