"""Which samples each process reads: a DistributedSampler laid out by global batch.

Each epoch shuffles the training set with a generator seeded by (seed, epoch), drops the
last partial global batch, and cuts global batch k into `world_size x accum_steps` equal
micro-batches; rank r takes micro-batches r*A ... r*A + A - 1. A run with R processes and A
accumulation steps therefore sees the same micro-batches as one process with R*A steps, and
the order depends only on (seed, epoch): resuming replays it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GlobalBatchSampler:
    num_samples: int
    batch_size: int  # global
    world_size: int = 1
    rank: int = 0
    accum_steps: int = 1
    seed: int = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    @property
    def micro_batch(self) -> int:
        return self.batch_size // (self.world_size * self.accum_steps)

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=g)

    def micro_batches(self, epoch: int, start_step: int = 0) -> list[list[torch.Tensor]]:
        """For each optimizer step from `start_step`: this rank's `accum_steps` index tensors."""
        order = self.permutation(epoch)
        m = self.micro_batch
        steps = []
        for step in range(start_step, self.steps_per_epoch):
            first = step * self.batch_size + self.rank * self.accum_steps * m
            steps.append([order[first + j * m: first + (j + 1) * m]
                          for j in range(self.accum_steps)])
        return steps


def shard(num_samples: int, world_size: int, rank: int) -> torch.Tensor:
    """Evaluation indices of one rank (every sample exactly once across ranks)."""
    return torch.arange(rank, num_samples, world_size)
