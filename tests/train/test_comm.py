"""The collectives over a real two-process gloo group, and what setup_run relies on them for."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from eqdp_ray.config import parse_config
from eqdp_ray.train.comm import LocalComm, TorchDistributedComm

CONFIG = {
    "name": "comm",
    "seed": 0,
    "data": {"name": "digits"},
    "model": {"name": "eq_resnet9", "options": {"group": "dihedral", "order": 4, "restrict": 2, "layout": [2, 4, 4]}},
    "privacy": {"target_epsilon": 4.0, "delta": 1e-5, "max_grad_norm": 1.0, "secret_seed": 5},
    "training": {"batch_size": 64, "steps": 2, "physical_batch_size": 64},
}


def _another_build_on_rank_1(build):
    """Rank 1's model as another node would build it: other weights and other sampled bases
    (e.g. from an escnn cache filled apart, or another BLAS)."""

    def build_elsewhere(name, **options):
        model = build(name, **options)
        with torch.no_grad():
            for tensor in model.state_dict().values():
                if tensor.is_floating_point():
                    tensor.add_(torch.randn_like(tensor))
        return model

    return build_elsewhere


def _rank(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        comm = TorchDistributedComm()
        import eqdp_ray.train.loop as loop

        if rank == 1:
            loop.build_model = _another_build_on_rank_1(loop.build_model)
        run = loop.setup_run(parse_config(CONFIG), comm, None, None)
        mine = [torch.full((3,), float(rank + 1)), torch.arange(4) * (rank + 1)]
        comm.broadcast_from_rank0(mine)
        summed = comm.all_reduce_sum([torch.ones(2) * (rank + 1)])[0]
        torch.save(
            {
                "model": run.state.model.state_dict(),
                "ema": run.state.ema.shadow.state_dict(),
                "broadcast": mine,
                "summed": summed,
                "int": comm.broadcast_int(41 + rank),
            },
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("comm")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_rank, args=(2, str(out / "store"), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def test_every_rank_starts_from_rank_0s_model(two_ranks):
    """Weights, sampled steerable bases and EMA: bit for bit, whatever rank 1 built locally."""
    zero, one = two_ranks
    assert any("basis" in name for name in zero["model"])
    for part in ("model", "ema"):
        assert zero[part].keys() == one[part].keys()
        for name, tensor in zero[part].items():
            assert torch.equal(tensor, one[part][name]), f"{part}.{name} differs between ranks"


def test_collectives(two_ranks):
    for result in two_ranks:
        assert torch.equal(result["broadcast"][0], torch.ones(3))
        assert torch.equal(result["broadcast"][1], torch.arange(4))
        assert torch.equal(result["summed"], torch.full((2,), 3.0))
        assert result["int"] == 41


def test_one_process_collectives_are_the_identity():
    comm, tensors = LocalComm(), [torch.ones(2)]
    comm.broadcast_from_rank0(tensors)
    assert comm.all_reduce_sum(tensors) is tensors and comm.broadcast_int(7) == 7
