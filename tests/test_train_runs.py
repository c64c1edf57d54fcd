"""End-to-end runs on CIFAR batches and image folders, AMP/channels_last, and progress output."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from test_train_data import small_spec, write_cifar10, write_folder


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_cifar_run_with_bf16_autocast_and_channels_last(run_cli, tmp_path):
    write_cifar10(tmp_path / "cifar", per_batch=8)  # 40 train / 8 test images
    run = tmp_path / "run"
    result = run_cli("train", small_spec(tmp_path), "--dataset", "cifar10", "--data",
                     tmp_path / "cifar", "--batch-size", "8", "--epochs", "2", "--amp",
                     "--channels-last", "--label-smoothing", "0.1", "--run-dir", run)
    assert result.code == 0, result.err
    assert "device: cpu (1 thread), bf16 autocast, channels_last" in result.out
    assert "optimizer: SGD, momentum 0.9, Nesterov, weight decay 0.0001, label smoothing 0.1" \
        in result.out
    assert "schedule: step x0.1 at epochs 1, 2, 2 epochs x 5 steps" in result.out
    history = rows(run)
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[1]["lr"] == pytest.approx(history[0]["lr"] / 10)  # CIFAR: x0.1 at 50%
    train = json.loads((run / "train.json").read_text())
    assert (train["amp_dtype"], train["channels_last"], train["augment"]) == ("bf16", True,
                                                                               "auto")


def test_image_folder_run_decodes_in_loader_workers(run_cli, tmp_path):
    write_folder(tmp_path / "images", per_class=4)
    run = tmp_path / "run"
    result = run_cli("train", small_spec(tmp_path, classes=2), "--dataset", "imagefolder",
                     "--data", tmp_path / "images", "--batch-size", "4", "--epochs", "1",
                     "--workers", "2", "--run-dir", run)
    assert result.code == 0, result.err
    assert "data: imagefolder " in result.out and "8 train / 8 val images, 2 classes" in result.out
    (row,) = rows(run)
    assert row["train_top5_error"] == 0.0  # two classes: the top-5 always holds the label


def test_resolved_spec_in_the_run_directory_records_the_flags(run_cli, tmp_path):
    from resnext_compiler.spec import load_spec

    run = tmp_path / "run"
    spec = small_spec(tmp_path, channels=1, size=8)
    result = run_cli("train", spec, "--dataset", "digits", "--epochs", "1", "--batch-size",
                     "256", "--run-dir", run)
    assert result.code == 0, result.err
    saved = load_spec(run / "spec.yaml")
    assert (saved.train.dataset, saved.train.epochs, saved.train.batch_size) == ("digits", 1, 256)
    assert saved.train.lr == 0.1  # the spec's 256 -> 0.1 reference, unchanged at batch 256


def test_progress_draws_a_bar_on_a_terminal():
    from resnext_compiler.runtimes.train.progress import Progress

    stream = io.StringIO()
    now = [0.0]
    progress = Progress(stream=stream, tty=True, clock=lambda: now[0])
    progress.start_epoch(1, 3, steps=4, images_per_step=32)
    for step in range(1, 5):
        now[0] += 1.0
        progress.step(1, step, loss=1.5, top1_error=40.0, lr=0.1)
    progress.end_epoch({"epoch": 1, "train_loss": 1.5, "train_top1_error": 40.0,
                        "val_top1_error": 35.0, "val_top5_error": 5.0, "lr": 0.1,
                        "images_per_s": 123.0}, epochs=3)
    text = stream.getvalue()
    assert "epoch 1/3: 100%" in text and "4/4" in text and "loss=1.500" in text
    # one second a step at 32 images a step; after step 4 of 4, two epochs of 4 s remain
    assert "32 images/s, run ETA 0:08" in text
    assert text.endswith("epoch 1/3: train loss 1.5000, train top-1 error 40.00%, val top-1 "
                         "error 35.00%, top-5 5.00%, lr 0.1, 123 images/s\n")


def test_progress_prints_plain_quarter_lines_without_a_terminal():
    from resnext_compiler.runtimes.train.progress import Progress

    stream = io.StringIO()
    now = [0.0]
    progress = Progress(stream=stream, tty=False, clock=lambda: now[0])
    progress.start_epoch(2, 3, steps=8, images_per_step=64)
    for step in range(1, 9):
        now[0] += 2.0  # two seconds a step
        progress.step(2, step, loss=0.5, top1_error=10.0, lr=0.05)
    assert stream.getvalue().splitlines() == [
        f"  epoch 2 step {s}/8: loss 0.5000, top-1 error 10.00%, lr 0.05, 32 images/s, "
        f"run ETA {eta}" for s, eta in ((2, "0:28"), (4, "0:24"), (6, "0:20"))]
