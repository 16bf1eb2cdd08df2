"""Poisson sampling: each step includes every training example independently with probability q.

This is the sampler the accountant assumes (subsampled Gaussian with rate q). In a distributed
run all ranks draw the same global inclusion mask from a shared generator and each keeps the
examples of its own disjoint shard, so the union over ranks is exactly Poisson sampling of the
whole data set at rate q, and a run with N workers sees the same batches as one process.
"""

from __future__ import annotations

import torch


class PoissonSampler:
    def __init__(
        self, num_examples: int, sample_rate: float, generator: torch.Generator, rank: int = 0, world_size: int = 1
    ) -> None:
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample rate must lie in (0, 1], got {sample_rate}")
        self.num_examples, self.sample_rate = num_examples, sample_rate
        self.generator, self.rank, self.world_size = generator, rank, world_size

    @property
    def expected_batch_size(self) -> float:
        return self.sample_rate * self.num_examples

    def sample_global(self) -> torch.Tensor:
        """Indices of the whole step's batch (all shards), in increasing order."""
        mask = torch.rand(self.num_examples, generator=self.generator) < self.sample_rate
        return mask.nonzero().squeeze(1)

    def shard_mask(self, indices: torch.Tensor) -> torch.Tensor:
        """Which entries of a global batch belong to this rank: index equal to rank modulo world size."""
        return indices % self.world_size == self.rank

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch."""
        return indices[self.shard_mask(indices)]
