"""Serving what the compiler emits: a tiny real spec through `--backend onnx` and `triton`."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from PIL import Image
from test_serve_helpers import running_server

from resnext_compiler.runtimes.serve.config import ServeConfig
from resnext_compiler.runtimes.serve.server import load_models

TINY_SPEC = """\
spec_version: 1
name: tiny_cifar
input: {channels: 3, height: 32, width: 32}
stem: cifar
block: {type: bottleneck, cardinality: 2, base_width: 4, form: C}
stages:
  - {depth: 1, width: 16, stride: 1}
  - {depth: 1, width: 32, stride: 2}
head: {num_classes: 10}
"""


def serve_and_check(path: Path, model_dir: Path | None = None) -> None:
    models, _ = load_models(model_dir or path, ServeConfig(device="cpu", max_batch=8))
    assert [m.name for m in models] == ["tiny_cifar"]
    inputs = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": inputs})[0]
    with running_server(models) as server:
        with triton.InferenceServerClient(f"127.0.0.1:{server.port}") as client:
            assert client.get_model_metadata("tiny_cifar")["inputs"][0]["shape"] == [-1, 3, 32,
                                                                                     32]
            tensor = triton.InferInput("input", [4, 3, 32, 32], "FP32")
            tensor.set_data_from_numpy(inputs)
            logits = client.infer("tiny_cifar", [tensor]).as_numpy("logits")
        buffer = io.BytesIO()
        Image.new("RGB", (40, 36), (120, 30, 200)).save(buffer, format="PNG")
        classified = httpx.post(f"{server.url}/v1/classify?top_k=10",
                                files={"file": ("x.png", buffer.getvalue(), "image/png")})
    assert logits.shape == (4, 10)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    assert classified.status_code == 200
    assert sorted(p["index"] for p in classified.json()["predictions"]) == list(range(10))


def test_serves_a_spec_compiled_with_the_onnx_backend(tmp_path: Path, run_cli) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SPEC)
    result = run_cli(spec, "--backend", "onnx", "-o", tmp_path / "tiny.onnx")
    assert result.code == 0, result
    serve_and_check(tmp_path / "tiny.onnx")


def test_serves_a_triton_repository_written_by_the_triton_backend(tmp_path: Path,
                                                                   run_cli) -> None:
    pytest.importorskip("resnext_compiler.backends.triton")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SPEC)
    result = run_cli(spec, "--backend", "triton", "-o", tmp_path / "repo")
    assert result.code == 0, result
    model_path = next((tmp_path / "repo").glob("*/*/model.onnx"))
    serve_and_check(model_path, tmp_path / "repo")
