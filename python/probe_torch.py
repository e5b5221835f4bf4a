# probe_torch.py — what python/CMakeLists.txt asks the interpreter at configure time: torch's
# version and directories, the pybind11 ABI torch was built with, and where packages go.
# Prints KEY=VALUE lines; exits 2 with a message on stderr when torch cannot be imported.
import os
import sys
import sysconfig

try:
    import torch
    import torch.distributed  # noqa: F401  (registers c10d's pybind11 types)
except Exception as e:  # noqa: BLE001  (any failure to import means: no usable torch)
    print(f"{sys.executable} cannot import torch: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(2)

import builtins

torch_dir = os.path.dirname(torch.__file__)
# pybind11 keeps its internals in a capsule in builtins named by PYBIND11_INTERNALS_ID (the
# pybind11 versions that keep them elsewhere leave nothing here).
internals = sorted(k for k in vars(builtins) if k.startswith("__pybind11_internals_v"))
platlib = sysconfig.get_path("platlib")
data = sysconfig.get_path("data")
values = {
    "TORCH_VERSION": torch.__version__,
    "TORCH_DIR": torch_dir,
    "TORCH_LIB_DIR": os.path.join(torch_dir, "lib"),
    "TORCH_LIBTORCH": os.path.realpath(os.path.join(torch_dir, "lib", "libtorch.so")),
    "TORCH_CMAKE_PREFIX": torch.utils.cmake_prefix_path,
    "TORCH_CXX11_ABI": int(torch.compiled_with_cxx11_abi()),
    "TORCH_DISTRIBUTED": int(torch.distributed.is_available()),
    "PYBIND11_COMPILER_TYPE": getattr(torch._C, "_PYBIND11_COMPILER_TYPE", ""),
    "PYBIND11_STDLIB": getattr(torch._C, "_PYBIND11_STDLIB", ""),
    "PYBIND11_BUILD_ABI": getattr(torch._C, "_PYBIND11_BUILD_ABI", ""),
    "PYBIND11_INTERNALS_ID": internals[0] if len(internals) == 1 else "",
    "PYBIND11_INTERNALS_IDS": ",".join(internals),
    "PYTHON_VERSION": "%d.%d.%d" % sys.version_info[:3],
    # The package directory relative to the interpreter's installation base (e.g.
    # lib/python3.11/dist-packages under /usr/local on Debian), so that CMAKE_INSTALL_PREFIX
    # moves it.
    "PLATLIB_RELATIVE": os.path.relpath(platlib, data) if platlib.startswith(data + os.sep) else "",
    "PLATLIB": platlib,
}
for key, value in values.items():
    print(f"{key}={value}")
