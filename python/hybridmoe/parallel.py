"""Layouts from the user's own torch.distributed world, and keeping replicas in sync.

ParallelGroups              one rank's groups of a layout (tp, dp, pp, ep, etp; edp, stage,
                            slice follow), made of torch.distributed groups: from_torch builds them
                            over the default world, from_groups takes groups the program has
GroupedDataParallel         FastMoE's DistributedGroupedDataParallel: broadcast at start, then each
                            gradient summed over its own group (gate: stage, experts: edp, the
                            rest: dp), coalesced
exclude_experts_from_ddp    for programs that keep torch DDP for the dense part: DDP ignores the MoE
                            layers' parameters and buffers (GroupedDataParallel(sync_dense=False)
                            keeps those in sync)
"""
import torch
import torch.distributed as dist

from . import _C
from .moe import MoE

# Every kind of group a rank has in a layout, in the order the C++ core builds them.
GROUP_KINDS = tuple(_C._group_kinds())


def _timeout_kw(timeout_s):
    return {} if timeout_s is None else {"timeout_s": timeout_s}


def _new_group(ranks, world):
    """(torch group carrying CPU tensors, its CUDA twin or None) for these members, made on every
    rank (dist.new_group is collective). A world whose backend is NCCL alone gets a Gloo group for
    hybridmoe's CPU exchanges (counts, control) beside the NCCL one; any other backend (gloo, or
    torch 2's "cpu:gloo,cuda:nccl") carries both."""
    backend = str(dist.get_backend()).lower()
    whole = len(ranks) == world
    if "nccl" in backend and "gloo" not in backend:
        cuda = dist.group.WORLD if whole else dist.new_group(ranks)
        return dist.new_group(ranks, backend="gloo"), cuda
    return (dist.group.WORLD if whole else dist.new_group(ranks)), None


class ParallelGroups:
    """One rank's process groups of a layout, for hybridmoe.MoE(groups=...) and
    GroupedDataParallel.

    Made by ParallelGroups.from_torch(...) or ParallelGroups.from_groups(...) (collective: every
    rank of the world calls it the same way). `config` is the layout (a hybridmoe.ParallelConfig);
    `group(kind)` a hybridmoe.Group and `torch_group(kind)` the torch.distributed group of kind
    "world", "stage", "tp", "dp", "pp", "etp", "ep", "edp" or "slice" (None where the group has one
    rank and no torch group was made for it); `coords()` this rank's index in each.

    Rank order (Megatron's): world = pp * dp * tp with tp fastest; within a stage the ranks are
    read again as edp * ep * etp with etp fastest.
    """

    def __init__(self, cpp, torch_groups):
        self._cpp = cpp
        self._torch_groups = dict(torch_groups)

    @classmethod
    def from_torch(cls, tp=1, ep=1, etp=1, pp=1, dp=None, timeout_s=None):
        """The groups of layout (tp, dp, pp, ep, etp) over the default torch.distributed world
        (dp defaults to world_size / (tp * pp)). Creates one torch group per distinct member list
        of size > 1 (dist.new_group, in the same order on every rank; with a NCCL-only world, a
        Gloo twin of each for hybridmoe's CPU exchanges). timeout_s: hybridmoe's timeout of each
        collective (None: HMOE_TIMEOUT_S or 300 s)."""
        if not dist.is_initialized():
            raise _C.Error("ParallelGroups.from_torch: torch.distributed is not initialized "
                           "(call torch.distributed.init_process_group first)")
        world = dist.get_world_size()
        if dp is None:
            if tp <= 0 or pp <= 0 or world % (tp * pp) != 0:
                raise _C.Error(f"ParallelGroups.from_torch: the world's {world} ranks are not a "
                               f"multiple of tp * pp = {tp} * {pp}")
            dp = world // (tp * pp)
        config = _C.ParallelConfig(tp=tp, dp=dp, pp=pp, ep=ep, etp=etp)
        config.validate(world)
        me = dist.get_rank()
        # Every rank creates every group, in the same order (dist.new_group is collective), and
        # keeps those that hold it.
        made = {}  # member tuple -> (torch group, its CUDA twin or None)
        given, torch_groups = {}, {}
        for kind in GROUP_KINDS:
            for ranks in _C._all_group_ranks(config, kind):
                key = tuple(ranks)
                if len(key) == 1 and kind != "world":
                    continue  # a group of one: assemble makes it
                if key not in made:
                    made[key] = _new_group(list(key), world)
                if me in key:
                    pg, cuda_pg = made[key]
                    torch_groups[kind] = cuda_pg if cuda_pg is not None else pg
                    given[kind] = _C.Group(pg, list(key), name=kind, cuda_process_group=cuda_pg,
                                           **_timeout_kw(timeout_s))
        return cls(_C._ParallelGroups.assemble(config, given), torch_groups)

    @classmethod
    def from_groups(cls, *, tp=None, dp=None, pp=None, ep=None, etp=None, edp=None, stage=None,
                    slice=None, world=None, timeout_s=None):
        """The layout of torch.distributed groups the program already has (FastMoE's "assign
        communication groups", for Megatron-style code). The sizes come from the groups given
        (tp, pp, ep, etp default to 1; dp to world_size / (tp * pp)); every group given must hold
        exactly the ranks the layout puts with this rank (an error names the difference), and
        a kind not given is made of a given group with the same members or is a group of one
        (else an error names it). world: the default world if None."""
        if not dist.is_initialized():
            raise _C.Error("ParallelGroups.from_groups: torch.distributed is not initialized")
        pgs = dict(world=world if world is not None else dist.group.WORLD, tp=tp, dp=dp, pp=pp,
                   ep=ep, etp=etp, edp=edp, stage=stage, slice=slice)
        pgs = {k: v for k, v in pgs.items() if v is not None}
        sizes = {k: dist.get_world_size(pg) for k, pg in pgs.items()}
        n = sizes["world"]
        t, p = sizes.get("tp", 1), sizes.get("pp", 1)
        d = sizes.get("dp", n // (t * p) if n % (t * p) == 0 else 0)
        config = _C.ParallelConfig(tp=t, dp=d, pp=p, ep=sizes.get("ep", 1),
                                   etp=sizes.get("etp", 1))
        config.validate(n)
        given = {k: _C.Group.from_torch(pg, name=k, **_timeout_kw(timeout_s))
                 for k, pg in pgs.items()}
        return cls(_C._ParallelGroups.assemble(config, given), pgs)

    def __deepcopy__(self, memo):
        return self  # groups are shared, never copied (a deep copy of a model keeps its layout)

    @property
    def config(self):
        return self._cpp.config

    @property
    def world_rank(self):
        return self._cpp.world_rank

    def coords(self):
        """This rank's index in each dimension: {"pp", "dp", "tp", "edp", "ep", "etp"}."""
        return dict(self._cpp.coords())

    def group(self, kind):
        """The hybridmoe.Group of `kind` that holds this rank."""
        return self._cpp.get(kind)

    def torch_group(self, kind):
        """The torch.distributed group of `kind` (for torch DDP: torch_group("dp")); None where
        the group has one rank and none was made."""
        if kind not in GROUP_KINDS:
            raise _C.Error(f"unknown group kind {kind!r}; expected one of {', '.join(GROUP_KINDS)}")
        found = self._torch_groups.get(kind)
        if found is None:
            members = self.group(kind).ranks
            for k, pg in self._torch_groups.items():
                if self.group(k).ranks == members:
                    return pg
        return found

    def __getattr__(self, name):
        if name in GROUP_KINDS:
            return self.group(name)
        raise AttributeError(name)

    def __repr__(self):
        return f"hybridmoe.ParallelGroups({self.config}, world_rank={self.world_rank})"


def _moe_tags(model):
    """{parameter name in model: group kind or None} for the parameters of model's MoE layers."""
    tags = {}
    for prefix, sub in model.named_modules():
        if isinstance(sub, MoE):
            for name, kind in sub.gradient_groups().items():
                tags[f"{prefix}.{name}" if prefix else name] = kind
    return tags


class GroupedDataParallel(torch.nn.Module):
    """Keeps the replicas of a model's parameters in sync, each over its own group.

    GroupedDataParallel(module, groups, broadcast=True, bucket_bytes=25 MiB, sync_dense=True)

    Tags: a parameter of a hybridmoe.MoE layer gets the group the layer declares (the gate: the
    stage, the experts: edp; MoE.gradient_groups()), every other parameter dp. At construction
    every tagged parameter is broadcast from rank 0 of its group; `reduce_gradients(scale)`
    after backward sums each gradient over its group in coalesced buckets and multiplies the
    gradients it is responsible for by `scale` (default 1 / dp: each rank's loss is the mean
    over its own batch, as with torch DDP). A tagged parameter without a gradient on this rank
    contributes zeros, so all ranks issue the same collectives. sync_dense=False keeps only the
    MoE layers' parameters and leaves the rest alone (torch DDP keeps them; see
    exclude_experts_from_ddp). forward calls the module.

    Example:
        model = hybridmoe.GroupedDataParallel(model, groups)
        loss = model(batch); loss.backward()
        model.reduce_gradients()
        optimizer.step()
    """

    def __init__(self, module, groups, broadcast=True, bucket_bytes=25 << 20, sync_dense=True):
        super().__init__()
        if not isinstance(groups, ParallelGroups):
            raise _C.Error(f"GroupedDataParallel: groups should be a hybridmoe.ParallelGroups, "
                           f"got {type(groups).__name__}")
        self.module = module
        self.groups = groups
        self.bucket_bytes = int(bucket_bytes)
        self.sync_dense = sync_dense
        self.tags = {name: "dp" for name, _ in module.named_parameters()}
        moe_tags = _moe_tags(module)
        self.tags.update(moe_tags)
        self._moe_names = set(moe_tags)
        if broadcast:
            self.broadcast_parameters()

    def set_tag(self, name, kind):
        """Overrides a parameter's group (a kind name, or None: not synchronized)."""
        if name not in self.tags:
            raise _C.Error(f"GroupedDataParallel: no parameter named {name!r}")
        if kind is not None and kind not in GROUP_KINDS:
            raise _C.Error(f"GroupedDataParallel: unknown group kind {kind!r}; expected one of "
                           f"{', '.join(GROUP_KINDS)} or None")
        self.tags[name] = kind

    def _mine(self, name):
        return self.sync_dense or name in self._moe_names

    def _by_group(self, grads):
        lists = {}
        for name, p in self.module.named_parameters():
            kind = self.tags.get(name)
            if kind is None or not self._mine(name):
                continue
            if grads:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                lists.setdefault(kind, []).append(p.grad)
            else:
                lists.setdefault(kind, []).append(p.detach())
        # The fixed kind order, so that every rank issues the same collectives.
        return [(k, lists[k]) for k in GROUP_KINDS if k in lists]

    @torch.no_grad()
    def broadcast_parameters(self):
        """Makes each tagged parameter equal to its value on rank 0 of its group."""
        for kind, tensors in self._by_group(grads=False):
            group = self.groups.group(kind)
            if group.size > 1:
                _C._broadcast_coalesced_(tensors, 0, group, self.bucket_bytes)

    @torch.no_grad()
    def reduce_gradients(self, scale=None):
        """Sums each gradient over its group, then multiplies the gradients this wrapper is
        responsible for by scale (None: 1 / dp)."""
        for kind, tensors in self._by_group(grads=True):
            group = self.groups.group(kind)
            if group.size > 1:
                _C._all_reduce_coalesced_(tensors, group, self.bucket_bytes)
        if scale is None:
            scale = 1.0 / self.groups.group("dp").size
        if scale != 1.0:
            for name, p in self.module.named_parameters():
                if p.grad is not None and self._mine(name):
                    p.grad.mul_(scale)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def exclude_experts_from_ddp(model):
    """Makes torch DDP (built afterwards on `model`) ignore the parameters and buffers of every
    hybridmoe.MoE layer in the model: their gradients are summed over other groups than dp
    (experts: edp), and an expert that received no tokens has no gradient, which would trip
    DDP's unused-parameter check. Keep them in sync with GroupedDataParallel(model, groups,
    sync_dense=False). Returns the names ignored.

    Example:
        hybridmoe.exclude_experts_from_ddp(model)
        moe_sync = hybridmoe.GroupedDataParallel(model, groups, sync_dense=False)
        ddp = torch.nn.parallel.DistributedDataParallel(model,
                                                        process_group=groups.torch_group("dp"))
        loss = ddp(batch); loss.backward(); moe_sync.reduce_gradients(); optimizer.step()
    """
    names = []
    for prefix, sub in model.named_modules():
        if isinstance(sub, MoE):
            for name, _ in list(sub.named_parameters()) + list(sub.named_buffers()):
                names.append(f"{prefix}.{name}" if prefix else name)
    previous = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, previous + [n for n in names if n not in previous])
    return names
