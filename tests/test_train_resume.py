"""Resuming is exact on CPU: a run killed (SIGKILL) or interrupted (Ctrl-C) and resumed ends
with the same weights, bit for bit, as a run that was never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_digits_spec
from safetensors.torch import load_file

TINY = tiny_digits_spec(
    "{dataset: digits, epochs: 2, batch_size: 32, lr: 0.05, schedule: cosine, "
    "weight_decay: 5.0e-4}"
)
CLI = [sys.executable, "-m", "resnext_compiler.cli", "train"]
TIMEOUT = 240


def start(*args: object) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *map(str, args), "--threads", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(*args: object) -> subprocess.CompletedProcess:
    result = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    return result


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert sorted(left) == sorted(right)
    different = [k for k in left if not torch.equal(left[k], right[k])]
    assert different == []


def position(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["position"]


def wait_for(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.005)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    (root / "tiny.yaml").write_text(TINY)
    return root


@pytest.fixture(scope="module")
def uninterrupted(workdir: Path) -> Path:
    run = workdir / "straight"
    finish(workdir / "tiny.yaml", "--run-dir", run, "--threads", "1")
    return run


def test_sigkill_after_one_epoch_then_resume_equals_two_epochs_bitwise(workdir, uninterrupted):
    run = workdir / "killed"
    process = start(workdir / "tiny.yaml", "--run-dir", run)
    wait_for(run / "metrics.jsonl", process)  # written last at the end of epoch 1
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=TIMEOUT) == -signal.SIGKILL
    assert position(run) == {"epoch": 1, "step": 0}

    result = finish("--resume", run, "--threads", "1")
    assert f"resuming {run} at epoch 2\n" in result.stdout
    assert_same_weights(run, uninterrupted)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_ctrl_c_mid_epoch_saves_and_resume_equals_uninterrupted_bitwise(workdir, uninterrupted):
    run = workdir / "interrupted"
    process = start(workdir / "tiny.yaml", "--run-dir", run)
    assert process.stdout is not None
    for line in process.stdout:  # plain progress lines: a quarter of an epoch each
        if line.startswith("  epoch 2 step"):
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 130, err
    assert f"interrupted: state saved to {run / 'checkpoints' / 'last.pt'}; continue with\n" \
           f"  resnext-compile train --resume {run}\n" in out
    saved = position(run)
    assert saved["epoch"] == 1 and 0 < saved["step"] < 45

    result = finish("--resume", run, "--threads", "1")
    assert f"resuming {run} at epoch 2, step {saved['step'] + 1}\n" in result.stdout
    assert_same_weights(run, uninterrupted)


def test_checkpoint_holds_the_full_training_state_and_loads_weights_only(uninterrupted):
    state = torch.load(uninterrupted / "checkpoints" / "last.pt", weights_only=True)
    assert state["format"] == "resnext-compile-train/1"
    assert state["position"] == {"epoch": 2, "step": 0}
    assert {"model", "optimizer", "scaler", "rng", "history", "partial"} <= set(state)
    assert len(state["optimizer"]["state"]) == len([k for k in state["model"]
                                                    if not k.endswith(("running_mean",
                                                                       "running_var",
                                                                       "num_batches_tracked"))])
    assert [row["epoch"] for row in state["history"]] == [1, 2]
    weights = load_file(uninterrupted / "model.safetensors")
    assert "layer1.0.conv2.weight" in weights and not any(k.startswith("module.")
                                                          for k in weights)
    assert torch.equal(weights["fc.weight"], state["model"]["fc.weight"])


def test_resuming_a_finished_run_asks_for_more_epochs(run_cli, uninterrupted):
    result = run_cli("train", "--resume", uninterrupted)
    assert result.code == 2
    assert result.err == (f"error: {uninterrupted} has already finished 2 of 2 epochs; pass "
                             "--epochs N with a larger N to train longer\n")


def test_resume_refuses_settings_that_would_change_the_run(run_cli, uninterrupted):
    result = run_cli("train", "--resume", uninterrupted, "--batch-size", "64")
    assert result.code == 2
    assert result.err == ("error: --resume continues with the run's own settings; drop "
                             "--batch-size (only --epochs and --lr may change)\n")


def test_a_new_run_refuses_a_directory_that_already_holds_one(run_cli, workdir, uninterrupted):
    result = run_cli("train", workdir / "tiny.yaml", "--run-dir", uninterrupted)
    assert result.code == 2
    assert result.err == (f"error: {uninterrupted} already holds a run; continue it with "
                             f"`resnext-compile train --resume {uninterrupted}` or choose "
                             "another --run-dir\n")


def test_extending_a_finished_run_says_how_the_schedule_moves(run_cli, uninterrupted,
                                                              tmp_path) -> None:
    """Issue 22, item 5: `--resume RUN --epochs N` on a finished run extends it with a schedule
    recomputed for N epochs; the rate's jump is printed, never silent."""
    import shutil

    run = tmp_path / "extended"
    shutil.copytree(uninterrupted, run)
    result = run_cli("train", "--resume", run, "--epochs", "3", "--threads", "1")
    assert result.code == 0, result
    line = next(text for text in result.out.splitlines() if text.startswith("extending"))
    assert line.startswith("extending a run of 2 epochs to 3: the cosine schedule is "
                           "recomputed for 3 epochs (lr 0.025 at epoch 2, 0.0125 at epoch 3)")
    assert "not bitwise a 3-epoch run" in line
