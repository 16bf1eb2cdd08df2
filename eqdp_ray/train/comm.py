"""How the training loop talks to its peers: nothing in one process, torch.distributed in many."""

from __future__ import annotations

import torch


class LocalComm:
    """One process: every collective is the identity."""

    rank = 0
    world_size = 1

    def all_reduce_sum(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return tensors

    def broadcast_int(self, value: int) -> int:
        return value

    def broadcast_from_rank0(self, tensors: list[torch.Tensor]) -> None:
        pass

    def barrier(self) -> None:
        pass


class TorchDistributedComm:
    """Collectives over an initialised torch.distributed process group (gloo or NCCL)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        )

    def all_reduce_sum(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        # One flat buffer: one collective per step instead of one per parameter.
        flat = torch.cat([t.reshape(-1).to(self.device, torch.float64) for t in tensors])
        self.dist.all_reduce(flat, op=self.dist.ReduceOp.SUM)
        out, offset = [], 0
        for t in tensors:
            out.append(flat[offset : offset + t.numel()].reshape(t.shape).to(t.device, t.dtype))
            offset += t.numel()
        return out

    def broadcast_int(self, value: int) -> int:
        # Travels over the process group only: never through logs, files or Ray's object store.
        buffer = torch.tensor([value if self.rank == 0 else 0], dtype=torch.int64, device=self.device)
        self.dist.broadcast(buffer, src=0)
        return int(buffer.item())

    def broadcast_from_rank0(self, tensors: list[torch.Tensor]) -> None:
        """In place: every rank ends up with rank 0's values (one collective per tensor: setup only)."""
        for tensor in tensors:
            buffer = tensor.detach().to(self.device).contiguous()
            self.dist.broadcast(buffer, src=0)
            tensor.detach().copy_(buffer)

    def barrier(self) -> None:
        self.dist.barrier()
