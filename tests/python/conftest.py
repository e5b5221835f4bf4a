# conftest.py — shared by the Python tests (tests/python/test_*.py; ctest runs each file under the
# interpreter the package was built for, with PYTHONPATH=<build>/python). Fixture `world1`: a
# torch.distributed world of this one process (Gloo over an in-process store) for one test,
# destroyed after it.
import pytest
import torch.distributed as dist


@pytest.fixture
def world1():
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    yield dist.group.WORLD
    dist.destroy_process_group()
