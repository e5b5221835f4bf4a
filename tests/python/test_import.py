# test_import.py — the package imports from the build tree, is the project's version, shares
# pybind11's internals with torch, and refuses a torch other than the one it was built for.
import os
import re
import subprocess
import sys

import torch

import hybridmoe

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_version_is_the_projects():
    with open(os.path.join(REPO, "CMakeLists.txt")) as f:
        version = re.search(r"project\(hybridmoe VERSION ([0-9.]+)", f.read()).group(1)
    assert hybridmoe.__version__ == version


def test_extension_lies_in_the_package_on_the_path():
    package = os.path.dirname(hybridmoe.__file__)
    assert os.path.dirname(hybridmoe._C.__file__) == package
    assert any(os.path.samefile(package, os.path.join(p, "hybridmoe"))
               for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
               if os.path.isdir(os.path.join(p, "hybridmoe")))


def test_pybind11_abi_equals_torchs():
    abi = hybridmoe._C._pybind11_abi
    assert abi["compiler_type"] == torch._C._PYBIND11_COMPILER_TYPE
    assert abi["stdlib"] == torch._C._PYBIND11_STDLIB
    assert abi["build_abi"] == torch._C._PYBIND11_BUILD_ABI
    import builtins
    assert abi["internals_id"] in vars(builtins)  # torch's internals are the extension's
    assert hybridmoe._C._sees_torch_classes()


def test_built_for_this_torch():
    assert hybridmoe._C._torch_version == torch.__version__
    assert hybridmoe._build_info.TORCH_DIR == os.path.dirname(torch.__file__)


def test_another_torch_version_is_refused_at_import():
    # A torch reporting another version (as a different installation would): ImportError naming
    # both versions, before the extension is loaded.
    code = ("import torch; torch.__version__ = '9.9.9'\n"
            "try:\n    import hybridmoe\n"
            "except ImportError as e:\n    print('ImportError:', e)\n"
            "import sys; print('loaded' if 'hybridmoe._C' in sys.modules else 'not loaded')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert f"hybridmoe was built for torch {torch.__version__}" in out
    assert "this interpreter runs torch 9.9.9" in out
    assert out.rstrip().endswith("not loaded")
