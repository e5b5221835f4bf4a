"""hybridmoe.verify: the proof `hmoe verify` gives for hybridmoe's own model, for the user's.

verify(build_model, make_batch, layouts, steps) trains the user's model for a few steps under
each layout on the ranks at hand, and the same model in one process (on every rank, from the
same initial weights, the global batch taken in the layout's dp parts as gradient accumulation),
and compares every rank's loss at every step and every parameter after the last step (the MoE
layers' gathered to their one-process shapes). A layout passes when every difference is within
atol + rtol * |reference|.
"""
import re

import torch
import torch.distributed as dist

from . import _C
from .moe import MoE
from .parallel import GroupedDataParallel, ParallelGroups


class VerifyError(_C.Error):
    """A layout's losses or parameters differ from one process's (the message says where)."""


def _layout_kwargs(layout):
    """A layout as ParallelGroups.from_torch's keywords: a dict, a ParallelConfig, or a string
    such as "ep2" or "tp2.dp2.ep2.etp2" (dimensions not named are 1, dp fills the world)."""
    if isinstance(layout, dict):
        return dict(layout)
    if isinstance(layout, _C.ParallelConfig):
        return dict(tp=layout.tp, dp=layout.dp, pp=layout.pp, ep=layout.ep, etp=layout.etp)
    if isinstance(layout, str):
        out = {}
        for part in layout.split("."):
            m = re.fullmatch(r"(tp|dp|pp|ep|etp)(\d+)", part)
            if not m:
                raise _C.Error(f"verify: layout {layout!r}: part {part!r} should be a dimension "
                               "(tp, dp, pp, ep, etp) followed by its size, e.g. \"tp2.ep2\"")
            out[m.group(1)] = int(m.group(2))
        return out
    raise _C.Error(f"verify: a layout should be a dict, a ParallelConfig or a string like "
                   f"\"ep2\", got {type(layout).__name__}")


def _moe_prefixes(model):
    return {prefix: sub for prefix, sub in model.named_modules() if isinstance(sub, MoE)}


def _full_state(model):
    """{name: tensor} of every parameter, the MoE layers' gathered to one-process shapes
    (collective over their groups)."""
    moes = _moe_prefixes(model)
    out = {}
    for name, p in model.named_parameters():
        if not any(name.startswith(prefix + ".") for prefix in moes):
            out[name] = p.detach().clone()
    for prefix, moe in moes.items():
        for name, t in moe.full_state_dict().items():
            out[f"{prefix}.{name}"] = t
    return out


@torch.no_grad()
def _load_initial(model, initial):
    """Copies the one-process model's initial weights (`initial`, by name) into the distributed
    model: each MoE layer's shard through load_full_state_dict, the rest by name."""
    moes = _moe_prefixes(model)
    for prefix, moe in moes.items():
        mine = {name[len(prefix) + 1:]: t for name, t in initial.items()
                if name.startswith(prefix + ".")}
        if not mine:
            raise VerifyError(f"verify: build_model(groups) has an MoE layer {prefix!r} that "
                              "build_model(None) does not have")
        moe.load_full_state_dict(mine)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if any(name.startswith(prefix + ".") for prefix in moes):
            continue
        if name not in initial or initial[name].shape != t.shape:
            raise VerifyError(f"verify: {name!r} of build_model(groups) has no counterpart of "
                              "the same shape in build_model(None)")
        t.copy_(initial[name])


def _parts(batch, dp):
    if not isinstance(batch, (tuple, list)):
        batch = (batch,)
    parts = []
    for t in batch:
        if t.shape[0] % dp != 0:
            raise _C.Error(f"verify: the batch's first dimension {t.shape[0]} is not divisible by "
                           f"the layout's dp = {dp}")
        parts.append(t.chunk(dp, dim=0))
    return [tuple(p[i] for p in parts) for i in range(dp)]


def _reference_run(build_model, make_batch, steps, dp, tp, optimizer, seed):
    torch.manual_seed(seed)
    model = build_model(None)
    for moe in _moe_prefixes(model).values():
        # Each dp part's tokens in tp groups, as the layout's tp ranks route their slices.
        moe.route_groups = tp
    initial = {k: v.detach().clone() for k, v in
               list(model.named_parameters()) + list(model.named_buffers())}
    opt = optimizer(model.parameters())
    losses = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        row = []
        for part in _parts(make_batch(step), dp):
            loss = model(*part)
            (loss / dp).backward()
            row.append(loss.item())
        opt.step()
        losses.append(row)
    return model, initial, losses


def verify(build_model, make_batch, layouts, steps=3, optimizer=None, seed=0, rtol=1e-9,
           atol=1e-12, check=True):
    """Proves that the user's model computes under each layout what it computes in one process.

    build_model(groups) builds the model: groups is a hybridmoe.ParallelGroups (pass it to the
    model's hybridmoe.MoE layers) or None for the one-process model; the model's forward(*part)
    returns this rank's loss (the mean over its part of the batch, auxiliary losses included).
    make_batch(step) returns the global batch of that step (a tensor or a tuple of tensors),
    split along dim 0 into the layout's dp parts. layouts: ParallelGroups.from_torch keywords
    (dicts), ParallelConfigs or strings ("ep2", "tp2.ep2.etp2"). optimizer(params) builds the
    optimizer (default SGD, lr 0.1). Collective: every rank of the default torch.distributed
    world calls it the same way. The distributed model starts from the one-process model's
    initial weights and keeps its replicas in sync with GroupedDataParallel.

    Returns one dict per layout: layout, max_loss_error, max_param_error (relative, over every
    rank), passed. With check=True a failed layout raises VerifyError naming the worst loss or
    parameter.

    Example (under torchrun, 4 ranks):
        results = hybridmoe.verify(lambda g: Net(groups=g), lambda s: batches[s],
                                   layouts=["ep1", "ep2", "ep4"], steps=3)
    """
    if not dist.is_initialized():
        raise _C.Error("verify: torch.distributed is not initialized (it runs on the ranks of "
                       "the default world)")
    if optimizer is None:
        optimizer = lambda params: torch.optim.SGD(params, lr=0.1)  # noqa: E731
    results = []
    references = {}
    for layout in layouts:
        kwargs = _layout_kwargs(layout)
        if kwargs.get("pp", 1) != 1:
            raise _C.Error(f"verify: layout {layout!r} has pp = {kwargs['pp']}; a Python "
                           "model's pipeline stages are its own, so verify runs layouts with "
                           "pp = 1")
        groups = ParallelGroups.from_torch(**kwargs)
        config = groups.config
        key = (config.dp, config.tp)
        if key not in references:
            references[key] = _reference_run(build_model, make_batch, steps, config.dp,
                                             config.tp, optimizer, seed)
        reference, initial, ref_losses = references[key]

        # 1. The distributed model from the one-process model's initial weights.
        torch.manual_seed(seed)
        model = build_model(groups)
        _load_initial(model, initial)
        gdp = GroupedDataParallel(model, groups, broadcast=False)
        opt = optimizer(model.parameters())

        # 2. Train; every rank's loss against the reference loss of its dp part.
        me = groups.coords()["dp"]
        worst_loss, where_loss = 0.0, ""
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = gdp(*_parts(make_batch(step), config.dp)[me])
            loss.backward()
            gdp.reduce_gradients()
            opt.step()
            ref = ref_losses[step][me]
            err = abs(loss.item() - ref) / (atol + rtol * abs(ref))
            if err > worst_loss:
                worst_loss, where_loss = err, f"step {step}: {loss.item()!r} against {ref!r}"

        # 3. Every parameter after the last step.
        mine = _full_state(model)
        theirs = dict(reference.named_parameters())
        theirs.update(reference.named_buffers())
        worst_param, where_param = 0.0, ""
        for name, t in mine.items():
            r = theirs[name].detach()
            err = ((t - r).abs() / (atol + rtol * r.abs())).max().item() if t.numel() else 0.0
            if err > worst_param:
                worst_param, where_param = err, name

        # 4. One verdict on every rank.
        verdict = torch.tensor([worst_loss, worst_param], dtype=torch.float64)
        dist.all_reduce(verdict, op=dist.ReduceOp.MAX)
        result = dict(layout=str(config), max_loss_error=verdict[0].item(),
                      max_param_error=verdict[1].item(),
                      passed=bool(verdict[0].item() <= 1.0 and verdict[1].item() <= 1.0))
        results.append(result)
        if check and not result["passed"]:
            detail = []
            if verdict[0].item() > 1.0:
                detail.append(f"losses differ by {verdict[0].item():.3g}x the tolerance"
                              + (f" (here, {where_loss})" if where_loss else ""))
            if verdict[1].item() > 1.0:
                detail.append(f"parameters differ by {verdict[1].item():.3g}x the tolerance"
                              + (f" (here, worst {where_param})" if where_param else ""))
            raise VerifyError(f"verify: layout {config} does not equal one process: "
                              + "; ".join(detail) + f" (rtol={rtol}, atol={atol})")
    return results

