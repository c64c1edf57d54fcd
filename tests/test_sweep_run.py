"""Sweeps trained end to end through submitit's local executor: run directories, table and
figures; a failed point among finished ones; a killed sweep resumed without retraining."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sweep import write_sweep

from resnext_compiler.runtimes.sweep.point import point_state


def runs(out: Path) -> dict[str, Path]:
    """Run directories by label (`C1x64d`), from the sweep's plan."""
    plan = json.loads((out / "plan.json").read_text())
    return {p["label"]: out / "points" / p["key"] for p in plan["points"]}


def table(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "results.csv").read_text().splitlines()))


def test_tiny_sweep_trains_every_point_into_ordinary_run_directories(tmp_path, run_cli):
    path = write_sweep(tmp_path, "axes:\n  cardinality: [1, 2]\nrun: {jobs: 2}\n")
    out = tmp_path / "out"
    result = run_cli("sweep", path, "-o", out)
    assert result.code == 0, result
    assert "2 point(s) to train, 2 at a time" in result.out
    rows = table(out)
    assert [(r["point"], r["C"], r["d"], r["params"], r["epochs"], r["status"]) for r in rows] == [
        ("C1x64d", "1", "64", "11114", "1", "finished"),
        ("C2x43d", "2", "43", "11084", "1", "finished"),
    ]
    assert all(0 <= float(r["top1_error"]) <= 100 and float(r["time_s"]) > 0 for r in rows)
    for name in ("error_vs_cardinality.png", "curves.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    run = runs(out)["C2x43d"]
    assert (run / "curves.png").is_file()
    evaluated = run_cli(
        "evaluate", run / "spec.yaml", "--weights", run / "model.safetensors", "--json"
    )  # an ordinary run directory: every command works on it
    assert evaluated.code == 0, evaluated
    assert json.loads(evaluated.out)["top1_error"] == pytest.approx(
        float(rows[1]["top1_error"]), abs=1e-4
    )


def test_a_failed_point_is_reported_and_the_others_finish(tmp_path, run_cli):
    # a global batch larger than the digits' training split fails that point alone
    path = write_sweep(tmp_path, "axes:\n  values:\n    train.batch_size: [4096, 64]\n")
    out = tmp_path / "out"
    result = run_cli("sweep", path, "-o", out)
    assert result.code == 1, result
    assert "1 of 2 run(s) failed (batch_size4096-seed0-" in result.err
    assert (
        "batch_size4096-seed0-" in result.out
        and ": failed: error: the training split has" in result.out
    )
    failed, finished = table(out)
    assert (failed["status"], finished["status"]) == ("failed", "finished")
    assert "fewer than one global batch of 4096" in failed["error"]
    assert failed["top1_error"] == "" and float(finished["top1_error"]) < 100


def test_killed_sweep_resumes_interrupted_points_and_skips_finished_ones(tmp_path):
    path = write_sweep(
        tmp_path, "axes:\n  values:\n    train.epochs: [1, 6]\nrun: {jobs: 1}\n"
    ).resolve()
    out = tmp_path / "out"
    command = [sys.executable, "-m", "resnext_compiler.cli", "sweep", str(path), "-o", str(out)]
    sweep = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and sweep.poll() is None:
            if (out / "plan.json").is_file():
                long_run = runs(out)["epochs6"]
                if (long_run / "metrics.jsonl").is_file():  # one epoch of the second point
                    break
            time.sleep(0.05)
        sweep.send_signal(signal.SIGTERM)  # as a scheduler or `kill` stops it
        _, err = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    assert sweep.returncode == 130, err
    assert "run the same command again to resume" in err
    short_run, long_run = runs(out)["epochs1"], runs(out)["epochs6"]
    assert point_state(short_run) == "finished" and point_state(long_run) == "interrupted"
    stamp = (short_run / "model.safetensors").stat().st_mtime_ns
    done_before = len((long_run / "metrics.jsonl").read_text().splitlines())
    assert 1 <= done_before < 6

    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{short_run.name}: finished earlier, skipped" in again.stdout
    assert "1 point(s) to train" in again.stdout
    assert (short_run / "model.safetensors").stat().st_mtime_ns == stamp  # not retrained
    epochs = [
        json.loads(line)["epoch"] for line in (long_run / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == [1, 2, 3, 4, 5, 6]
    logs = "".join(p.read_text() for p in (out / "submitit").glob("*_log.out"))
    assert f"resuming {long_run}" in logs
    assert [r["status"] for r in table(out)] == ["finished", "finished"]
