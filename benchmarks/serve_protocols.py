"""gRPC vs HTTP binary vs HTTP JSON against one `resnext-compile serve --grpc-port` (issue 14).

Starts the server as a subprocess on 127.0.0.1 (HTTP and gRPC on one service, one batching
queue), then for each protocol drives it with tritonclient's asyncio client at 1 and 32
closed-loop clients (one image per request) and reports requests/s and p50/p99 latency:

- gRPC: `tritonclient.grpc.aio`, `raw_input_contents` / `raw_output_contents`;
- HTTP binary: `tritonclient.http.aio` with the binary tensor data extension;
- HTTP JSON: the same client with `binary_data=False` for the input and the output.

Models: a CIFAR-size network (32x32 input; a small ResNeXt written by the script, where the
protocol's cost is visible) and resnext50_32x4d at 224 (where the model's is).

    .venv/bin/python benchmarks/serve_protocols.py [--duration 10] [--levels 1,32]
        [--models cifar,resnext50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import compile_onnx, free_port  # noqa: E402

CIFAR_SPEC = """\
spec_version: 1
name: resnext_cifar_small
description: a small CIFAR-size ResNeXt (32x32 input) for protocol overhead
input: {channels: 3, height: 32, width: 32}
stem: cifar
block: {type: bottleneck, cardinality: 4, base_width: 8}
stages: [{depth: 1, width: 16}, {depth: 1, width: 32, stride: 2}, {depth: 1, width: 64, stride: 2}]
head: {num_classes: 10}
"""
PROTOCOLS = ("grpc", "http-binary", "http-json")


def start_server(model: Path, port: int, grpc_port: int) -> subprocess.Popen:
    import tritonclient.grpc as grpcclient

    process = subprocess.Popen(
        [sys.executable, "-m", "resnext_compiler.cli", "serve", str(model), "--port", str(port),
         "--grpc-port", str(grpc_port), "--device", "cpu", "--max-queue", "1024",
         "--log-level", "warning"])
    deadline = time.monotonic() + 300
    with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"server exited with {process.returncode}")
            try:
                if client.is_server_ready():
                    return process
            except Exception:  # not listening yet
                time.sleep(0.2)
    process.terminate()
    raise SystemExit("server did not become ready")


async def drive(protocol: str, port: int, grpc_port: int, model: str, shape: list[int],
                clients: int, duration: float, min_requests: int
                ) -> tuple[list[float], list[str], float]:
    """Latencies of the requests `clients` closed-loop clients completed, the errors (by type),
    and the wall time."""
    if protocol == "grpc":
        import tritonclient.grpc.aio as triton

        client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        outputs = None
    else:
        import tritonclient.http.aio as triton

        client = triton.InferenceServerClient(f"127.0.0.1:{port}", conn_limit=clients + 4)
        binary = protocol == "http-binary"
        outputs = [triton.InferRequestedOutput("logits", binary_data=binary)]
    latencies: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()

    async def worker(seed: int) -> None:
        inputs = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
        tensor = triton.InferInput("input", shape, "FP32")
        if protocol == "grpc":
            tensor.set_data_from_numpy(inputs)
        else:
            tensor.set_data_from_numpy(inputs, binary_data=protocol == "http-binary")
        while time.perf_counter() - started < duration or len(latencies) < min_requests:
            sent = time.perf_counter()
            try:
                result = await client.infer(model, [tensor], outputs=outputs)
            except Exception as exc:  # counted and reported; the client reconnects
                errors.append(type(exc).__name__)
                if len(errors) > 100:
                    raise
                continue
            result.as_numpy("logits")
            latencies.append(time.perf_counter() - sent)

    try:
        await asyncio.gather(*(worker(seed) for seed in range(clients)))
    finally:
        await client.close()
    return latencies, errors, time.perf_counter() - started


def run_model(label: str, model: Path, levels: list[int], duration: float,
              protocols: list[str]) -> list[dict]:
    import onnxruntime as ort

    meta = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = meta.get_modelmeta().custom_metadata_map.get("spec_name", model.stem)
    shape = [1, *meta.get_inputs()[0].shape[1:]]
    del meta
    port, grpc_port = free_port(), free_port()
    server = start_server(model, port, grpc_port)
    rows = []
    try:
        for clients in levels:
            for protocol in protocols:
                asyncio.run(drive(protocol, port, grpc_port, name, shape, clients, 0.0,
                                  clients))  # warm up
                latencies, errors, wall = asyncio.run(drive(
                    protocol, port, grpc_port, name, shape, clients, duration, 2 * clients))
                rows.append({"model": label, "protocol": protocol, "clients": clients,
                             "requests": len(latencies), "rps": len(latencies) / wall,
                             "errors": ", ".join(f"{errors.count(e)} {e}"
                                                 for e in sorted(set(errors))) or "0",
                             "p50": np.percentile(latencies, 50) * 1000,
                             "p99": np.percentile(latencies, 99) * 1000})
                print(rows[-1], file=sys.stderr, flush=True)
    finally:
        server.terminate()
        server.wait(60)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--levels", default="1,32")
    parser.add_argument("--models", default="cifar,resnext50")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as scratch:
        for label in args.models.split(","):
            if label == "cifar":
                spec = Path(scratch) / "cifar.yaml"
                spec.write_text(CIFAR_SPEC)
                label = "CIFAR-size small ResNeXt, 3x32x32"
            elif label == "resnext50":
                spec = REPO / "specs" / "resnext50_32x4d.yaml"
                label = "resnext50_32x4d, 3x224x224"
            else:
                raise SystemExit(f"unknown model {label!r} (cifar, resnext50)")
            model = compile_onnx(spec, Path(scratch) / f"{spec.stem}.onnx")
            rows += run_model(label, model, levels, args.duration, args.protocols.split(","))
    import onnxruntime as ort

    print(f"\nonnxruntime {ort.__version__} CPU, {os.cpu_count()} cores "
          f"({platform.processor() or platform.machine()}), loopback, server defaults (max batch "
          f"32, max delay 5 ms), {args.duration:g} s per row, fresh weights\n")
    print("| model | protocol | clients | requests | req/s | p50 ms | p99 ms | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for row in rows:
        print(f"| {row['model']} | {row['protocol']} | {row['clients']} | {row['requests']} | "
              f"{row['rps']:.1f} | {row['p50']:.1f} | {row['p99']:.1f} | {row['errors']} |")


if __name__ == "__main__":
    main()
