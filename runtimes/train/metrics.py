"""Per-batch sums (loss, top-k misses: the seed's table metric) and the per-epoch metrics
log of a run.

The log is `metrics.jsonl` (one JSON object per epoch) and `metrics.csv` (the same rows),
both rewritten atomically from the history kept in the checkpoint, so a killed run never
leaves rows for an epoch whose checkpoint was not written.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from resnext_compiler.artifacts import write_text_atomic
from resnext_compiler.errors import UserError
from resnext_compiler.named_files import METRICS, read_named_text
from resnext_compiler.runtimes.evaluation import top_k_misses

COLUMNS = ("epoch", "train_loss", "train_top1_error", "train_top5_error", "val_loss",
           "val_top1_error", "val_top5_error", "lr", "images_per_s", "epoch_time_s")


def batch_sums(loss_sum: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
               ) -> torch.Tensor:
    """[loss sum, top-1 misses, top-5 misses, images] of one batch, float64 on the CPU; the
    misses are counted by the one rule, `runtimes.evaluation.top_k_misses`."""
    misses = top_k_misses(logits.detach().cpu().numpy(), targets.cpu().numpy())
    return torch.tensor([float(loss_sum.detach().double()), *misses, len(targets)],
                        dtype=torch.float64)


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(row) + "\n" for row in history)
    write_text_atomic(run_dir / "metrics.jsonl", lines)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(run_dir / "metrics.csv", buffer.getvalue())


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of `run_dir/metrics.jsonl` (empty when the run has not finished an epoch)."""
    path = run_dir / "metrics.jsonl"
    if not os.path.lexists(path):
        return []
    rows = []
    text = read_named_text(path, METRICS, run_dir)
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            raise UserError(f"{path}:{number}: not a JSON object; the metrics log is corrupt"
                            ) from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: not a JSON object; the metrics log is corrupt")
        rows.append(row)
    return rows
