"""Learning rate as a pure function of (epoch, step), so resuming needs no scheduler state.

step:   x0.1 at each milestone epoch (seed's `learningRate()`: ImageNet every 30 epochs,
        CIFAR at 50% and 75% of training; He et al. 2016).
cosine: half-cosine from the base rate to 0 over all steps (Loshchilov & Hutter 2017).
Both start with an optional linear warmup over `warmup_epochs` (Goyal et al. 2017, sec. 2.2).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    base_lr: float
    kind: str  # step | cosine
    epochs: int
    steps_per_epoch: int
    milestones: tuple[int, ...] = ()
    warmup_epochs: int = 0

    def lr(self, epoch: int, step: int) -> float:
        """The rate for optimizer step `step` (0-based) of epoch `epoch` (0-based)."""
        position = epoch * self.steps_per_epoch + step  # global step
        warmup_steps = self.warmup_epochs * self.steps_per_epoch
        if position < warmup_steps:
            return self.base_lr * (position + 1) / warmup_steps
        if self.kind == "cosine":
            total = self.epochs * self.steps_per_epoch - warmup_steps
            progress = (position - warmup_steps) / max(1, total)
            return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        # Milestone m means "from epoch m on (1-based epochs m+1...)"; epoch here is 0-based.
        drops = bisect.bisect_right(self.milestones, epoch)
        return self.base_lr * 0.1**drops
