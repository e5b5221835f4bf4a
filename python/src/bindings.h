// bindings.h — the parts of the extension hybridmoe._C, one concept per file, each adding its
// names to the module (module.cpp calls them in this order).
#pragma once

#include <string>

#include <torch/csrc/utils/pybind.h>

#include "hybridmoe/group_kind.h"
#include "hybridmoe/moe.h"

namespace hybridmoe::python {

namespace py = pybind11;

/// hybridmoe.Error (a RuntimeError): every c10::Error a binding raises, with its message
/// (without the C++ backtrace). errors.cpp.
void bind_errors(py::module_& m);
/// __version__ and what the extension was built with (torch version, pybind11 ABI), and the
/// check that torch's pybind11 classes are visible here. build_info.cpp.
void bind_build_info(py::module_& m);
/// hybridmoe.Group: a torch.distributed ProcessGroup as hybridmoe's dist::Group. groups.cpp.
void bind_groups(py::module_& m);
/// The collectives of hybridmoe's communication core over a Group. collectives.cpp.
void bind_collectives(py::module_& m);
/// hybridmoe.hf_config(dir): a Hugging Face config.json as hybridmoe's options. hf.cpp.
void bind_hf(py::module_& m);
/// _C.ParallelConfig, _C._ParallelGroups (a layout's groups assembled from Groups), the rank
/// lists of a layout's groups, and the coalesced broadcast / sum of GroupedDataParallel.
/// parallel.cpp.
void bind_parallel(py::module_& m);
/// The GroupKind named `name` ("tp", "ep", ...); an error listing the kinds otherwise.
GroupKind group_kind_from(const std::string& name);
/// MoEOptions from hybridmoe.MoE's keyword arguments by the C++ names (MoEOptions and every
/// GateOptions field; `gate` is the gate's type); None keeps the C++ default, an unknown name is
/// an error naming it. moe_options.cpp.
MoEOptions options_from(const py::dict& kw);
/// hybridmoe.configure_cpu and cpu_buffer_cache_stats (cpu_runtime.h). cpu_runtime.cpp.
void bind_cpu_runtime(py::module_& m);
/// _C._MoELayer, the C++ layer behind hybridmoe.MoE, and _C._reference_moe (tests). moe.cpp.
void bind_moe(py::module_& m);

}  // namespace hybridmoe::python
