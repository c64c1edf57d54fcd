"""A NaN/inf loss stops training with a message and leaves the last good checkpoint alone."""

from __future__ import annotations

import torch
from conftest import tiny_digits_spec

TINY = tiny_digits_spec("{dataset: digits, epochs: 1, batch_size: 32, lr: 0.05, schedule: cosine}")


def test_divergence_before_the_first_checkpoint_says_nothing_was_saved(run_cli, tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    result = run_cli("train", spec, "--lr", "1e30", "--run-dir", tmp_path / "run")
    assert result.code == 1
    assert result.err == (
        # Cosine from 1e30: step 1 blows the weights up, step 2's loss is NaN.
        "error: loss became NaN/inf at epoch 1, step 2 (lr 9.988e+29); training stopped "
        "before any checkpoint was written. Start again with a lower --lr (e.g. 0.05) or "
        "--warmup-epochs\n")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_divergence_keeps_the_last_good_checkpoint_unchanged(run_cli, tmp_path, monkeypatch):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    run = tmp_path / "run"
    assert run_cli("train", spec, "--run-dir", run).code == 0
    checkpoint = run / "checkpoints" / "last.pt"
    before = checkpoint.read_bytes()

    real = torch.nn.functional.cross_entropy

    def poisoned(logits, target, **kwargs):  # a batch whose loss overflows
        return real(logits, target, **kwargs) * float("nan")

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", poisoned)
    result = run_cli("train", "--resume", run, "--epochs", "2")
    assert result.code == 1
    assert result.err == (
        "error: loss became NaN/inf at epoch 2, step 1 (lr 0.025); training stopped and the "
        f"last good checkpoint {checkpoint} (after epoch 1) is unchanged. Continue from it with "
        f"a lower rate: resnext-compile train --resume {run} --lr 0.005\n")
    assert checkpoint.read_bytes() == before
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
