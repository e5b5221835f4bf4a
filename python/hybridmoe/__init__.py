"""hybridmoe: Mixture-of-Experts training from C++17/LibTorch, for PyTorch programs.

The package holds:
  Group                   a torch.distributed process group as hybridmoe's communication group
  all_reduce_sum, copy_to_group, all_gather_rows, reduce_scatter_rows, all_to_all,
  sum_over_ranks, barrier the collectives of hybridmoe's communication core over a Group
  hf_config(dir)          a Hugging Face config.json as hybridmoe reads it
  MoE                     the MoE layer as a torch.nn.Module (one process, or distributed over a
                          layout's groups), its weights nn.Parameters bound into the C++ layer
                          at each forward
  moefy(model, match, num_experts, ...)   dense MLPs replaced by MoE layers (MoEMLP),
                          upcycled; aux_loss(model) the sum of their auxiliary losses
  replace_hf_moe_blocks(model)   a Hugging Face model's sparse-MoE blocks swapped for
                          HFMoEBlock (a hybridmoe.MoE with the block's state dict)
  load_hf(dir, model)     a Hugging Face checkpoint as the state dict of this rank's model
                          with replaced blocks (its experts and hidden slice only)
  ParallelConfig, ParallelGroups   a layout (tp, dp, pp, ep, etp) and one rank's groups of it,
                          made of torch.distributed groups (from_torch, from_groups)
  GroupedDataParallel     each parameter's gradient summed over its own group (FastMoE's
                          DistributedGroupedDataParallel); exclude_experts_from_ddp(model) for
                          torch DDP on the dense part
  verify(build_model, make_batch, layouts)   the user's model under each layout against one
                          process: losses every step, parameters after (hmoe verify's proof)
  Error                   raised by the C++ core (a RuntimeError), with the C++ message

The extension is built against one torch (see _build_info): importing it under another torch
raises ImportError saying which and what to do.
"""
import os as _os
import sys as _sys

# torch first: the extension links libtorch_python, and torch.distributed registers the
# pybind11 classes (ProcessGroup, ...) that the extension receives.
import torch
import torch.distributed

from . import _build_info


def _torch_mismatch(what):
    return ImportError(
        f"hybridmoe was built for torch {_build_info.TORCH_VERSION} ({_build_info.TORCH_DIR}, "
        f"Python {_build_info.PYTHON_VERSION}, {_build_info.PYTHON_EXECUTABLE}), but {what}; "
        f"rebuild hybridmoe for this interpreter (cmake -DPython3_EXECUTABLE={_sys.executable})")


if torch.__version__ != _build_info.TORCH_VERSION:
    raise _torch_mismatch(f"this interpreter runs torch {torch.__version__} from "
                          f"{_os.path.dirname(torch.__file__)}")

from . import _C  # noqa: E402  (after torch, on purpose)

if _C._torch_version != _build_info.TORCH_VERSION:
    raise _torch_mismatch(f"its extension {_C.__file__} was built for torch {_C._torch_version}")
if not _C._sees_torch_classes():
    import builtins as _builtins

    _torch_ids = [k for k in vars(_builtins) if k.startswith("__pybind11_internals_v")]
    raise ImportError(
        "hybridmoe's extension does not share pybind11's internals with torch, so torch's classes "
        f"(ProcessGroup) cannot reach it: the extension's internals are "
        f"{_C._pybind11_abi['internals_id']}, torch's {', '.join(_torch_ids) or 'unknown'} "
        f"(torch._C: {torch._C._PYBIND11_COMPILER_TYPE} {torch._C._PYBIND11_STDLIB} "
        f"{torch._C._PYBIND11_BUILD_ABI}); rebuild hybridmoe with torch's compiler and pybind11")

from ._C import (  # noqa: E402
    Error,
    Group,
    all_gather_rows,
    all_reduce_sum,
    all_to_all,
    barrier,
    configure_cpu,
    copy_to_group,
    cpu_buffer_cache_stats,
    ParallelConfig,
    hf_config,
    reduce_scatter_rows,
    valid_parallel_configs,
    sum_over_ranks,
)
from .moe import MoE  # noqa: E402
from .parallel import (  # noqa: E402
    GroupedDataParallel,
    ParallelGroups,
    exclude_experts_from_ddp,
)
from .moefy import MoEMLP, aux_loss, moefy  # noqa: E402
from .hf_blocks import HFMoEBlock, replace_hf_moe_blocks  # noqa: E402
from .hf_load import load_hf  # noqa: E402
from .verify import VerifyError, verify  # noqa: E402

__version__ = _C.__version__

__all__ = [
    "Error",
    "Group",
    "GroupedDataParallel",
    "ParallelConfig",
    "ParallelGroups",
    "HFMoEBlock",
    "MoE",
    "MoEMLP",
    "aux_loss",
    "all_gather_rows",
    "all_reduce_sum",
    "all_to_all",
    "barrier",
    "configure_cpu",
    "copy_to_group",
    "cpu_buffer_cache_stats",
    "exclude_experts_from_ddp",
    "hf_config",
    "load_hf",
    "moefy",
    "reduce_scatter_rows",
    "replace_hf_moe_blocks",
    "sum_over_ranks",
    "valid_parallel_configs",
    "verify",
    "VerifyError",
    "__version__",
]
