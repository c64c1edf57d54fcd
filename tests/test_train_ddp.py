"""Two CPU processes (torchrun + gloo DDP) train like one process with the same global batch.

BatchNorm normalises each micro-batch (as in the seed's multi-GPU DataParallelTable), so the
matching single-process run accumulates two micro-batches of the same samples per step.
Trainable weights and the train metrics agree to float tolerance; BN running statistics are
rank 0's and are not compared.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_digits_spec
from safetensors.torch import load_file

TINY = tiny_digits_spec(
    "{dataset: digits, epochs: 1, batch_size: 32, lr: 0.05, schedule: cosine, "
    "weight_decay: 5.0e-4}"
)
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def train(*args: object) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "resnext_compiler.cli", "train",
                             *map(str, args)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("ddp")
    spec = root / "tiny.yaml"
    spec.write_text(TINY)
    ddp = train(spec, "--nproc", "2", "--run-dir", root / "ddp")
    train(spec, "--accum-steps", "2", "--run-dir", root / "single", "--threads", "1")
    return root / "ddp", root / "single", ddp.stdout


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(runs):
    ddp_dir, single_dir, _ = runs
    ddp = load_file(ddp_dir / "model.safetensors")
    single = load_file(single_dir / "model.safetensors")
    assert sorted(ddp) == sorted(single)
    trainable = [k for k in ddp if not k.endswith(BUFFERS)]
    assert len(trainable) == 29
    for key in trainable:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-5, msg=key)
    initial = load_initial(single_dir)
    moved = max(float((single[k] - initial[k]).abs().max()) for k in trainable)
    assert moved > 1e-2  # the comparison is between trained weights, not two initialisations


def load_initial(run: Path) -> dict[str, torch.Tensor]:
    from resnext_compiler.backends.torch_module import build_module
    from resnext_compiler.pipeline import compile_spec
    from resnext_compiler.spec import load_spec

    return build_module(compile_spec(load_spec(run / "spec.yaml")), seed=0).state_dict()


def test_ddp_metrics_are_reduced_over_both_ranks(runs):
    ddp_dir, single_dir, _ = runs
    import json

    ddp = json.loads((ddp_dir / "metrics.jsonl").read_text())
    single = json.loads((single_dir / "metrics.jsonl").read_text())
    assert ddp["train_loss"] == pytest.approx(single["train_loss"], rel=1e-6)
    assert ddp["train_top1_error"] == pytest.approx(single["train_top1_error"])
    assert ddp["images_per_s"] > 0


def test_only_rank_zero_writes_files_and_prints(runs):
    ddp_dir, _, stdout = runs
    files = sorted(str(p.relative_to(ddp_dir)) for p in ddp_dir.rglob("*") if p.is_file())
    assert files == ["checkpoints/last.pt", "labels.txt", "metrics.csv", "metrics.jsonl",
                     "model.safetensors", "spec.yaml", "train.json"]
    assert len((ddp_dir / "metrics.jsonl").read_text().splitlines()) == 1
    assert stdout.count("epoch 1/1: train loss") == 1
    assert "batch: global 32 = 2 process(es) x 1 accumulation step(s) x 16 images" in stdout
