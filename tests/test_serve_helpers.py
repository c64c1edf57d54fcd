"""Shared helpers for the serving tests (no tests here): tiny ONNX models and servers."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from resnext_compiler.runtimes.serve.config import ServeConfig
from resnext_compiler.runtimes.serve.model import LoadedModel
from resnext_compiler.runtimes.serve.repository import ModelSource
from resnext_compiler.runtimes.serve.server import BackgroundServer

NUM_CLASSES = 10


def write_tiny_onnx(path: Path, size: int = 32, num_classes: int = NUM_CLASSES, seed: int = 0,
                    batch: int | str = "N", spec_name: str = "tiny") -> Path:
    """conv3x3(3->8) -> relu -> global average pool -> flatten -> gemm, like our ONNX backend:
    input `input` [N, 3, size, size], output `logits` [N, num_classes], spec metadata."""
    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "conv.w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "conv.b"),
        numpy_helper.from_array(rng.normal(0, 1.0, (num_classes, 8)).astype(np.float32), "fc.w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (num_classes,)).astype(np.float32), "fc.b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv.w", "conv.b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, num_classes])],
        initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"spec_name": spec_name, "spec_hash": "0" * 16,
                                   "compiler_version": "test"})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def load_tiny(path: Path, max_batch: int = 32) -> LoadedModel:
    return LoadedModel(ModelSource("tiny", "1", path), "cpu", max_batch, intra_op_threads=1)


@contextlib.contextmanager
def running_server(models: list[LoadedModel], labels: dict | None = None,
                   **settings: object) -> Iterator[BackgroundServer]:
    """A real uvicorn server on 127.0.0.1:<free port> serving `models`."""
    config = ServeConfig(log_level="warning", **settings)  # type: ignore[arg-type]
    with BackgroundServer(models, config, labels) as server:
        yield server


def raw_http(port: int, request: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send raw bytes to the server; (status, whole response). For what clients refuse to send."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may answer and close before we finish
            sock.sendall(request)
        chunks = []
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
    response = b"".join(chunks)
    status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0
    return status, response


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False
