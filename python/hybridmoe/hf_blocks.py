"""hybridmoe.replace_hf_moe_blocks: the sparse-MoE blocks of a model built from Hugging Face's
MoE families (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V3; transformers v4's per-expert
ModuleList or v5's fused expert tensors) swapped for HFMoEBlock, a hybridmoe.MoE that computes
what the block computed and speaks the block's state dict.

Mechanism: HFMoEBlock *is* a hybridmoe.MoE (fused Parameters in hybridmoe's layout: gate.weight,
experts.w1 [E, d, h], ...; whatever handles a hybridmoe.MoE — GroupedDataParallel, the layouts —
handles it), with a state_dict hook that writes the block's HF names and shapes (hf_names.py) and
a load_state_dict pre-hook that reads them, so model.state_dict() / model.load_state_dict(hf_state)
behave as before the swap. named_parameters() shows hybridmoe's names (gate.weight is the same).
Costs: nothing per forward (the weights are stored in the layout the layer computes with);
state_dict() builds the HF tensors (a transposed copy of the expert weights, made contiguous) and
load_state_dict() converts them back (one more copy of the expert weights, transient).

The router runs in hybridmoe's router dtype (float32, or float64 for float64 inputs) where the HF
blocks compute their softmax in float32 and cast the weights back to the input dtype.

Distributed (groups=): the block holds this rank's share (MoE.local_experts, hidden_range,
shared_hidden_range); its state_dict() has the HF names of that share (per-expert names of its
experts only, cut to its hidden slice; fused tensors of its experts), its load accepts either the
share or the whole block's HF tensors (cutting the share), and full_hf_state_dict() gathers the
whole block's HF tensors. The router logits it returns are those of every token on every tp rank;
their gradient reaches the gate weight from this rank's tp slice of the tokens only, as the
layer's routing does, so that summing the gate's gradient over the stage counts each token once.
"""
import torch

from .hf_names import BlockNames
from .moe import MoE

# Class name -> family. DeepSeek-V3's block is DeepseekV3MoE.
BLOCK_CLASSES = {
    "MixtralSparseMoeBlock": "mixtral",
    "Qwen2MoeSparseMoeBlock": "qwen2_moe",
    "Qwen3MoeSparseMoeBlock": "qwen3_moe",
    "OlmoeSparseMoeBlock": "olmoe",
    "DeepseekV3MoE": "deepseek_v3",
}
# Options a family fixes (refused when given to replace_hf_moe_blocks).
_FAMILY_OPTIONS = ("top_k", "normalize_top_k_weights", "activation", "bias", "d_hidden",
                   "shared_expert_hidden", "shared_expert_gate", "score_function",
                   "selection_bias", "n_group", "topk_group", "routed_scaling_factor", "gate")


class HFMoEBlock(MoE):
    """A hybridmoe.MoE in the place of a Hugging Face sparse-MoE block (see the module's doc).

    forward(hidden_states [..., d]) returns what the HF block returned: the output of the input's
    shape, and with returns_router_logits also the router logits [tokens, E] (transformers v4's
    Mixtral, Qwen2/3-MoE and OLMoE blocks return (output, router_logits), which their decoder
    layers unpack; the logits are x @ gate.weight^T, differentiable, for HF's load-balancing
    loss). The layer's own auxiliary loss (aux_loss_coef) and statistics of the last forward are
    kept in last_aux_loss / last_stats for hybridmoe.aux_loss(model)."""

    def __init__(self, family, layout, d_model, num_experts, d_hidden, returns_router_logits,
                 **options):
        super().__init__(d_model, num_experts, d_hidden=d_hidden, **options)
        self.family, self.layout = family, layout
        self.returns_router_logits = returns_router_logits
        self.last_aux_loss = self.last_stats = None
        self._register_state_dict_hook(_save_hf)
        self._register_load_state_dict_pre_hook(self._load_hf)

    def hf_names(self):
        """The BlockNames of this layer's share (its experts and hidden slice)."""
        return self._names(self.local_experts, self.hidden_range, self.shared_hidden_range)

    def _names(self, local_experts, hidden_range, shared_range):
        o = self.options
        return BlockNames(self.family, self.layout, o["d_model"], o["num_experts"], o["d_hidden"],
                          local_experts, hidden_range, shared_hidden=o["shared_expert_hidden"] or 0,
                          shared_gate=bool(o.get("shared_expert_gate")), shared_range=shared_range)

    def full_hf_state_dict(self):
        """The whole block's tensors by their HF names and shapes, as one process holds them
        (e.g. to save an HF checkpoint of a distributed model): gathered from every rank's share,
        a collective over the stage's ep, etp and tp groups (MoE.full_state_dict)."""
        o = self.options
        full = self.full_state_dict()
        out = self._names(range(o["num_experts"]), (0, o["d_hidden"]), None).to_hf(full)
        if self._keeps_expert_bias():
            out["gate.expert_bias"] = full["gate.expert_bias"]
        return out

    def _keeps_expert_bias(self):
        # The bias is state of its own only when DeepSeek's name carries it or it is learned.
        return self.family != "deepseek_v3" and (self.options.get("bias_update_rate") or 0) > 0

    def forward(self, hidden_states):
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        out, aux, stats = super().forward(x)
        self.last_aux_loss, self.last_stats = aux, stats
        out = out.reshape(shape)
        if self.returns_router_logits:
            return out, self._router_logits(x)
        return out

    def _router_logits(self, x):
        tp = self.groups.config.tp if self.groups is not None else 1
        if tp == 1:
            return torch.nn.functional.linear(x, self.gate.weight)
        # The tp ranks hold the same tokens and route even consecutive slices of them.
        sizes = [len(r) for r in torch.arange(x.shape[0]).tensor_split(tp)]
        rank = self.groups.coords()["tp"]
        return _SliceOwnedLinear.apply(x, self.gate.weight, sum(sizes[:rank]), sizes[rank])

    def _load_hf(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                 error_msgs):
        names = self.hf_names()
        pieces = names.pieces()
        present = [p for p in pieces if prefix + p.name in state_dict]
        if not present:
            return  # hybridmoe's own names (or nothing): the default loading handles them
        hf = {}
        for p in pieces:
            key = prefix + p.name
            if key not in state_dict:
                missing_keys.append(key)
                continue
            t = state_dict.pop(key)
            shape = tuple(t.shape)
            if shape == p.local_shape:
                hf[p.name] = t
            elif shape == p.full_shape:
                hf[p.name] = p.cut(t)  # a whole checkpoint's tensor: this layer's share of it
            else:
                want = f"{list(p.local_shape)}" + (
                    f" (or {list(p.full_shape)} whole)" if p.full_shape != p.local_shape else "")
                error_msgs.append(f"size mismatch for {key}: got {list(shape)}, expected {want}")
        # Experts that are not this layer's (a whole checkpoint on a distributed layer).
        if names.layout == "per-expert":
            others = set(range(names.E)) - set(names.local)
            for e in others:
                for n in names.expert_names(e):
                    state_dict.pop(prefix + n, None)
        if len(hf) != len(pieces):
            # Mark our tensors as given, so that the missing HF names alone are reported.
            for k in self._own_names():
                state_dict.setdefault(prefix + k, self._own(k))
            return
        ours = names.to_hybridmoe(hf)
        for k in self._own_names():
            if k not in ours:
                ours[k] = self._own(k)  # state hybridmoe keeps and HF does not (step_load, ...)
        if self._keeps_expert_bias() and prefix + "gate.expert_bias" in state_dict:
            ours["gate.expert_bias"] = state_dict.pop(prefix + "gate.expert_bias")
        for k, v in ours.items():
            state_dict[prefix + k] = v

    def _own_names(self):
        return [k for k, _ in self.named_parameters()] + [k for k, _ in self.named_buffers()]

    def _own(self, name):
        owner, _, leaf = name.rpartition(".")
        return getattr(self.get_submodule(owner) if owner else self, leaf).detach()


class _SliceOwnedLinear(torch.autograd.Function):
    """x @ w^T for every row of x (x [T, d] the same on the tp ranks, w [E, d]); backward: x's
    gradient whole, w's from the rows [start, start + length) only (this rank's tp slice)."""

    @staticmethod
    def forward(ctx, x, w, start, length):
        ctx.save_for_backward(x, w)
        ctx.rows = (start, length)
        return torch.nn.functional.linear(x, w)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        s, n = ctx.rows
        gx = grad.matmul(w) if ctx.needs_input_grad[0] else None
        gw = grad[s:s + n].t().matmul(x[s:s + n]) if ctx.needs_input_grad[1] else None
        return gx, gw, None, None


def _save_hf(module, state_dict, prefix, local_metadata):
    ours = {}
    for k in module._own_names():
        if prefix + k in state_dict:
            ours[k] = state_dict.pop(prefix + k)
    for k, v in module.hf_names().to_hf(ours).items():
        state_dict[prefix + k] = v
    if module._keeps_expert_bias():
        state_dict[prefix + "gate.expert_bias"] = ours["gate.expert_bias"]
    return state_dict


class _Refusal(ValueError):
    pass


def _linear_weight(module, what, where):
    """The weight of a bias-free Linear (or a router module with a weight Parameter)."""
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise _Refusal(f"{where}: {what} has no weight (expected an nn.Linear or a router with a "
                       "weight Parameter)")
    if getattr(module, "bias", None) is not None:
        raise _Refusal(f"{where}: {what} has a bias, which the {what} of this family has not")
    return w


def _config_value(key, sources, where, default=None, required=True):
    for src in sources:
        if src is None:
            continue
        if isinstance(src, dict):
            if key in src:
                return src[key]
        elif hasattr(src, key):
            return getattr(src, key)
    if required and default is None:
        raise _Refusal(f"{where}: needs {key} (from the model's config, the block, or config=)")
    return default


def _experts_of(block, family, where):
    """(layout, E, h, HF state of the experts) of a block's experts."""
    ex = block.experts
    if isinstance(getattr(ex, "gate_up_proj", None), torch.Tensor):
        gu, dn = ex.gate_up_proj, getattr(ex, "down_proj", None)
        if not isinstance(dn, torch.Tensor) or gu.dim() != 3 or dn.dim() != 3:
            raise _Refusal(f"{where}: fused experts need gate_up_proj [E, 2h, d] and down_proj "
                           "[E, d, h]")
        for b in ("gate_up_proj_bias", "down_proj_bias"):
            if getattr(ex, b, None) is not None:
                raise _Refusal(f"{where}: fused experts with {b} (hybridmoe maps no expert bias)")
        return "fused", gu.shape[0], gu.shape[1] // 2
    if not isinstance(ex, (torch.nn.ModuleList, list, tuple)) or len(ex) == 0:
        raise _Refusal(f"{where}: experts is {type(ex).__name__}; expected a ModuleList of expert "
                       "MLPs (transformers v4) or fused gate_up_proj / down_proj (v5)")
    names = ("w1", "w3", "w2") if family == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    h = None
    for i, e in enumerate(ex):
        for n in names:
            w = _linear_weight(getattr(e, n, None), f"experts.{i}.{n}", where)
            h = h or (w.shape[0] if n != names[2] else w.shape[1])
    return "per-expert", len(ex), h


def _check_activation(block, sources, where):
    act = _config_value("hidden_act", sources, where, required=False)
    if act is not None and act != "silu":
        raise _Refusal(f"{where}: hidden_act {act!r} cannot be expressed (hybridmoe's swiglu gates "
                       "with silu)")


def _block_options(name, block, family, config, model_config):
    """(layout, d, E, h, options of HFMoEBlock) for one HF block."""
    where = f"{name} ({type(block).__name__})"
    gate = getattr(block, "gate", None)
    router_attrs = gate if family == "deepseek_v3" else block
    sources = (config, model_config, router_attrs, block)
    w = _linear_weight(gate, "gate", where) if gate is not None else None
    if w is None or getattr(block, "experts", None) is None:
        raise _Refusal(f"{where}: expected a gate and experts")
    E_gate, d = w.shape
    layout, E, h = _experts_of(block, family, where)
    if E != E_gate:
        raise _Refusal(f"{where}: the gate routes to {E_gate} experts, but there are {E}")
    _check_activation(block, sources, where)
    top_k = _config_value("num_experts_per_tok", sources, where, default=getattr(
        router_attrs, "top_k", None))
    opts = dict(top_k=int(top_k), activation="swiglu", bias=False, capacity_factor=0.0)
    if family == "mixtral":
        jitter = _config_value("router_jitter_noise", sources, where, required=False)
        if jitter:
            raise _Refusal(f"{where}: router_jitter_noise={jitter} cannot be expressed (Mixtral "
                           "scales the experts' input too; hybridmoe's jitter is the router's)")
        opts["normalize_top_k_weights"] = True
    else:
        opts["normalize_top_k_weights"] = bool(_config_value("norm_topk_prob", sources, where))
    if family == "qwen2_moe":
        sg = getattr(block, "shared_expert_gate", None)
        if getattr(block, "shared_expert", None) is None or sg is None:
            raise _Refusal(f"{where}: expected shared_expert and shared_expert_gate")
        _linear_weight(sg, "shared_expert_gate", where)
        opts["shared_expert_hidden"] = _shared_hidden(block.shared_expert, where)
        opts["shared_expert_gate"] = True
    if family == "deepseek_v3":
        scoring = _config_value("scoring_func", sources, where, required=False)
        if scoring not in (None, "sigmoid"):
            raise _Refusal(f"{where}: scoring_func {scoring!r} cannot be expressed (DeepSeek-V3 "
                           "routes by sigmoid)")
        method = _config_value("topk_method", sources, where, required=False)
        if method not in (None, "noaux_tc"):
            raise _Refusal(f"{where}: topk_method {method!r} cannot be expressed (hybridmoe has "
                           "DeepSeek-V3's noaux_tc)")
        if not isinstance(getattr(gate, "e_score_correction_bias", None), torch.Tensor):
            raise _Refusal(f"{where}: the gate has no e_score_correction_bias")
        opts.update(score_function="sigmoid", selection_bias=True,
                    n_group=int(_config_value("n_group", sources, where)),
                    topk_group=int(_config_value("topk_group", sources, where)),
                    routed_scaling_factor=float(_config_value("routed_scaling_factor", sources,
                                                              where)))
        if getattr(block, "shared_experts", None) is None:
            raise _Refusal(f"{where}: expected shared_experts")
        opts["shared_expert_hidden"] = _shared_hidden(block.shared_experts, where)
    return layout, d, E, h, opts


def _shared_hidden(mlp, where):
    ws = [_linear_weight(getattr(mlp, n, None), f"shared expert's {n}", where)
          for n in ("gate_proj", "up_proj", "down_proj")]
    return ws[0].shape[0]


def replace_hf_moe_blocks(model, groups=None, config=None, aux_loss_coef=0.0,
                          return_router_logits=None, **moe_options):
    """Swaps every Hugging Face sparse-MoE block of `model` (found by class name:
    MixtralSparseMoeBlock, Qwen2MoeSparseMoeBlock, Qwen3MoeSparseMoeBlock, OlmoeSparseMoeBlock,
    DeepseekV3MoE; then checked by structure) for an HFMoEBlock with its weights, device and dtype
    that computes the same function and has the same state-dict names and shapes. Returns the
    replaced module names.

    The router settings come from `config` (a dict or an object with HF's config names:
    num_experts_per_tok, norm_topk_prob, n_group, topk_group, routed_scaling_factor, ...), then
    model.config, then the block's own attributes. Refused by name (ValueError) rather than
    approximated: hidden_act other than silu, Mixtral's router_jitter_noise > 0, DeepSeek-V3's
    scoring_func other than sigmoid or topk_method other than noaux_tc, biases on the gate or the
    experts, a block whose structure is not its family's. aux_loss_coef (default 0: HF computes its
    load-balancing loss from the router logits) sets hybridmoe's own loss, collected by
    hybridmoe.aux_loss(model); return_router_logits (default: true for v4's per-expert blocks of
    Mixtral, Qwen2/3-MoE and OLMoE, which return (output, router_logits)) overrides what forward
    returns. groups: the layout (hybridmoe.MoE's groups=); each rank keeps its experts and hidden
    slice of the block's weights, and its tp slice of the shared expert's. Other keyword arguments are hybridmoe.MoE options
    (capacity_factor, z_loss_coef, bias_update_rate, ...); the family's own (top_k, ...) are
    refused.
    """
    fixed = sorted(set(moe_options) & set(_FAMILY_OPTIONS))
    if fixed:
        raise ValueError(f"replace_hf_moe_blocks: {', '.join(fixed)} follow from the block and its "
                         "config; they cannot be given")
    model_config = getattr(model, "config", None)
    found = [(n, m) for n, m in model.named_modules() if type(m).__name__ in BLOCK_CLASSES]
    if not found:
        raise ValueError(f"replace_hf_moe_blocks: {type(model).__name__} has no Hugging Face "
                         f"sparse-MoE block (one of {', '.join(BLOCK_CLASSES)})")
    replaced = []
    for name, block in found:
        family = BLOCK_CLASSES[type(block).__name__]
        try:
            layout, d, E, h, opts = _block_options(name, block, family, config, model_config)
        except _Refusal as e:
            raise ValueError(f"replace_hf_moe_blocks: {e}") from None
        returns_logits = return_router_logits
        if returns_logits is None:
            returns_logits = layout == "per-expert" and family != "deepseek_v3"
        opts.update(moe_options)
        opts["aux_loss_coef"] = aux_loss_coef
        if groups is not None:
            opts["groups"] = groups
        weight = block.gate.weight
        new = HFMoEBlock(family, layout, d, E, h, returns_logits, **opts)
        new.to(device=weight.device, dtype=weight.dtype)
        new.train(block.training)
        new.load_state_dict(block.state_dict())  # through the HF names: this rank's share
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, new)
        replaced.append(name)
    return replaced
