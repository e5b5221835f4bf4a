"""hybridmoe.load_hf: a Hugging Face checkpoint directory as the state dict of this rank's model
with replaced MoE blocks (hf_blocks.py): every tensor by its HF name, the MoE blocks' expert
tensors cut to the experts and hidden slice this rank's layer holds, and the shared expert to its
tp slice (read from the safetensors files through hybridmoe's C++ reader, hf::Checkpoint: only those bytes are read).
"""
import collections
import re

import torch

from . import _C
from .hf_blocks import HFMoEBlock
from .hf_names import BlockNames
from .moe import MoE


class _Source:
    """What config.json and the tensor names say about one MoE block of the checkpoint."""

    def __init__(self, ckpt, cfg, layer):
        family = cfg["family"]
        base = f"model.layers.{layer}."
        self.prefix = base + "mlp"
        if family == "mixtral" and any(n.startswith(base + "block_sparse_moe.")
                                       for n in ckpt.names()):
            self.prefix = base + "block_sparse_moe"  # transformers v4's Mixtral
        fused = self.prefix + ".experts.gate_up_proj" in ckpt
        self.layout = "fused" if fused else "per-expert"
        self.family = family
        self.sizes = (cfg["d_model"], cfg["num_experts"], cfg["expert_hidden"])
        self.shared = (cfg["shared_expert_hidden"], bool(cfg["shared_expert_gate"]))

    def names(self, layout, local_experts, hidden_range, shared_range=None):
        d, E, h = self.sizes
        return BlockNames(self.family, layout, d, E, h, local_experts, hidden_range,
                          shared_hidden=self.shared[0], shared_gate=self.shared[1],
                          shared_range=shared_range)


def _share_of(source, model, groups, probes):
    """(local experts, hidden range, shared expert's hidden range, layout and prefix of the
    target names) for one block."""
    if model is not None:
        # Mixtral's block is block_sparse_moe in v4 and mlp in v5: the model's name is taken.
        prefixes = [source.prefix] + [source.prefix.rsplit(".", 1)[0] + "." + alt
                                      for alt in ("block_sparse_moe", "mlp")
                                      if source.family == "mixtral"]
        block = None
        for prefix in prefixes:
            try:
                block = model.get_submodule(prefix)
            except AttributeError:
                continue
            if isinstance(block, HFMoEBlock):
                break
        if not isinstance(block, HFMoEBlock):
            raise ValueError(f"load_hf: the model has no replaced MoE block at {source.prefix} "
                             f"(found {type(block).__name__}); call replace_hf_moe_blocks first")
        d, E, h = source.sizes
        o = block.options
        if (o["d_model"], o["num_experts"], o["d_hidden"]) != (d, E, h):
            raise ValueError(f"load_hf: {source.prefix}: the model's block has d_model, experts, "
                             f"hidden {o['d_model']}, {o['num_experts']}, {o['d_hidden']}; the "
                             f"checkpoint {d}, {E}, {h}")
        if (o["shared_expert_hidden"] or 0) != source.shared[0]:
            raise ValueError(f"load_hf: {source.prefix}: the model's block has a shared expert of "
                             f"width {o['shared_expert_hidden'] or 0}; the checkpoint "
                             f"{source.shared[0]}")
        return (block.local_experts, block.hidden_range, block.shared_hidden_range, block.layout,
                prefix)
    d, E, h = source.sizes
    hs = source.shared[0]
    if groups is None:
        return list(range(E)), (0, h), (0, hs), source.layout, source.prefix
    key = (E, h, hs)
    if key not in probes:
        # The layer's own knowledge of its share under `groups`, from a probe of width
        # d_model = 1 (the share does not depend on it; its weights are small and thrown away,
        # and its init's random draws are not the program's).
        with torch.random.fork_rng(devices=[]):
            probe = MoE(1, E, top_k=1, d_hidden=h, shared_expert_hidden=hs, groups=groups)
        probes[key] = (probe.local_experts, probe.hidden_range, probe.shared_hidden_range)
    local, hidden, shared = probes[key]
    return local, hidden, shared, source.layout, source.prefix


def _dense_shapes(model):
    """name -> shape of the model's state outside its replaced blocks (parameters and persistent
    buffers, walked without building the blocks' HF tensors; the blocks are checked against
    config.json and by their own load hook)."""
    shapes, skip = {}, []
    for name, module in model.named_modules():
        if any(name.startswith(s) for s in skip):
            continue
        if isinstance(module, HFMoEBlock):
            skip.append(name + ".")
            continue
        prefix = name + "." if name else ""
        for k, t in module._parameters.items():
            if t is not None:
                shapes[prefix + k] = tuple(t.shape)
        for k, t in module._buffers.items():
            if t is not None and k not in module._non_persistent_buffers_set:
                shapes[prefix + k] = tuple(t.shape)
    return shapes


def _read(ckpt, name, full_shape, cut, errors):
    dtype, shape = ckpt.info(name)
    if tuple(shape) != tuple(full_shape):
        errors.append(f"{name} has shape {list(shape)}, expected {list(full_shape)}")
        return None
    return cut(ckpt.get(name)).clone()  # only this share is read from the mapped file


def load_hf(dir, model=None, groups=None, allow_unused=None):
    """The state dict (name -> tensor, HF names, the checkpoint's dtypes, CPU, copies) of the
    Hugging Face checkpoint in `dir` (config.json and model.safetensors, or the shards
    model.safetensors.index.json names) for this rank's model with replaced MoE blocks:
    model.load_state_dict(load_hf(dir, model)) then loads it.

    The MoE blocks (those config.json places, under model.layers.N.mlp, or .block_sparse_moe for
    transformers v4's Mixtral) keep, of their routed experts, the experts and hidden slice this
    rank's layer holds (MoE.local_experts, MoE.hidden_range), and of the shared expert its tp
    slice (MoE.shared_hidden_range); only those bytes are read:
    - model: the model whose blocks replace_hf_moe_blocks swapped (at the checkpoint's names);
      each block's share and expert layout are used (a per-expert checkpoint can fill a fused
      block and the reverse), and every other tensor must match the model's state dict: names
      the model lacks (unless they match `allow_unused`, a regular expression), names the
      checkpoint lacks, and other shapes are errors naming them.
    - no model: the share of a hybridmoe.MoE of the block's sizes under `groups` (one process:
      everything), in the checkpoint's layout.
    Distributed: each rank calls it with its own model (or groups) and gets its own share; the
    router and the dense tensors are whole on every rank. No communication.
    Each block's tensors are checked against config.json: a missing, extra or misshapen expert,
    gate or shared-expert tensor is an error naming it (ValueError, all of them at once).
    """
    ckpt = _C._Checkpoint(str(dir))
    cfg = _C.hf_config(str(dir))
    names = ckpt.names()
    errors, used, state = [], set(), collections.OrderedDict()
    probes = {}
    expected_state = _dense_shapes(model) if model is not None else None
    for layer in cfg["moe_layers"]:
        source = _Source(ckpt, cfg, layer)
        local, hidden, shared, layout, target = _share_of(source, model, groups, probes)
        full = source.names(source.layout, range(cfg["num_experts"]), (0, source.sizes[2]))
        expected = {source.prefix + "." + p.name for p in full.pieces()}
        under = {n for n in names if n.startswith(source.prefix + ".")}
        for n in sorted(under - expected):
            errors.append(f"{n} is not a tensor of a {cfg['family']} {source.layout} MoE block "
                          f"with {cfg['num_experts']} experts")
        for n in sorted(expected - under):
            errors.append(f"{n} is missing")
        used |= under
        share = source.names(source.layout, local, hidden, shared)
        hf = {}
        for p in share.pieces():
            name = source.prefix + "." + p.name
            if name in names:
                t = _read(ckpt, name, p.full_shape, p.cut, errors)
                if t is not None:
                    hf[p.name] = t
        if len(hf) != len(share.pieces()):
            continue
        if layout != source.layout:  # into the model's expert layout
            hf = source.names(layout, local, hidden, shared).to_hf(share.to_hybridmoe(hf))
        for k, v in hf.items():
            state[target + "." + k] = v
    for n in names:
        if n not in used:
            if expected_state is not None and n not in expected_state:
                if not (allow_unused and re.fullmatch(allow_unused, n)):
                    errors.append(f"{n} is not a tensor of the model (allow_unused= to skip it)")
                continue
            state[n] = ckpt.get(n).clone()
    if expected_state is not None:
        for k, shape in expected_state.items():
            if k not in state:
                errors.append(f"{k} is missing (the model has it)")
            elif tuple(state[k].shape) != shape:
                errors.append(f"{k} has shape {list(state[k].shape)}, the model expects "
                              f"{list(shape)}")
    if errors:
        raise ValueError(f"load_hf: {dir}: " + "; ".join(errors))
    return state
