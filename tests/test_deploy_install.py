"""The deploy install: `pip install resnext-compile[cpu]` in a fresh venv has no torch and still
compiles, serves (/v1/classify) and evaluates; the torch extra's commands name the extra."""

from __future__ import annotations

import io
import os
import subprocess
import time
import venv
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import REPO
from PIL import Image
from test_serve_cli import free_port, stop_with_sigterm

from resnext_compiler.extras import TRAIN_EXTRA, from_import_error, missing_module_error

TINY_RGB = """\
spec_version: 1
name: tiny_rgb
input: {channels: 3, height: 32, width: 32}
stem: cifar
block: {type: bottleneck, cardinality: 2, base_width: 16}
stages: [{depth: 1, width: 8}, {depth: 1, width: 16, stride: 2}]
head: {num_classes: 3}
train: {dataset: imagefolder}
preprocess: {labels: [cat, dog, fox]}
"""


def test_a_missing_torch_names_the_train_extra_and_the_cpu_wheels() -> None:
    message = str(missing_module_error("torch", "train"))
    assert f"pip install 'resnext-compile[{TRAIN_EXTRA}]'" in message
    assert "--index-url https://download.pytorch.org/whl/cpu" in message
    assert str(from_import_error(ModuleNotFoundError("no torch", name="torch.nn"))).startswith(
        "this command needs torch"
    )
    assert from_import_error(ModuleNotFoundError("x", name="yaml")) is None


def write_class_folders(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("cat", "dog", "fox"):
        (root / name).mkdir(parents=True)
        for index in range(2):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}.png")
    return root


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_deploy_extra_alone_compiles_serves_and_evaluates_without_torch(tmp_path: Path) -> None:
    """Our package and its `cpu` extra from PyPI into an empty venv (no system packages)."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for name in ("PYTHONPATH", "VIRTUAL_ENV"):
        env.pop(name, None)
    install = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", f"{REPO}[cpu]"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if install.returncode != 0 and "NewConnectionError" in install.stderr + install.stdout:
        pytest.skip("PyPI is not reachable")
    assert install.returncode == 0, install.stderr[-3000:]

    def cli(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(bin_dir / "resnext-compile"), *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=timeout,
        )

    no_torch = subprocess.run(
        [str(bin_dir / "python"), "-c", "import torch"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr

    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_RGB)
    compiled = cli(spec, "-o", "tiny.onnx")
    assert compiled.returncode == 0, compiled.stderr
    for backend, target in (
        ("triton", "repo"),
        ("caffe", "caffe"),
        ("dot", "tiny.dot"),
        ("torch", "tiny.py"),
    ):
        result = cli(spec, "--backend", backend, "-o", target)
        assert result.returncode == 0, (backend, result.stderr)
    training = cli("train", spec)
    assert training.returncode == 2
    assert f"pip install 'resnext-compile[{TRAIN_EXTRA}]'" in training.stderr
    assert "Traceback" not in training.stderr

    port = free_port()
    server = subprocess.Popen(
        [
            str(bin_dir / "resnext-compile"),
            "serve",
            "tiny.onnx",
            "--port",
            str(port),
            "--threads",
            "1",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.communicate()[0]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/classify",
            files={"file": ("grey.png", png_bytes(), "image/png")},
            timeout=30,
        )
        stop_with_sigterm(server)
    finally:
        if server.poll() is None:
            server.kill()
    assert answer.status_code == 200, answer.text
    labels = [entry["label"] for entry in answer.json()["predictions"]]
    assert sorted(labels) == ["cat", "dog", "fox"]

    write_class_folders(tmp_path / "val")
    evaluated = cli("evaluate", "tiny.onnx", "--data", "val", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert '"images": 6' in evaluated.stdout
    site = subprocess.run(["du", "-sm", str(env_dir / "lib")], capture_output=True, text=True)
    print(f"deploy venv: {site.stdout.split()[0]} MB")  # README "Install" quotes this size
