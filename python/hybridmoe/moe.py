"""hybridmoe.MoE: the C++ MoE layer as a torch.nn.Module whose weights are Python nn.Parameters.

The module owns its weights (parameters and buffers, by the C++ layer's names: gate.weight,
experts.w1, ...); each forward hands them to the C++ layer's functional entry point
(moe_forward, include/hybridmoe/moe_functional.h), which binds these very tensors as the weights
of a single-process C++ MoE built from the same options and runs that layer's own forward. So
autograd accumulates into the nn.Parameters, and .to(dtype), state_dict()/load_state_dict(),
optimizers and requires_grad_ behave as on any module.
"""
import torch

from . import _C


class _Holder(torch.nn.Module):
    """A plain container, so that the C++ names with a dot (gate.weight) are the state_dict's."""


class MoE(torch.nn.Module):
    """A Mixture-of-Experts layer, on one process or distributed over a layout's groups.

    MoE(d_model, num_experts, top_k=2, d_hidden=0, activation="swiglu", gate="topk",
        capacity_factor=0.0, shared_expert_hidden=0, bias=True, normalize_top_k_weights=None,
        aux_loss_coef=None, z_loss_coef=None, groups=None, **options)

    Every option is the C++ layer's (MoEOptions, GateOptions) by the same name; None keeps the
    C++ default (d_hidden 0 means 4 * d_model). Weights are initialized by the C++ layer's own
    init (seeded by torch.manual_seed). forward(x), x [tokens, d_model] or [batch, seq, d_model],
    returns (output of x's shape, aux_loss [], stats dict: tokens_per_expert, dropped, capacity,
    router_entropy, loss_terms, choices). Errors of the C++ layer raise hybridmoe.Error.

    groups (a hybridmoe.ParallelGroups): the layer is distributed like the C++ layer: its expert
    parameters are this rank's shard (experts.w1 [E / ep, d, h / etp], ...; `local_experts`,
    `hidden_range` say which), tokens travel to their experts' ranks by an all-to-all over the
    ep group, and the gate is replicated over the stage. Every rank of the stage calls forward
    together. With tp > 1 the input is the same on the tp ranks, each routes its 1/tp slice of
    the tokens, and output and aux_loss are the whole layer's on every tp rank. The weights
    start as this rank's shard of the one-process layer with the same seed, so a seed gives the
    same model under every layout. Gradients: sum each parameter's over its group
    (`gradient_groups()`; hybridmoe.GroupedDataParallel does it).

    Example:
        groups = hybridmoe.ParallelGroups.from_torch(ep=2)      # after init_process_group
        moe = hybridmoe.MoE(512, 8, top_k=2, groups=groups)
        y, aux, stats = moe(x)                                  # x: [tokens, 512], this rank's
    """

    def __init__(self, d_model, num_experts, top_k=2, d_hidden=0, activation="swiglu",
                 gate="topk", capacity_factor=0.0, shared_expert_hidden=0, bias=True,
                 normalize_top_k_weights=None, aux_loss_coef=None, z_loss_coef=None, groups=None,
                 **options):
        super().__init__()
        self.options = dict(d_model=d_model, num_experts=num_experts, top_k=top_k,
                            d_hidden=d_hidden, activation=activation, gate=gate,
                            capacity_factor=capacity_factor,
                            shared_expert_hidden=shared_expert_hidden, bias=bias,
                            normalize_top_k_weights=normalize_top_k_weights,
                            aux_loss_coef=aux_loss_coef, z_loss_coef=z_loss_coef, **options)
        self.groups = groups
        # One process: route the tokens of each call in this many even consecutive groups
        # (capacity and balance loss per group, aux_loss their mean) — what a layout with tp
        # ranks slicing a replicated input computes; hybridmoe.verify sets it.
        self.route_groups = 1
        self._layer = _C._MoELayer(self.options, None if groups is None else groups._cpp)
        params, buffers = self._layer.initial_tensors()
        for name, t in params.items():
            owner, leaf = self._owner(name)
            # Shares the C++ init tensor's storage; the C++ layer is rebound to the Parameter
            # below, so the weights exist once.
            owner.register_parameter(leaf, torch.nn.Parameter(t.detach()))
        for name, t in buffers.items():
            owner, leaf = self._owner(name)
            owner.register_buffer(leaf, t.detach())
        self._layer.bind(self._tensors())

    def __getstate__(self):
        # copy.deepcopy / pickle: the C++ layer is rebuilt from the options (and groups) and
        # bound to the copied tensors.
        state = self.__dict__.copy()
        state.pop("_layer", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        with torch.random.fork_rng(devices=[]):  # its init's draws are not the program's
            self._layer = _C._MoELayer(self.options,
                                       None if self.groups is None else self.groups._cpp)
        self._layer.bind(self._tensors())

    def _owner(self, name):
        *path, leaf = name.split(".")
        owner = self
        for part in path:
            if not hasattr(owner, part):
                owner.add_module(part, _Holder())
            owner = getattr(owner, part)
        return owner, leaf

    def _tensors(self):
        tensors = dict(self.named_parameters())
        tensors.update(self.named_buffers())
        return tensors

    def forward_with(self, tensors, x):
        """The layer's forward with the given parameters and buffers (by name) instead of the
        module's own: (output, aux_loss, stats). For functional use (e.g. gradcheck)."""
        out, aux, stats = self._layer.forward(tensors, x, self.training, self.route_groups)
        if self.groups is not None and self.groups.config.tp > 1:
            # This rank's share summed over the slice group: the layer's whole auxiliary loss,
            # the same on every tp rank (backward: the identity, each share's own gradient).
            aux = _C.all_reduce_sum(aux, self.groups.group("slice"))
        return out, aux, stats

    def forward(self, x):
        return self.forward_with(self._tensors(), x)

    def after_step(self):
        """The gate's after-step update (the loss-free balancing bias), on this module's
        buffers; call it after each optimizer step when bias_update_rate > 0."""
        self._layer.after_step(self._tensors())

    @property
    def local_experts(self):
        """The global ids of the experts this module holds, in local order (all in one process)."""
        return list(self._layer.local_experts)

    @property
    def hidden_range(self):
        """(start, length): the slice of every expert's hidden width this module holds."""
        return tuple(self._layer.hidden_range)

    @property
    def shared_hidden_range(self):
        """(start, length): the slice of the shared expert's hidden width this module holds (its
        tp slice; all of it in one process or with tp = 1; (0, 0) without a shared expert)."""
        return tuple(self._layer.shared_hidden_range)

    def gradient_groups(self):
        """{parameter name: group kind ("stage", "edp", "dp", ...) or None}: over which group of
        the layout each parameter's gradient is summed (None: not synchronized)."""
        return dict(self._layer.gradient_groups())

    def full_state_dict(self):
        """The one-process layer's parameters and buffers (by name, full shapes), gathered from
        every rank's shard: a collective over the stage's ep, etp and tp groups. In one process:
        copies of the module's own."""
        return dict(self._layer.full_tensors(self._tensors()))

    def load_full_state_dict(self, state):
        """Loads this rank's shard from the one-process layer's parameters and buffers (by
        name, full shapes, every one of them; e.g. another process's full_state_dict()). Local:
        no communication. An unknown, missing or misshapen tensor raises hybridmoe.Error naming
        it."""
        self._layer.load_full(self._tensors(), dict(state))

    def extra_repr(self):
        shown = ("d_model", "num_experts", "top_k", "d_hidden", "activation", "gate",
                 "capacity_factor")
        text = ", ".join(f"{k}={self.options[k]!r}" for k in shown)
        if self.groups is not None:
            text += f", layout={self.groups.config}"
        return text
