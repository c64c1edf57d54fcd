"""Run a sweep's points through submitit: on this machine (its local executor, at most `jobs`
points at once, each with cores // jobs threads so the machine is not oversubscribed) or on a
Slurm cluster (a job array from the same file: partition, GPUs per point, time limit).

The sweep folder holds `sweep.yaml` (the file as given), `plan.json` (every point and what the
axes chose for it), `specs/KEY.yaml` (each point's network), `points/KEY/` (ordinary run
directories) and `submitit/` (the executor's logs). Re-running the same file skips finished
points and resumes interrupted ones; a failed point is reported and the others go on.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnext_compiler.artifacts import write_text_atomic
from resnext_compiler.errors import ResnextError, UserError
from resnext_compiler.named_files import RUN_SETTINGS, read_named_text
from resnext_compiler.naming import file_stem
from resnext_compiler.runtimes.sweep.point import (
    FAILED,
    FINISHED,
    PointOutcome,
    PointTask,
    point_state,
    run_point,
)
from resnext_compiler.sweep import SweepPlan

PLAN_FILE, SWEEP_FILE, SLURM_JOBS = "plan.json", "sweep.yaml", "slurm_jobs.json"
POINTS, SPECS, LOGS = "points", "specs", "submitit"
ACTIVE_SLURM_STATES = (
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
)
STOP_WAIT_S = 60  # how long an interrupted sweep waits for its points to save and stop


@dataclass(frozen=True)
class SweepRun:
    outcomes: tuple[PointOutcome, ...]  # the points run now, in the order they ended
    skipped: tuple[str, ...]  # points finished by an earlier run

    @property
    def failed(self) -> list[PointOutcome]:
        return [o for o in self.outcomes if o.status == FAILED]


def cpu_cores() -> int:
    """Cores this process may use (its affinity mask, which a container or taskset limits)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_sweep(plan: SweepPlan, out: Path, jobs: int, echo: Callable[[str], None]) -> SweepRun:
    """Train every unfinished point of `plan` under `out`; returns when all have ended."""
    run = plan.sweep.run
    with _sweep_lock(out), _sigterm_interrupts():
        tasks, skipped = write_sweep_folder(plan, out, jobs)
        for key in skipped:
            echo(f"{key}: finished earlier, skipped")
        if not tasks:
            return SweepRun((), tuple(skipped))
        if run.executor == "slurm":
            outcomes = _run_slurm(plan, out, tasks, jobs, echo)
        else:
            outcomes = _run_local(plan, out, tasks, jobs, echo)
        return SweepRun(tuple(outcomes), tuple(skipped))


def write_sweep_folder(plan: SweepPlan, out: Path, jobs: int) -> tuple[list[PointTask], list[str]]:
    """Write the sweep file, plan and point specs; the tasks of the unfinished points and the
    keys of the finished ones."""
    run = plan.sweep.run
    write_text_atomic(out / SWEEP_FILE, plan.text)
    write_text_atomic(out / PLAN_FILE, plan.to_json())
    tasks, skipped = [], []
    for point in plan.points:
        run_dir = out / POINTS / point.key
        if point_state(run_dir) == FINISHED:
            skipped.append(point.key)
            continue
        spec_file = out / SPECS / f"{point.key}.yaml"
        write_text_atomic(spec_file, point.spec.to_yaml())
        tasks.append(
            PointTask(
                point.key,
                str(run_dir.resolve()),
                str(spec_file.resolve()),
                plan.data_dir,
                point.seed,
                0,
                run.workers,
                run.gpus_per_point,
            )
        )
    if run.executor == "slurm":
        threads = run.slurm.cpus_per_point
    else:
        threads = max(1, cpu_cores() // max(1, min(jobs, len(tasks))))
    tasks = [PointTask(**{**t.__dict__, "threads": threads}) for t in tasks]
    return tasks, skipped


@contextlib.contextmanager
def _sweep_lock(out: Path) -> Iterator[None]:
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / ".sweep.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"another sweep is running in {out}; wait for it or stop it first"
            ) from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops the sweep as Ctrl-C does: points save their state and stop."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _progress(plan: SweepPlan, out: Path, outcome: PointOutcome, index: int, total: int) -> str:
    from resnext_compiler.runtimes.train.metrics import read_metrics

    line = f"[{index}/{total}] {outcome.key}: {outcome.status}"
    if outcome.status == FINISHED:
        rows = read_metrics(out / POINTS / outcome.key)
        if rows:
            line += f", val top-1 error {rows[-1]['val_top1_error']:.2f}%"
        line += f" ({outcome.wall_s:.0f} s)"
    elif outcome.message:
        line += f": {outcome.message}"
    return line


def _outcome(job: Any, task: PointTask) -> PointOutcome:
    """The worker's answer, or a failed outcome saying why there is none."""
    import submitit

    try:
        return job.result()
    except submitit.core.utils.FailedJobError as exc:
        first = next((line for line in reversed(str(exc).splitlines()) if line.strip()), "")
        return PointOutcome(
            task.key,
            FAILED,
            f"internal error in the worker ({first[:300]}); log: {job.paths.stderr}",
        )
    except submitit.core.utils.UncompletedJobError:
        return PointOutcome(
            task.key,
            FAILED,
            "the worker ended without an answer (killed, "
            f"out of memory or over its time limit); log: {job.paths.stderr}",
        )


def _run_local(
    plan: SweepPlan, out: Path, tasks: list[PointTask], jobs: int, echo: Callable[[str], None]
) -> list[PointOutcome]:
    import submitit

    run = plan.sweep.run
    executor = submitit.LocalExecutor(folder=out / LOGS)
    executor.update_parameters(timeout_min=run.time_limit_min)
    gpus = run.gpus_per_point
    free_slots = list(range(jobs))
    pending = list(reversed(tasks))
    running: dict[Any, tuple[PointTask, int]] = {}
    outcomes: list[PointOutcome] = []
    total = len(tasks)
    echo(
        f"{total} point(s) to train, {min(jobs, total)} at a time, "
        f"at most {tasks[0].threads} thread(s) each; logs in {out / LOGS}"
    )
    try:
        while pending or running:
            while pending and free_slots:
                task, slot = pending.pop(), free_slots.pop(0)
                # each point in flight gets its own GPUs (CUDA_VISIBLE_DEVICES)
                executor.update_parameters(
                    gpus_per_node=gpus, visible_gpus=list(range(slot * gpus, (slot + 1) * gpus))
                )
                running[executor.submit(run_point, task)] = (task, slot)
            ended = [job for job in running if job.done()]
            for job in ended:
                task, slot = running.pop(job)
                free_slots.append(slot)
                outcomes.append(_outcome(job, task))
                echo(_progress(plan, out, outcomes[-1], len(outcomes), total))
            if not ended:
                time.sleep(0.5)
    except KeyboardInterrupt:
        _stop_local(list(running))
        raise
    return outcomes


def _stop_local(jobs: list[Any]) -> None:
    """Ask every running point to save and stop (SIGTERM to its controller, which forwards it
    to the training process), and wait for them a bounded time."""
    for job in jobs:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(job.job_id), signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline and not all(job.done() for job in jobs):
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(0.2)


def slurm_executor(plan: SweepPlan, out: Path, jobs: int) -> Any:
    """A submitit Slurm executor set from the sweep's `run:` section."""
    import submitit

    run = plan.sweep.run
    settings = run.slurm
    parameters: dict[str, Any] = {
        "job_name": file_stem(f"sweep-{plan.sweep.name}"),
        "time": run.time_limit_min,
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": settings.cpus_per_point,
        "array_parallelism": jobs,
        "partition": settings.partition,
        "account": settings.account,
        "constraint": settings.constraint,
        "mem": f"{settings.mem_gb}GB" if settings.mem_gb else None,
        # one task per point: `train --gpus N` starts its own processes (torchrun)
        "gpus_per_node": run.gpus_per_point or None,
    }
    executor = submitit.SlurmExecutor(folder=out / LOGS)
    executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})
    return executor


def submit_slurm(plan: SweepPlan, out: Path, tasks: list[PointTask], jobs: int) -> list[Any]:
    """Submit the tasks as one Slurm array; the job ids are kept for a later re-run."""
    import submitit

    recorded = out / SLURM_JOBS
    earlier: list[Any] = []
    if recorded.is_file():
        with contextlib.suppress(ValueError, TypeError, OSError, ResnextError):  # unreadable
            earlier = list(json.loads(read_named_text(recorded, RUN_SETTINGS, out)))
    for job_id in earlier:
        state = submitit.SlurmJob(out / LOGS, str(job_id)).state
        if state in ACTIVE_SLURM_STATES:
            raise UserError(
                f"Slurm job {job_id} of this sweep is still {state}; re-run "
                "when it has ended (or scancel it)"
            )
    submitted = slurm_executor(plan, out, jobs).map_array(run_point, tasks)
    write_text_atomic(recorded, json.dumps([job.job_id for job in submitted]))
    return submitted


def collect(
    plan: SweepPlan,
    out: Path,
    pairs: list[tuple[Any, PointTask]],
    echo: Callable[[str], None],
    poll_s: float = 10.0,
) -> list[PointOutcome]:
    """Wait for submitted jobs, reporting each as it ends."""
    waiting = list(pairs)
    outcomes: list[PointOutcome] = []
    while waiting:
        ended = [(job, task) for job, task in waiting if job.done()]
        for pair in ended:
            waiting.remove(pair)
            outcomes.append(_outcome(*pair))
            echo(_progress(plan, out, outcomes[-1], len(outcomes), len(pairs)))
        if not ended:
            time.sleep(poll_s)
    return outcomes


def _run_slurm(
    plan: SweepPlan, out: Path, tasks: list[PointTask], jobs: int, echo: Callable[[str], None]
) -> list[PointOutcome]:
    submitted = submit_slurm(plan, out, tasks, jobs)
    echo(
        f"submitted {len(tasks)} point(s) as Slurm array {submitted[0].job_id.split('_')[0]} "
        f"({jobs} at a time); logs in {out / LOGS}. Ctrl-C stops waiting, not the jobs."
    )
    try:
        return collect(plan, out, list(zip(submitted, tasks, strict=True)), echo)
    except KeyboardInterrupt:
        echo("stopped waiting; the jobs go on. Re-run when they have ended to collect them.")
        raise
