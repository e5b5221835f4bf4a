"""Layouts from torch.distributed groups, on 4 CPU processes (Gloo): ParallelGroups.from_torch and
from_groups place every rank as the layout's rank order says; a small PyTorch transformer with
hybridmoe.MoE layers trained 5 steps under ep = 2 on 4 processes — with GroupedDataParallel,
with torch DDP for the dense part and exclude_experts_from_ddp, and with groups the program made
itself with dist.new_group — equals one process (the loss of every rank at every step, every
parameter after, float64, 1e-9); hybridmoe.verify passes on the layouts 4 ranks allow and names
a model that differs. One spawn of 4 processes runs every scenario (rank_main); the tests read
its results.
"""
import pytest
import torch
import torch.distributed as dist

import hybridmoe
from multiproc import run_ranks

WORLD = 4
STEPS = 5
TOL = dict(rtol=1e-9, atol=1e-12)


# ---- the model: a PyTorch transformer whose MLPs are hybridmoe.MoE layers ----------------------
class Block(torch.nn.Module):
    def __init__(self, d, heads, experts, groups, top_k=2, **moe_options):
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(d)
        self.attn = torch.nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = torch.nn.LayerNorm(d)
        self.moe = hybridmoe.MoE(d, experts, top_k=top_k, d_hidden=2 * d, groups=groups,
                                 aux_loss_coef=0.01, **moe_options)

    def forward(self, x):
        s = x.shape[1]
        mask = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        y, aux, _ = self.moe(self.ln2(x))
        return x + y, aux


class TinyLM(torch.nn.Module):
    def __init__(self, groups=None, vocab=32, d=16, heads=2, experts=4, layers=2, top_k=2,
                 **moe_options):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.blocks = torch.nn.ModuleList(
            [Block(d, heads, experts, groups, top_k, **moe_options) for _ in range(layers)])
        self.norm = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, vocab)

    def forward(self, tokens, targets):
        x = self.embed(tokens)
        aux_total = 0.0
        for block in self.blocks:
            x, aux = block(x)
            aux_total = aux_total + aux
        logits = self.head(self.norm(x))
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return ce + aux_total


def build(groups, **kw):
    torch.manual_seed(1234)
    return TinyLM(groups, **kw).double()


def batch(step, sequences=4 * WORLD, seq=8, vocab=32):
    g = torch.Generator().manual_seed(100 + step)
    tokens = torch.randint(0, vocab, (sequences, seq + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def part(step, index, parts):
    tokens, targets = batch(step)
    return tokens.chunk(parts)[index], targets.chunk(parts)[index]


def one_process(parts):
    """The reference: one process, the global batch as `parts` parts (gradient accumulation)."""
    model = build(None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for step in range(STEPS):
        opt.zero_grad()
        row = []
        for i in range(parts):
            loss = model(*part(step, i, parts))
            (loss / parts).backward()
            row.append(loss.item())
        opt.step()
        losses.append(row)
    return losses, {k: v.detach() for k, v in full_state(model).items()}


def full_state(model):
    moes = {p: m for p, m in model.named_modules() if isinstance(m, hybridmoe.MoE)}
    out = {n: p.detach().clone() for n, p in model.named_parameters()
           if not any(n.startswith(m + ".") for m in moes)}
    for prefix, moe in moes.items():
        out.update({f"{prefix}.{n}": t for n, t in moe.full_state_dict().items()})
    return out


# ---- what each rank runs ------------------------------------------------------------------------
def train(groups, mode):
    """Trains the distributed model STEPS steps; (this rank's losses, full parameters after)."""
    model = build(groups)
    dp_index, dp = groups.coords()["dp"], groups.config.dp
    if mode == "gdp":
        wrapped = hybridmoe.GroupedDataParallel(model, groups)
        sync = wrapped.reduce_gradients
    else:  # torch DDP for the dense part
        hybridmoe.exclude_experts_from_ddp(model)
        moe_sync = hybridmoe.GroupedDataParallel(model, groups, sync_dense=False)
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, process_group=groups.torch_group("dp"))
        sync = moe_sync.reduce_gradients
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for step in range(STEPS):
        opt.zero_grad()
        loss = wrapped(*part(step, dp_index, dp))
        loss.backward()
        sync()
        opt.step()
        losses.append(loss.item())
    return losses, full_state(model)


def rank_main(rank, world):
    out = {}
    # 1. Group placement, from_torch and from_groups.
    placements = {}
    for layout in (dict(ep=2), dict(ep=4), dict(tp=2, ep=2, etp=2), dict(tp=2, ep=2),
                   dict(pp=2, ep=2)):
        g = hybridmoe.ParallelGroups.from_torch(**layout)
        placements[str(g.config)] = {k: list(g.group(k).ranks)
                                     for k in hybridmoe.parallel.GROUP_KINDS}
    out["placements"] = placements
    # The program's own groups: ep groups {0,1} and {2,3}, edp groups {0,2} and {1,3}.
    ep_groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    edp_groups = [dist.new_group([0, 2]), dist.new_group([1, 3])]
    user = hybridmoe.ParallelGroups.from_groups(ep=ep_groups[rank // 2], edp=edp_groups[rank % 2])
    out["user_config"] = str(user.config)
    try:
        hybridmoe.ParallelGroups.from_groups(ep=edp_groups[rank % 2])  # {0,2}: not a layout's ep
        out["wrong_groups_error"] = ""
    except hybridmoe.Error as e:
        out["wrong_groups_error"] = str(e)

    # 2. A seed gives the same MoE weights under every layout.
    ep2 = hybridmoe.ParallelGroups.from_torch(ep=2)
    out["init_ep2"] = full_state(build(ep2))
    out["init_one"] = full_state(build(None))
    # Biases under etp = 2 (b2 lives on etp rank 0): full_state_dict on every rank.
    tp2 = hybridmoe.ParallelGroups.from_torch(tp=2, ep=2, etp=2)
    for name, g in (("etp2", tp2), ("one", None)):
        torch.manual_seed(7)
        moe = hybridmoe.MoE(8, 4, d_hidden=6, activation="gelu", bias=True, groups=g).double()
        out[f"bias_{name}"] = moe.full_state_dict()

    # 3. Training under ep = 2 on 4 ranks.
    out["gdp"] = train(ep2, "gdp")
    out["ddp"] = train(ep2, "ddp")
    out["user_groups"] = train(user, "gdp")

    # 4. verify on the layouts the model allows, and on a model that differs when distributed.
    out["verify"] = hybridmoe.verify(lambda g: build(g), lambda s: batch(s),
                                     layouts=["ep1", "ep2", "ep4", "tp2.ep2.etp2", "tp2.ep4",
                                              "tp4.ep2"],
                                     steps=2)
    # Tutel's adaptive layout (each rank one expert, r = 0 and 1), hot-expert replication (its
    # rows where routed, and spread, also with etp = 2) and the chunked all-to-all overlap.
    out["verify_options"] = {
        "adaptive r=0": hybridmoe.verify(
            lambda g: build(g, expert_layout="adaptive", adaptive_r=0), lambda s: batch(s),
            layouts=["ep1", "tp2"], steps=2),
        "adaptive r=1": hybridmoe.verify(
            lambda g: build(g, expert_layout="adaptive", adaptive_r=1), lambda s: batch(s),
            layouts=["ep1"], steps=2),
        "replicate 1": hybridmoe.verify(
            lambda g: build(g, **({} if g is None else dict(replicate=1))),
            lambda s: batch(s), layouts=["ep2", "ep4"], steps=2),
        "replicate auto": hybridmoe.verify(
            lambda g: build(g, **({} if g is None else dict(replicate="auto"))),
            lambda s: batch(s), layouts=["ep4"], steps=2),
        "replicate 1 spread etp2": hybridmoe.verify(
            lambda g: build(g, **({} if g is None else
                                  dict(replicate=1, replicate_placement="spread"))),
            lambda s: batch(s), layouts=["ep4", "tp2.ep2.etp2"], steps=2),
        "overlap 2": hybridmoe.verify(
            lambda g: build(g, **({} if g is None else dict(a2a_overlap_degree=2))),
            lambda s: batch(s),
            layouts=["ep2", "ep4"], steps=2),
    }
    try:
        hybridmoe.verify(lambda g: build(g, top_k=2 if g is None else 1), lambda s: batch(s),
                         layouts=["ep2"], steps=2)
        out["verify_broken"] = ""
    except hybridmoe.VerifyError as e:
        out["verify_broken"] = str(e)

    return out


@pytest.fixture(scope="module")
def ranks():
    return run_ranks(rank_main, WORLD)


# ---- the tests ----------------------------------------------------------------------------------
def expected_group(config, kind, rank):
    """The members of rank's group of `kind`, from the rank order (written out independently of
    the C++ layout code): rank = pp*(dp*tp) + dp_i*tp + tp_i; in a stage, local =
    edp_i*(ep*etp) + ep_i*etp + etp_i."""
    tp, dp, pp, ep, etp = (config[k] for k in ("tp", "dp", "pp", "ep", "etp"))
    stage = tp * dp

    def dense(r):
        return dict(pp=r // stage, dp=(r % stage) // tp, tp=r % tp)

    def expert(r):
        local = r % stage
        return dict(pp=r // stage, edp=local // (ep * etp), ep=(local // etp) % ep, etp=local % etp)

    varying = dict(world=(), stage=("dp", "tp"), tp=("tp",), dp=("dp",), pp=("pp",),
                   slice=("tp",), ep=("ep",), etp=("etp",), edp=("edp",))[kind]
    coords = dense if kind in ("world", "stage", "tp", "dp", "pp", "slice") else expert
    me = coords(rank)
    if kind == "world":
        return list(range(tp * dp * pp))
    keys = [k for k in me if k not in varying]
    return [r for r in range(tp * dp * pp) if all(coords(r)[k] == me[k] for k in keys)]


@pytest.mark.parametrize("layout", ["tp1.dp4.pp1.ep2.etp1", "tp1.dp4.pp1.ep4.etp1",
                                    "tp2.dp2.pp1.ep2.etp2", "tp2.dp2.pp1.ep2.etp1",
                                    "tp1.dp2.pp2.ep2.etp1"])
def test_from_torch_places_every_rank_by_the_rank_order(ranks, layout):
    config = {k: int(v) for k, v in (
        (p.rstrip("0123456789"), p[len(p.rstrip("0123456789")):]) for p in layout.split("."))}
    for rank, out in enumerate(ranks):
        got = out["placements"][layout]
        for kind, members in got.items():
            assert members == expected_group(config, kind, rank), (layout, kind, rank)


def test_from_groups_takes_the_programs_groups_and_checks_them(ranks):
    assert [out["user_config"] for out in ranks] == ["tp1.dp4.pp1.ep2.etp1"] * WORLD
    for rank, out in enumerate(ranks):
        msg = out["wrong_groups_error"]
        assert "group ep lists ranks" in msg and "tp1.dp4.pp1.ep2.etp1" in msg, msg


def test_a_seed_gives_the_same_weights_under_every_layout(ranks):
    for out in ranks:
        assert out["init_ep2"].keys() == out["init_one"].keys()
        for name, t in out["init_one"].items():
            assert torch.equal(out["init_ep2"][name], t), name


def test_full_state_dict_gathers_every_tensor_on_every_rank(ranks):
    for rank, out in enumerate(ranks):
        assert out["bias_etp2"].keys() == out["bias_one"].keys(), rank
        assert "experts.b2" in out["bias_etp2"]
        for name, t in out["bias_one"].items():
            assert torch.equal(out["bias_etp2"][name], t), (rank, name)


@pytest.mark.parametrize("mode", ["gdp", "ddp", "user_groups"])
def test_training_under_ep2_on_4_processes_equals_one_process(ranks, mode):
    ref_losses, ref_params = one_process(4)
    for rank, out in enumerate(ranks):
        losses, params = out[mode]
        dp_index = rank  # tp = 1: the dp index is the rank
        for step in range(STEPS):
            torch.testing.assert_close(torch.tensor(losses[step]),
                                       torch.tensor(ref_losses[step][dp_index]), **TOL)
        assert params.keys() == ref_params.keys()
        for name, t in params.items():
            torch.testing.assert_close(t, ref_params[name], **TOL, msg=f"{mode} rank {rank} {name}")
    # The losses moved: the steps trained something.
    assert ref_losses[0] != ref_losses[-1]


def test_verify_passes_on_every_layout_and_names_a_model_that_differs(ranks):
    for out in ranks:
        layouts = [r["layout"] for r in out["verify"]]
        assert layouts == ["tp1.dp4.pp1.ep1.etp1", "tp1.dp4.pp1.ep2.etp1",
                           "tp1.dp4.pp1.ep4.etp1", "tp2.dp2.pp1.ep2.etp2",
                           "tp2.dp2.pp1.ep4.etp1", "tp4.dp1.pp1.ep2.etp1"]
        assert all(r["passed"] for r in out["verify"]), out["verify"]
        for name, results in out["verify_options"].items():
            assert results and all(r["passed"] for r in results), (name, results)
        msg = out["verify_broken"]
        assert "layout tp1.dp4.pp1.ep2.etp1 does not equal one process" in msg, msg
