# Multi-process GPU tests: one rank per process, launched by torchrun (or mpirun with
# MASTER_ADDR/MASTER_PORT set); several processes may share one GPU under MPS.
import datetime
import os

import pytest
import torch


def _env_int(*names: str, default=None):
    for name in names:
        if name in os.environ:
            return int(os.environ[name])
    return default


@pytest.fixture(scope="session")
def dist_env():
    """(rank, world size, device) with torch.distributed initialized over gloo (NCCL refuses
    two ranks on one GPU)."""
    import torch.distributed as dist
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    world = _env_int("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE")
    if world is None:
        pytest.skip("launch under torchrun: python3 -m torch.distributed.run --nproc_per_node N")
    rank = _env_int("RANK", "OMPI_COMM_WORLD_RANK")
    local_rank = _env_int("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", default=rank)
    device = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    yield rank, world, device
    dist.barrier()
    dist.destroy_process_group()
