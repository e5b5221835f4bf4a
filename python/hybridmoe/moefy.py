"""hybridmoe.moefy: the dense MLPs of a PyTorch model replaced by MoE layers (FastMoE's fmoefy),
optionally upcycled (every expert starts as a copy of the MLP it replaces), and
hybridmoe.aux_loss: the auxiliary losses of a model's MoE layers after a forward.

A replaced MLP becomes an MoEMLP: the same call signature (x [..., d] -> [..., d]), a
hybridmoe.MoE inside (its parameters under <name>.moe.gate.weight, <name>.moe.experts.w1, ...),
and the layer's auxiliary loss and statistics of its last forward kept on the module
(last_aux_loss, last_stats) for hybridmoe.aux_loss(model) to collect. The semantics follow the C++
moefy (src/model/moefy.cpp): experts of the MLP's width, expert weights as x @ w1 (hybridmoe's
[E, d, h] layout, i.e. the Linear weights [h, d] transposed), each local expert (and hidden slice,
on a distributed layer) filled with the MLP's weights.
"""
import re

import torch

from .moe import MoE

# Activations of a dense MLP by module type; the names are hybridmoe's.
_ACTIVATIONS = {torch.nn.GELU: "gelu", torch.nn.ReLU: "relu"}
# Attributes where an fc1/fc2 MLP keeps its activation module.
_ACT_ATTRS = ("act", "act_fn", "activation", "activation_fn")
_EXPECTED = ("nn.Sequential(nn.Linear(d, h), nn.GELU() or nn.ReLU(), nn.Linear(h, d)); a module "
             "with fc1 [h, d] and fc2 [d, h] Linears and a GELU or ReLU module in one of "
             f"{', '.join(_ACT_ATTRS)} (or activation= given); a SwiGLU module with "
             "gate_proj/up_proj [h, d] and down_proj [d, h] Linears (LLaMA) or w1/w3 [h, d] and "
             "w2 [d, h] (Mixtral), whose act_fn, if any, is nn.SiLU")


def aux_loss(model, reset=True):
    """The sum of the auxiliary losses of the MoE layers of `model` (MoEMLP from moefy, the blocks
    of replace_hf_moe_blocks) from their last forward: add it to the training loss. reset=True
    (the default) forgets them afterwards, so that a loss is counted once and a layer that did not
    run in the next forward adds nothing. Zero (a tensor) when no MoE layer has run."""
    total = None
    for module in model.modules():
        loss = getattr(module, "last_aux_loss", None)
        if not isinstance(loss, torch.Tensor):
            continue
        total = loss if total is None else total + loss
        if reset:
            module.last_aux_loss = None
    return total if total is not None else torch.zeros(())


class MoEMLP(torch.nn.Module):
    """A hybridmoe.MoE in the place of a dense MLP: forward(x), x [..., d_model] -> [..., d_model]
    (x flattened to [tokens, d_model] for the layer and reshaped back). The layer's auxiliary loss
    and routing statistics of the last forward are kept in last_aux_loss and last_stats."""

    def __init__(self, moe):
        super().__init__()
        self.moe = moe
        self.last_aux_loss = None
        self.last_stats = None

    def forward(self, x):
        d = x.shape[-1]
        out, aux, stats = self.moe(x.reshape(-1, d))
        self.last_aux_loss, self.last_stats = aux, stats
        return out.reshape(x.shape)


class _Dense:
    """A recognised dense MLP: its Linears in hybridmoe's roles (fc1 -> w1, fc2 -> w2, the SwiGLU
    up projection -> w3) and its activation."""

    def __init__(self, activation, fc1, fc2, fc3=None):
        self.activation, self.fc1, self.fc2, self.fc3 = activation, fc1, fc2, fc3
        self.d_model, self.d_hidden = fc1.in_features, fc1.out_features

    def linears(self):
        return [m for m in (self.fc1, self.fc2, self.fc3) if m is not None]


def _activation_of(module):
    for t, name in _ACTIVATIONS.items():
        if type(module) is t:
            if t is torch.nn.GELU and getattr(module, "approximate", "none") != "none":
                return None  # hybridmoe's gelu is the exact one
            return name
    return None


def _recognise(name, module, activation):
    """The _Dense of `module`, or a ValueError naming it and what was expected."""
    def refuse(why):
        return ValueError(f"moefy: {name} ({type(module).__name__}) {why}; expected {_EXPECTED}")

    def linear(attr):
        m = getattr(module, attr, None)
        return m if isinstance(m, torch.nn.Linear) else None

    if isinstance(module, torch.nn.Sequential):
        parts = list(module)
        if (len(parts) != 3 or not isinstance(parts[0], torch.nn.Linear)
                or not isinstance(parts[2], torch.nn.Linear)):
            raise refuse("is a Sequential of " + ", ".join(type(p).__name__ for p in parts))
        act = _activation_of(parts[1])
        if act is None:
            raise refuse(f"has the activation {parts[1]!r}, which hybridmoe does not have")
        dense = _Dense(act, parts[0], parts[2])
    elif linear("gate_proj") and linear("up_proj") and linear("down_proj"):
        dense = _Dense("swiglu", linear("gate_proj"), linear("down_proj"), linear("up_proj"))
    elif linear("w1") and linear("w2") and linear("w3"):
        dense = _Dense("swiglu", linear("w1"), linear("w2"), linear("w3"))
    elif linear("fc1") and linear("fc2"):
        act = None
        for attr in _ACT_ATTRS:
            m = getattr(module, attr, None)
            if isinstance(m, torch.nn.Module):
                act = _activation_of(m)
                if act is None:
                    raise refuse(f"has the activation {attr}={m!r}, which hybridmoe does not have")
                break
        act = act or activation
        if act is None:
            raise refuse("has fc1/fc2 but no activation module in "
                         f"{', '.join(_ACT_ATTRS)}; pass activation= ('gelu' or 'relu')")
        dense = _Dense(act, linear("fc1"), linear("fc2"))
    else:
        raise refuse("is not a dense MLP moefy knows")
    if dense.activation == "swiglu":
        act_fn = getattr(module, "act_fn", None)
        if act_fn is not None and type(act_fn) is not torch.nn.SiLU:
            raise refuse(f"is gated with act_fn={act_fn!r}; hybridmoe's swiglu gates with SiLU")
    d, h = dense.d_model, dense.d_hidden
    for role, lin, shape in (("fc1", dense.fc1, (h, d)), ("fc2", dense.fc2, (d, h)),
                             ("up", dense.fc3, (h, d))):
        if lin is not None and tuple(lin.weight.shape) != shape:
            raise refuse(f"has its {role} Linear of weight shape {list(lin.weight.shape)}, "
                         f"expected {list(shape)} (d_model={d}, hidden={h})")
    return dense


@torch.no_grad()
def _upcycle(moe, dense):
    """Every local expert of `moe` (its hidden slice) = the dense MLP's weights and biases (the
    output bias where this rank holds it: the first hidden slice, as the layer adds it once)."""
    start, length = moe.hidden_range
    experts = moe.experts

    def fill(param, value):  # value: one expert's tensor, broadcast over the local experts
        param.copy_(value.unsqueeze(0).expand_as(param))

    fill(experts.w1, dense.fc1.weight.t()[:, start:start + length])
    fill(experts.w2, dense.fc2.weight.t()[start:start + length])
    if dense.fc3 is not None:
        fill(experts.w3, dense.fc3.weight.t()[:, start:start + length])
    if hasattr(experts, "b1"):
        for lin, bias, sliced in ((dense.fc1, experts.b1, True),
                                  (dense.fc2, getattr(experts, "b2", None), False),
                                  (dense.fc3, getattr(experts, "b3", None), True)):
            if bias is None:
                continue
            if lin is None or lin.bias is None:
                bias.zero_()
            else:
                fill(bias, lin.bias[start:start + length] if sliced else lin.bias)


def _matcher(match):
    if callable(match):
        return match
    if isinstance(match, str):
        pattern = re.compile(match)
        return lambda name, module: pattern.fullmatch(name) is not None
    if isinstance(match, re.Pattern):
        return lambda name, module: match.fullmatch(name) is not None
    raise TypeError(f"moefy: match must be a regular expression (str or re.Pattern) or a callable "
                    f"(name, module) -> bool, got {type(match).__name__}")


def moefy(model, match, num_experts, top_k=2, upcycle=True, groups=None, **moe_options):
    """Replaces the dense MLPs of `model` whose qualified name (as in named_modules())
    `match` accepts — a regular expression matched against the whole name (re.fullmatch), or a
    callable (name, module) -> bool — with MoEMLP(hybridmoe.MoE(d_model, num_experts, top_k=top_k,
    **moe_options)); a matched module's descendants are not visited. Returns the list of replaced
    names. Refuses (ValueError, naming the module and what was expected) a matched module that is
    not a recognised dense MLP (see _EXPECTED), and a model where nothing matches.

    The experts take the MLP's hidden width and activation (swiglu for gate_proj/up_proj/down_proj
    or w1/w2/w3; d_hidden= / activation= given must agree) and have biases when the MLP's Linears
    do (bias= given overrides). upcycle=True copies the MLP's weights (and biases; zero where a
    Linear has none) into every expert: with one expert and top_k=1, or with
    normalize_top_k_weights=True and any number of experts, the model computes what it computed
    (the gate is freshly initialised). groups: the layout (hybridmoe.MoE's groups=); each rank
    fills its own experts and hidden slice. The new layers take the MLP's device and dtype."""
    accept = _matcher(match)
    found, skip = [], []
    for name, module in model.named_modules():
        if any(name.startswith(s + ".") for s in skip) or not name:
            continue
        if accept(name, module):
            found.append((name, module))
            skip.append(name)
    if not found:
        raise ValueError(f"moefy: no module of {type(model).__name__} matches {match!r}")
    activation = moe_options.pop("activation", None)
    replaced = []
    for name, module in found:
        dense = _recognise(name, module, activation)
        if activation is not None and activation != dense.activation:
            if upcycle:
                raise ValueError(f"moefy: {name} computes {dense.activation}, but "
                                 f"activation={activation!r} was given; upcycling copies the MLP")
            dense.activation = activation
        options = dict(moe_options)
        d_hidden = options.pop("d_hidden", None)
        if d_hidden not in (None, 0, dense.d_hidden):
            if upcycle:
                raise ValueError(f"moefy: {name}: upcycled experts have the MLP's width "
                                 f"{dense.d_hidden}, got d_hidden={d_hidden}")
        else:
            d_hidden = dense.d_hidden
        if "bias" not in options:
            options["bias"] = any(lin.bias is not None for lin in dense.linears())
        elif upcycle and not options["bias"] and any(l.bias is not None for l in dense.linears()):
            raise ValueError(f"moefy: {name}: the MLP has biases, but bias=False was given; "
                             "upcycling would drop them")
        if groups is not None:
            options["groups"] = groups
        weight = dense.fc1.weight
        moe = MoE(dense.d_model, num_experts, top_k=top_k, d_hidden=d_hidden,
                  activation=dense.activation, **options)
        moe = moe.to(device=weight.device, dtype=weight.dtype)
        if upcycle:
            _upcycle(moe, dense)
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, MoEMLP(moe))
        replaced.append(name)
    return replaced
