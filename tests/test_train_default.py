"""`resnext-compile train` with no arguments: real digits, stated accuracy, exportable run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

STATED_TOP1_ERROR = 3.0  # default_spec.yaml's reference and docs/training.md


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[Path, str]:
    cwd = tmp_path_factory.mktemp("default")
    result = subprocess.run([sys.executable, "-m", "resnext_compiler.cli", "train"], cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"^run directory: (runs/resnext11_digits_4x16d-\d{8}-\d{6})$",
                      result.stdout, re.M)
    assert match, result.stdout
    return cwd / match.group(1), result.stdout


@pytest.mark.slow
def test_no_argument_run_reaches_the_stated_accuracy(default_run):
    run, stdout = default_run
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == list(range(1, 11))
    assert rows[-1]["val_top1_error"] <= STATED_TOP1_ERROR
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] / 10
    assert "data: digits (embedded UCI handwritten digits): 1442 train / 355 val images" in stdout
    assert "this spec's reference: top-1 error <= 3.0%" in stdout
    assert "lr 0.1 = 0.1 x 64/64 (linear scaling from the spec's batch 64 -> lr 0.1)" in stdout


@pytest.mark.slow
def test_no_argument_run_prints_plain_progress_without_a_terminal(default_run):
    _, stdout = default_run
    assert "  epoch 1 step 5/22: loss " in stdout
    assert re.search(r"^epoch 10/10: train loss [\d.]+, train top-1 error [\d.]+%, val top-1 "
                     r"error [\d.]+%, top-5 [\d.]+%, lr [\de.+-]+, \d+ images/s$", stdout, re.M)


@pytest.mark.slow
def test_printed_export_command_writes_an_onnx_model_that_agrees(default_run):
    run, stdout = default_run
    command = stdout.split("export it with:\n  resnext-compile ", 1)[1].splitlines()[0].split()
    relative = run.relative_to(run.parent.parent)
    # The model lands in the run directory, beside the weights it was made from.
    assert command == [f"{relative}/spec.yaml", "--weights", f"{relative}/model.safetensors",
                       "-o", f"{relative}/model.onnx"]
    result = subprocess.run([sys.executable, "-m", "resnext_compiler.cli", *command],
                            cwd=run.parent.parent, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    onnx_path = run / "model.onnx"

    import onnxruntime
    import torch

    from resnext_compiler.runtimes.train.datasets import open_dataset
    from resnext_compiler.spec import load_spec

    data = open_dataset(load_spec(run / "spec.yaml"), "digits", None)
    images, labels = data.val.load(torch.arange(len(data.val)), epoch=0)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    error = 100 * float(np.mean(logits.argmax(1) != labels.numpy()))
    final = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert error == pytest.approx(final["val_top1_error"], abs=100 / len(labels))


@pytest.mark.slow
def test_evaluate_reproduces_the_runs_validation_error(default_run, run_cli):
    run, _ = default_run
    final = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    for weights in (run / "model.safetensors", run / "checkpoints" / "last.pt"):
        result = run_cli("evaluate", run / "spec.yaml", "--weights", weights, "--json")
        assert result.code == 0, result.err
        measured = json.loads(result.out)
        assert measured["images"] == 355
        assert measured["top1_error"] == pytest.approx(final["val_top1_error"], abs=1e-9)
        assert measured["top5_error"] == pytest.approx(final["val_top5_error"], abs=1e-9)
