"""Progress of a run: a tqdm bar per epoch on a terminal, plain lines otherwise (CI, pipes),
both with throughput and the run's ETA, measured on this epoch's own steps (a resumed epoch\ntoo).

Only rank 0 reports; other ranks get a silent reporter.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO


def duration(seconds: float) -> str:
    """`1:02:03` / `2:03`: an ETA as a person reads it."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    def __init__(self, enabled: bool = True, stream: TextIO | None = None,
                 tty: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock = clock
        self._bar: Any = None
        self._steps = 0
        self._every = 1
        self._epoch_start = (0.0, 0)  # (time, step) the epoch's rate is measured from
        self._epochs_left = 0
        self._images_per_step = 0

    def log(self, line: str) -> None:
        if self.enabled:
            print(line, file=self.stream, flush=True)

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int = 0,
                    images_per_step: int = 0) -> None:
        if not self.enabled:
            return
        self._steps = steps
        self._epoch_start = (self.clock(), done)
        self._epochs_left = epochs - epoch
        self._images_per_step = images_per_step
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=steps, initial=done, desc=f"epoch {epoch}/{epochs}",
                             unit="step", leave=False, file=self.stream, dynamic_ncols=True)
        else:
            self._every = max(1, steps // 4)

    def speed(self, step: int) -> tuple[str, str]:
        """(throughput, ETA of the run) after `step` steps of this epoch ('' until measured)."""
        started, first = self._epoch_start
        elapsed, done = self.clock() - started, step - first
        if elapsed <= 0 or done <= 0:
            return "", ""
        per_step = elapsed / done
        left = (self._steps - step + self._epochs_left * self._steps) * per_step
        rate = (f"{self._images_per_step / per_step:.0f} images/s" if self._images_per_step
                else f"{1 / per_step:.2f} steps/s")
        return rate, duration(left)

    def step(self, epoch: int, step: int, loss: float, top1_error: float, lr: float) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(1)
            rate, eta = self.speed(step)
            self._bar.set_postfix_str(f"loss={loss:.3f}, err={top1_error:.1f}%, lr={lr:.3g}"
                                      + (f", {rate}, run ETA {eta}" if eta else ""))
        elif step % self._every == 0 and step < self._steps:
            rate, eta = self.speed(step)
            self.log(f"  epoch {epoch} step {step}/{self._steps}: loss {loss:.4f}, "
                     f"top-1 error {top1_error:.2f}%, lr {lr:.4g}"
                     + (f", {rate}, run ETA {eta}" if eta else ""))
    def end_epoch(self, row: dict[str, Any], epochs: int) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.log(f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}, "
                 f"train top-1 error {row['train_top1_error']:.2f}%, val top-1 error "
                 f"{row['val_top1_error']:.2f}%, top-5 {row['val_top5_error']:.2f}%, "
                 f"lr {row['lr']:.4g}, {row['images_per_s']:.0f} images/s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
