"""Progress of a run: a tqdm bar per epoch on a terminal, plain lines otherwise (CI, pipes).

Only rank 0 reports; other ranks get a silent reporter.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO


class Progress:
    def __init__(self, enabled: bool = True, stream: TextIO | None = None,
                 tty: bool | None = None):
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self._bar: Any = None
        self._steps = 0
        self._every = 1

    def log(self, line: str) -> None:
        if self.enabled:
            print(line, file=self.stream, flush=True)

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int = 0) -> None:
        if not self.enabled:
            return
        self._steps = steps
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=steps, initial=done, desc=f"epoch {epoch}/{epochs}",
                             unit="step", leave=False, file=self.stream, dynamic_ncols=True)
        else:
            self._every = max(1, steps // 4)

    def step(self, epoch: int, step: int, loss: float, top1_error: float, lr: float) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loss:.3f}", err=f"{top1_error:.1f}%", lr=f"{lr:.3g}")
        elif step % self._every == 0 and step < self._steps:
            self.log(f"  epoch {epoch} step {step}/{self._steps}: loss {loss:.4f}, "
                     f"top-1 error {top1_error:.2f}%, lr {lr:.4g}")

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
