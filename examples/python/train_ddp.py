"""Train a small PyTorch transformer whose MLPs are hybridmoe.MoE layers, under expert parallelism.

    PYTHONPATH=build/python /usr/bin/python3 -m torch.distributed.run --standalone \
        --nproc_per_node 4 examples/python/train_ddp.py --steps 20 --ep 2

Every rank trains on its own part of each batch (data parallel over the dense part, with torch
DDP), while each MoE layer's experts are split over `--ep` ranks (tokens travel to their experts
by an all-to-all). hybridmoe.exclude_experts_from_ddp keeps DDP away from the MoE layers, whose
gradients GroupedDataParallel sums over their own groups (experts over the ranks holding the
same experts, gates over all). With --check, rank 0 also trains the same model in one process
on the whole batch and prints both losses per step; the run fails if they differ by more than
the tolerance of the dtype (float64: 1e-9 relative).
"""
import argparse
import sys

import torch
import torch.distributed as dist

import hybridmoe


class Block(torch.nn.Module):
    def __init__(self, d, heads, experts, top_k, groups):
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(d)
        self.attn = torch.nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = torch.nn.LayerNorm(d)
        self.moe = hybridmoe.MoE(d, experts, top_k=top_k, d_hidden=2 * d, groups=groups,
                                 aux_loss_coef=0.01)

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        y, aux, stats = self.moe(self.ln2(x))
        return x + y, aux


class MoELM(torch.nn.Module):
    """Token embedding, `layers` pre-norm blocks (attention + MoE), a linear head."""

    def __init__(self, vocab, d, heads, layers, experts, top_k, groups=None):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.blocks = torch.nn.ModuleList(
            [Block(d, heads, experts, top_k, groups) for _ in range(layers)])
        self.norm = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, vocab)

    def forward(self, tokens, targets):
        s = tokens.shape[1]
        mask = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)
        x = self.embed(tokens)
        aux = 0.0
        for block in self.blocks:
            x, a = block(x, mask)
            aux = aux + a
        logits = self.head(self.norm(x))
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()) + aux


def batch(step, sequences, seq, vocab):
    """A learnable stream: each sequence counts up by a stride of its own, modulo vocab."""
    g = torch.Generator().manual_seed(step)
    start = torch.randint(0, vocab, (sequences, 1), generator=g)
    stride = torch.randint(1, 4, (sequences, 1), generator=g)
    tokens = (start + stride * torch.arange(seq + 1)) % vocab
    return tokens[:, :-1], tokens[:, 1:]


def build(args, groups):
    torch.manual_seed(args.seed)  # the same weights under every layout (and in one process)
    return MoELM(args.vocab, args.d_model, args.heads, args.layers, args.experts, args.top_k,
                 groups).to(getattr(torch, args.dtype))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--ep", type=int, default=2, help="expert-parallel ranks")
    p.add_argument("--batch", type=int, default=8, help="sequences per rank and step")
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--check", action="store_true",
                   help="rank 0 also trains in one process and compares the losses")
    args = p.parse_args()

    dist.init_process_group("gloo")  # torchrun's environment: RANK, WORLD_SIZE, MASTER_*
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()

    # 1. The layout: ep ranks share each MoE layer's experts; everything else is data parallel.
    groups = hybridmoe.ParallelGroups.from_torch(ep=args.ep)
    model = build(args, groups)
    hybridmoe.exclude_experts_from_ddp(model)
    moe_sync = hybridmoe.GroupedDataParallel(model, groups, sync_dense=False)
    ddp = torch.nn.parallel.DistributedDataParallel(model, process_group=groups.torch_group("dp"))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)

    # 2. The one-process reference (rank 0, --check): the whole batch as `world` parts.
    if args.check and rank == 0:
        ref = build(args, None)
        ref_opt = torch.optim.SGD(ref.parameters(), lr=args.lr)
    tol = 1e-9 if args.dtype == "float64" else 1e-4
    worst = 0.0

    if rank == 0:
        print(f"hybridmoe {hybridmoe.__version__}: {world} ranks, layout {groups.config}, "
              f"{args.dtype}", flush=True)
    for step in range(args.steps):
        tokens, targets = batch(step, args.batch * world, args.seq, args.vocab)
        mine = groups.coords()["dp"]
        opt.zero_grad()
        loss = ddp(tokens.chunk(world)[mine], targets.chunk(world)[mine])
        loss.backward()
        moe_sync.reduce_gradients()  # MoE gradients over their groups, averaged like DDP's
        opt.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        mean = mean.item() / world
        line = f"step {step:3d}  loss {mean:.10f}"
        if args.check and rank == 0:
            ref_opt.zero_grad()
            ref_loss = 0.0
            for t, y in zip(tokens.chunk(world), targets.chunk(world)):
                part = ref(t, y)
                (part / world).backward()
                ref_loss += part.item() / world
            ref_opt.step()
            err = abs(mean - ref_loss) / max(abs(ref_loss), 1e-30)
            worst = max(worst, err)
            line += f"  one process {ref_loss:.10f}  rel. diff {err:.1e}"
        if rank == 0:
            print(line, flush=True)
    if args.check and rank == 0:
        print(f"largest relative difference from one process: {worst:.1e} (tolerance {tol:g})")
    failed = torch.tensor([1.0 if worst > tol else 0.0])
    dist.all_reduce(failed)
    dist.destroy_process_group()
    sys.exit(1 if failed.item() else 0)


if __name__ == "__main__":
    main()
