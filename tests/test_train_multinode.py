"""Two "nodes" on one machine: two `train --nnodes 2 --node-rank 0/1 --rdzv-endpoint` commands
meet through torchrun's c10d rendezvous (gloo) and train like `--nproc 2` on one node; killed
mid-run, `--resume` on both finishes equal to an uninterrupted run."""

from __future__ import annotations

import contextlib
import json
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
from test_serve_cli import free_port

TINY = tiny_digits_spec(
    "{dataset: digits, epochs: 3, batch_size: 64, lr: 0.1, schedule: cosine, "
    "weight_decay: 5.0e-4}"
)
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def train_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "resnext_compiler.cli", "train", *map(str, args)]


def start_nodes(*args: object) -> list[subprocess.Popen]:
    """Both nodes' commands (each: our launcher -> torchrun -> its worker)."""
    endpoint = f"127.0.0.1:{free_port()}"
    return [subprocess.Popen(train_command(*args, "--nnodes", 2, "--node-rank", rank,
                                           "--rdzv-endpoint", endpoint),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for rank in (0, 1)]


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (torchrun starts its workers in sessions of their own)."""
    tree, index = [pid], 0
    while index < len(tree):
        for task in Path(f"/proc/{tree[index]}/task").glob("*"):
            with contextlib.suppress(OSError):
                tree += [int(child) for child in (task / "children").read_text().split()]
        index += 1
    return tree


def kill_hard(nodes: list[subprocess.Popen]) -> None:
    """SIGKILL every process of both nodes at once, as a power cut would."""
    pids = [pid for node in nodes for pid in process_tree(node.pid)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for node in nodes:
        node.communicate()


def finish(nodes: list[subprocess.Popen]) -> list[str]:
    outputs = []
    for node in nodes:
        output, _ = node.communicate(timeout=300)
        assert node.returncode == 0, output[-6000:]
        outputs.append(output)
    return outputs


def epochs_done(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("multinode")
    spec = root / "tiny.yaml"
    spec.write_text(TINY)
    # one run at a time: torchrun picks its workers' ports as free-then-released, which
    # concurrent runs on one machine could race for
    finish([subprocess.Popen(train_command(spec, "--nproc", 2, "--run-dir", root / "one"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)])
    outputs = finish(start_nodes(spec, "--run-dir", root / "two"))
    killed = root / "killed"
    nodes = start_nodes(spec, "--run-dir", killed)
    deadline = time.monotonic() + 300
    while epochs_done(killed) < 1:  # epoch 1 saved: checkpoint, weights, then metrics
        assert all(node.poll() is None for node in nodes), nodes[0].communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.02)
    kill_hard(nodes)
    interrupted_at = epochs_done(killed)
    endpoint = f"127.0.0.1:{free_port()}"
    resumed = [subprocess.Popen(train_command("--resume", killed, "--nnodes", 2, "--node-rank",
                                              rank, "--rdzv-endpoint", endpoint),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for rank in (0, 1)]
    resumed_outputs = finish(resumed)
    return {"one": root / "one", "two": root / "two", "killed": killed,
            "outputs": outputs, "interrupted_at": interrupted_at,
            "resumed_outputs": resumed_outputs}


def trainable(run: Path) -> dict[str, torch.Tensor]:
    weights = load_file(run / "model.safetensors")
    return {key: value for key, value in weights.items() if not key.endswith(BUFFERS)}


def assert_same_weights(left: Path, right: Path) -> None:
    a, b = trainable(left), trainable(right)
    assert sorted(a) == sorted(b) and len(a) == 29
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)


@pytest.mark.slow
def test_two_nodes_train_like_two_processes_on_one_node(runs: dict) -> None:
    assert_same_weights(runs["two"], runs["one"])
    two = [json.loads(line) for line in (runs["two"] / "metrics.jsonl").read_text().splitlines()]
    one = [json.loads(line) for line in (runs["one"] / "metrics.jsonl").read_text().splitlines()]
    assert len(two) == len(one) == 3
    for a, b in zip(two, one, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_top1_error"] == pytest.approx(b["val_top1_error"], abs=1e-6)


@pytest.mark.slow
def test_only_global_rank_zero_writes_and_logs(runs: dict) -> None:
    files = sorted(str(p.relative_to(runs["two"])) for p in runs["two"].rglob("*")
                   if p.is_file())
    assert files == ["checkpoints/last.pt", "labels.txt", "metrics.csv", "metrics.jsonl",
                     "model.safetensors", "spec.yaml", "train.json"]
    logs = "".join(runs["outputs"])
    assert logs.count("epoch 3/3: train loss") == 1  # one rank (of two nodes) reports
    assert "batch: global 64 = 2 process(es) x 1 accumulation step(s) x 32 images" in logs
    config = json.loads((runs["two"] / "train.json").read_text())
    assert config["nnodes"] == 2 and config["nproc"] == 1


@pytest.mark.slow
def test_killed_nodes_resume_to_the_uninterrupted_result(runs: dict) -> None:
    assert 1 <= runs["interrupted_at"] < 3
    assert any("resuming" in output for output in runs["resumed_outputs"])
    assert epochs_done(runs["killed"]) == 3
    assert_same_weights(runs["killed"], runs["two"])


def test_multi_node_flags_are_checked(run_cli, write_spec) -> None:
    spec = write_spec(TINY)
    assert "needs --rdzv-endpoint" in run_cli("train", spec, "--nnodes", "2", "--run-dir",
                                              "r").err
    assert "HOST:PORT" in run_cli("train", spec, "--nnodes", "2", "--rdzv-endpoint", "node0",
                                  "--run-dir", "r").err
    assert "--node-rank must be between 0 and 1" in run_cli(
        "train", spec, "--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1",
        "--run-dir", "r").err
    assert "needs --run-dir" in run_cli("train", spec, "--nnodes", "2", "--rdzv-endpoint",
                                        "h:1").err
    result = run_cli("train", spec, "--node-rank", "1")
    assert result.code == 2 and "multi-node runs" in result.err


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7, 16])
def test_evaluation_shards_count_every_image_exactly_once(world_size: int) -> None:
    from resnext_compiler.runtimes.train.sampler import shard

    images = 355  # the digits validation split: divisible by none of these but 1
    taken = torch.cat([shard(images, world_size, rank) for rank in range(world_size)])
    assert sorted(taken.tolist()) == list(range(images))


def test_rendezvous_id_does_not_depend_on_how_the_run_dir_is_spelled() -> None:
    from resnext_compiler.commands.train import _rendezvous

    ids = {_rendezvous(2, rank, "127.0.0.1:29400", Path(run)).run_id
           for rank, run in ((0, "/mnt/a/runs/r"), (1, "/shared/runs/r"), (1, "runs/r"))}
    assert len(ids) == 1


@pytest.mark.slow
def test_nodes_that_disagree_stop_within_seconds(tmp_path: Path) -> None:
    """Two nodes that meet but resolved different runs (here: epochs, and the run folder's
    name) both stop with the differences named, instead of training apart or hanging."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    endpoint = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    nodes = [subprocess.Popen(train_command(spec, "--run-dir", tmp_path / f"run{rank}",
                                            "--epochs", 2 + rank, "--nnodes", 2,
                                            "--node-rank", rank, "--rdzv-endpoint", endpoint),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=120)[0] for node in nodes]
    assert time.monotonic() - started < 90  # the rendezvous timeout would be 600 s
    assert all(node.returncode != 0 for node in nodes), outputs
    joined = "".join(outputs)
    assert "resolved different settings or spec than rank 0" in joined, joined[-3000:]
    # the c10d rendezvous numbers nodes in the order they arrive, not by --node-rank
    assert ("epochs (2 on rank 0, 3 on rank 1)" in joined
            or "epochs (3 on rank 0, 2 on rank 1)" in joined), joined[-3000:]
    assert ("run (run0 on rank 0, run1 on rank 1)" in joined
            or "run (run1 on rank 0, run0 on rank 1)" in joined), joined[-3000:]
    assert "Traceback" not in joined
    assert not (tmp_path / "run0").exists() and not (tmp_path / "run1").exists()
