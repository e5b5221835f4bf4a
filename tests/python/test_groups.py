# test_groups.py — torch.distributed process groups, the user's own, carry hybridmoe's
# collectives: hybridmoe.Group wraps them (dist::Group), and the communication core's all-reduce,
# all-gather, reduce-scatter and all-to-all give the exact numbers on 2 Gloo processes, forward and
# backward. Payloads describe themselves: each value encodes the rank (and row) it came from.
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import hybridmoe

P = 2  # processes


def test_group_of_the_default_world(world1):
    group = hybridmoe.Group.from_torch()
    assert (group.name, group.ranks, group.rank, group.size) == ("world", [0], 0, 1)
    assert group.is_member and group.process_group is world1
    assert repr(group) == "hybridmoe.Group('world', ranks=[0], rank=0)"


def test_group_with_given_ranks_and_timeout(world1):
    group = hybridmoe.Group(world1, [0], name="dp", timeout_s=12.5)
    assert (group.name, group.ranks, group.rank, group.timeout_s) == ("dp", [0], 0, 12.5)
    with pytest.raises(hybridmoe.Error, match="timeout_s should be a positive number"):
        hybridmoe.Group(world1, [0], timeout_s=0)


def test_timeout_from_environment(world1, monkeypatch):
    monkeypatch.setenv("HMOE_TIMEOUT_S", "7")
    assert hybridmoe.Group.from_torch(world1).timeout_s == 7.0


def test_from_torch_needs_an_initialized_world():
    assert not dist.is_initialized()
    with pytest.raises(hybridmoe.Error, match="torch.distributed is not initialized"):
        hybridmoe.Group.from_torch()


def rows(values):
    return torch.tensor(values, dtype=torch.float64)


def check_world(rank):
    world = hybridmoe.Group.from_torch()
    assert (world.ranks, world.rank, world.size) == ([0, 1], rank, 2)

    # all_reduce_sum: rank r holds (r + 1) * [1, 10, 100]; backward is the identity.
    x = rows([1, 10, 100]).mul(rank + 1).requires_grad_()
    y = hybridmoe.all_reduce_sum(x, world)
    assert torch.equal(y, rows([3, 30, 300]))
    (y * rows([1, 2, 3])).sum().backward()
    assert torch.equal(x.grad, rows([1, 2, 3]))

    # copy_to_group: the identity; backward sums the gradient over the ranks.
    x = rows([5, 6]).requires_grad_()
    y = hybridmoe.copy_to_group(x, world)
    assert torch.equal(y, x)
    (y * (rank + 1)).sum().backward()
    assert torch.equal(x.grad, rows([3, 3]))

    # all_gather_rows, uneven: rank r holds r + 1 rows [100 r + i, -(100 r + i)].
    mine = rows([[100 * rank + i, -(100 * rank + i)] for i in range(rank + 1)]).requires_grad_()
    expected = rows([[0, 0], [100, -100], [101, -101]])
    for counts in ([], [1, 2]):
        assert torch.equal(hybridmoe.all_gather_rows(mine, world, counts), expected)
    y = hybridmoe.all_gather_rows(mine, world)
    (y * rows([[1], [2], [3]])).sum().backward()  # backward: this rank's rows, summed over 2
    assert torch.equal(mine.grad, rows([[2, 2]] if rank == 0 else [[4, 4], [6, 6]]))

    # reduce_scatter_rows: rank r holds (r + 1) * [[1], [2], [3]]; rank 0 keeps 2 rows, rank 1 one.
    x = rows([[1], [2], [3]]).mul(rank + 1)
    y = hybridmoe.reduce_scatter_rows(x, world, [2, 1])
    assert torch.equal(y, rows([[3], [6]]) if rank == 0 else rows([[9]]))

    # all_to_all, uneven and with an empty split: rank s sends sends[s][d] rows to rank d, row k
    # of them holding 1000 s + 10 d + k.
    sends = [[1, 2], [3, 0]]
    x = rows([[1000 * rank + 10 * d + k] for d in range(P) for k in range(sends[rank][d])])
    x.requires_grad_()
    received = [sends[s][rank] for s in range(P)]
    y = hybridmoe.all_to_all(x, received, sends[rank], world)
    assert torch.equal(y, rows([[1000 * s + 10 * rank + k] for s in range(P)
                                for k in range(sends[s][rank])]))
    # Backward: the reverse all-to-all; a gradient equal to the values goes back to their rows.
    (y * y.detach()).sum().backward()
    assert torch.equal(x.grad, x.detach())

    assert hybridmoe.sum_over_ranks([rank + 1.0, 10.0 * (rank + 1)], world) == [3.0, 30.0]
    hybridmoe.barrier(world)


def check_user_groups(rank):
    # Groups the program made itself: a second group of both ranks, and one of rank 1 only.
    pair = dist.new_group([0, 1])
    solo = dist.new_group([1])
    group = hybridmoe.Group.from_torch(pair, name="pair")
    assert (group.name, group.ranks, group.rank) == ("pair", [0, 1], rank)
    assert group.process_group is pair
    assert torch.equal(hybridmoe.all_reduce_sum(rows([rank + 1.0]), group), rows([3.0]))
    if rank == 1:
        only = hybridmoe.Group.from_torch(solo, name="solo")
        assert (only.ranks, only.rank, only.size) == ([1], 0, 1)
        assert torch.equal(hybridmoe.all_reduce_sum(rows([7.0]), only), rows([7.0]))
    else:
        with pytest.raises(hybridmoe.Error) as info:
            hybridmoe.Group.from_torch(solo, name="solo")
        assert str(info.value) == (
            "Group.from_torch: this process (rank 0) is not a member of group 'solo'")
    hybridmoe.barrier(group)


def run_rank(rank, store_path):
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=P)
    try:
        check_world(rank)
        check_user_groups(rank)
    finally:
        dist.destroy_process_group()


def test_collectives_on_two_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("HMOE_TIMEOUT_S", "60")  # a wrong payload fails, not hangs
    mp.spawn(run_rank, args=(str(tmp_path / "store"),), nprocs=P, join=True)
