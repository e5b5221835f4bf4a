"""multiproc.py — runs a function on N CPU processes joined by torch.distributed (Gloo, a file
rendezvous in a temporary directory), for the multi-process tests of the Python package.

run_ranks(fn, world, *args) spawns `world` processes; each sets one intra-op thread and a
hybridmoe timeout (HMOE_TIMEOUT_S, so a rank that waits on a dead peer fails instead of
hanging), joins the world, calls fn(rank, world, *args), and sends back what it returns (saved
with torch.save). A rank's exception fails the call with that rank's traceback.
"""
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank, world, init_file, out_dir, fn, args):
    os.environ.setdefault("HMOE_TIMEOUT_S", "120")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world, *args):
    """[fn(rank, world, *args) for each rank], each computed in its own process."""
    with tempfile.TemporaryDirectory(prefix="hmoe-ranks-") as d:
        mp.start_processes(_entry, args=(world, os.path.join(d, "rendezvous"), d, fn, args),
                           nprocs=world, join=True, start_method="spawn")
        return [torch.load(os.path.join(d, f"rank{r}.pt")) for r in range(world)]
