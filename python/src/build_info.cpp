// build_info.cpp — what the extension is and was built with: hybridmoe's version, the torch
// version it was built against (the package refuses to load under another), its pybind11 ABI
// (pybind11_abi_check.cpp proved at compile time that it equals torch's), and whether torch's
// pybind11 classes are visible from here at run time: they are exactly when this module shares
// torch's pybind11 internals.
#include <torch/version.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include "bindings.h"
#include "hybridmoe/version.h"

namespace hybridmoe::python {

void bind_build_info(py::module_& m) {
  m.attr("__version__") = kVersion;
  // The interpreter's torch.__version__ at configure time (python/CMakeLists.txt) and the
  // LibTorch headers' version.
  m.attr("_torch_version") = HMOE_TORCH_VERSION_BUILT;
  m.attr("_libtorch_version") = TORCH_VERSION;
  py::dict abi;
  abi["compiler_type"] = PYBIND11_COMPILER_TYPE;
  abi["stdlib"] = PYBIND11_STDLIB;
  abi["build_abi"] = PYBIND11_BUILD_ABI;
  abi["internals_id"] = PYBIND11_INTERNALS_ID;
  m.attr("_pybind11_abi") = abi;
  m.def(
      "_sees_torch_classes",
      [] { return py::detail::get_type_info(typeid(c10d::ProcessGroup)) != nullptr; },
      "True when torch.distributed's ProcessGroup class (registered by torch's own module) is "
      "known to this module's pybind11, i.e. both share pybind11's internals. Call after "
      "importing torch.distributed.");
}

}  // namespace hybridmoe::python
