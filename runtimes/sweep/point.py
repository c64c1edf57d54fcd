"""One point of a sweep, run wherever the executor puts it (a local process, a Slurm task).

A point is an ordinary run directory made by the train runner, so every command works on it.
Its state is read from the directory alone: finished (every epoch in the metrics log),
interrupted (a checkpoint short of the last epoch: resumed), or new. `sweep_point.json` beside
the run's own files records the sweep's view: status, the error of a failed attempt, and wall
time summed over attempts. A lock next to the run directory keeps two processes (a re-run while
an orphaned point still trains) from training the same point.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnext_compiler.artifacts import write_text_atomic
from resnext_compiler.errors import ResnextError, error_text
from resnext_compiler.named_files import RUN_SETTINGS, read_named_text

STATUS_FILE = "sweep_point.json"
FINISHED, INTERRUPTED, FAILED, NEW, RUNNING = "finished", "interrupted", "failed", "new", "running"


@dataclass(frozen=True)
class PointTask:
    """What a worker needs to train one point (pickled by submitit)."""

    key: str
    run_dir: str
    spec_file: str
    data_dir: str | None
    seed: int
    threads: int
    workers: int
    gpus: int


@dataclass(frozen=True)
class PointOutcome:
    key: str
    status: str  # finished | interrupted | failed
    message: str = ""
    wall_s: float = 0.0


def read_status(run_dir: Path) -> dict[str, Any]:
    """The sweep's record of a point (empty when it never ran or the file is unreadable)."""
    try:
        data = json.loads(read_named_text(run_dir / STATUS_FILE, RUN_SETTINGS, run_dir))
    except (OSError, ValueError, RecursionError, ResnextError):
        return {}
    return data if isinstance(data, dict) else {}


def point_state(run_dir: Path) -> str:
    """finished, interrupted (a checkpoint to resume) or new, from the run directory."""
    from resnext_compiler.runtimes.train.checkpoint import CHECKPOINT
    from resnext_compiler.runtimes.train.config import TrainConfig
    from resnext_compiler.runtimes.train.metrics import read_metrics
    from resnext_compiler.runtimes.train.runner import CONFIG_FILE

    if not (run_dir / CHECKPOINT).is_file():
        return NEW
    try:
        epochs = TrainConfig.from_json(read_named_text(run_dir / CONFIG_FILE, RUN_SETTINGS,
                                                       run_dir)).epochs
        done = len(read_metrics(run_dir))
    except (OSError, ValueError, TypeError, KeyError, ResnextError):
        return NEW  # prepare_run refuses a directory with a checkpoint; the worker says so
    return FINISHED if done >= epochs else INTERRUPTED


@contextlib.contextmanager
def _exclusive(run_dir: Path) -> Iterator[bool]:
    """Hold a lock beside the run directory; yields False when another process holds it."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir.with_name(f".{run_dir.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def run_point(task: PointTask) -> PointOutcome:
    """Train (or resume) one point to its last epoch. A user or runtime error is returned as a
    failed outcome (and recorded); a bug raises, and submitit keeps its traceback in the log."""
    run_dir = Path(task.run_dir)
    with _exclusive(run_dir) as mine:
        if not mine:
            return PointOutcome(
                task.key,
                FAILED,
                f"{run_dir} is being trained by another process (an earlier sweep still running?)",
            )
        started = time.monotonic()
        previous = float(read_status(run_dir).get("wall_s", 0.0) or 0.0)
        state = point_state(run_dir)
        if state == FINISHED:
            return PointOutcome(task.key, FINISHED, wall_s=previous)
        _record(run_dir, RUNNING, "", previous)
        try:
            interrupted = _train(task, run_dir, resume=state == INTERRUPTED)
        except ResnextError as exc:
            outcome = PointOutcome(
                task.key, FAILED, error_text(exc), previous + time.monotonic() - started
            )
        else:
            outcome = PointOutcome(
                task.key,
                INTERRUPTED if interrupted else FINISHED,
                "",
                previous + time.monotonic() - started,
            )
        _record(run_dir, outcome.status, outcome.message, outcome.wall_s)
        if outcome.status == FINISHED:
            from resnext_compiler.runtimes.train.plot import plot_runs

            plot_runs([run_dir], run_dir / "curves.png")
        return outcome


def _train(task: PointTask, run_dir: Path, resume: bool) -> bool:
    """Run the train runner on the point; True when it stopped early (a signal)."""
    import torch

    from resnext_compiler.runtimes.train.config import TrainOverrides
    from resnext_compiler.runtimes.train.runner import execute, prepare_run, resume_config

    # The point's share of the cores is the most it uses: the runner still picks one thread
    # for networks too small to gain from more (runtimes/train/loop.cpu_threads).
    previous = torch.get_num_threads()
    torch.set_num_threads(task.threads)
    try:
        if resume:
            summary = execute(resume_config(run_dir), resume=True)
        else:
            overrides = TrainOverrides(
                data_dir=task.data_dir,
                nproc=max(1, task.gpus),
                device="cuda" if task.gpus else "cpu",
                seed=task.seed,
                workers=task.workers,
            )
            config, data = prepare_run(Path(task.spec_file), overrides, run_dir)
            summary = execute(config, data=data)
    finally:
        torch.set_num_threads(previous)
    for line in summary.lines():
        print(line, flush=True)
    return summary.interrupted


def _record(run_dir: Path, status: str, message: str, wall_s: float) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        run_dir / STATUS_FILE,
        json.dumps({"status": status, "error": message, "wall_s": round(wall_s, 3)}, indent=2),
    )
