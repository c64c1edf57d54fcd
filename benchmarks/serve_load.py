"""Load test of `resnext-compile serve` on loopback, bounded in time (issue 7's benchmark).

Starts the server as a subprocess on 127.0.0.1, drives it with tritonclient's asyncio HTTP
client (binary tensors, one image per request) at 1, 8 and 32 concurrent clients, and reports
throughput and p50/p99 latency per level. Then, with the server stopped, it calls onnxruntime
in-process at the mean batch size the server formed at each level (read from /metrics) and
reports the ratio server / in-process throughput (target >= 0.8 at 32 clients), and the HTTP
overhead at batch 1 (server p50 at one client minus in-process p50 at batch 1).

    .venv/bin/python benchmarks/serve_load.py [--spec specs/resnext50_32x4d.yaml]
        [--onnx model.onnx] [--duration 20] [--levels 1,8,32] [--max-batch 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def compile_onnx(spec: Path, output: Path) -> Path:
    subprocess.run([sys.executable, "-m", "resnext_compiler.cli", str(spec), "--backend", "onnx",
                    "-o", str(output)], check=True, stdout=subprocess.DEVNULL)
    return output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: Path, port: int, max_batch: int, max_delay_ms: float) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "resnext_compiler.cli", "serve", str(model), "--port", str(port),
         "--max-batch", str(max_batch), "--max-delay-ms", str(max_delay_ms), "--device", "cpu",
         "--max-queue", "1024", "--log-level", "warning"])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1)
            return process
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit("server did not become ready")


def batch_counts(port: int) -> dict[int, float]:
    """onnxruntime calls so far by exact batch size, from the server's metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    counts: dict[int, float] = {}
    for rows, value in re.findall(r'^resnext_serve_batches_total\{[^}]*rows="(\d+)"[^}]*\} (\S+)$',
                                  text, re.MULTILINE):
        counts[int(rows)] = counts.get(int(rows), 0.0) + float(value)
    return counts


async def drive(port: int, model: str, shape: list[int], clients: int, duration: float,
                min_requests: int) -> tuple[list[float], float]:
    """Latencies of the requests completed by `clients` closed-loop clients, and the wall time."""
    import tritonclient.http.aio as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{port}", conn_limit=clients + 4)
    latencies: list[float] = []
    started = time.perf_counter()

    async def worker(seed: int) -> None:
        inputs = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
        tensor = triton.InferInput("input", shape, "FP32")
        tensor.set_data_from_numpy(inputs)
        while time.perf_counter() - started < duration or len(latencies) < min_requests:
            sent = time.perf_counter()
            await client.infer(model, [tensor])
            latencies.append(time.perf_counter() - sent)

    try:
        await asyncio.gather(*(worker(seed) for seed in range(clients)))
    finally:
        await client.close()
    return latencies, time.perf_counter() - started


class InProcess:
    """Median seconds per onnxruntime call by batch size, measured once per anchor size."""

    def __init__(self, model: Path, shape: list[int], min_seconds: float, max_batch: int):
        from resnext_compiler.runtimes.serve.model import LoadedModel
        from resnext_compiler.runtimes.serve.repository import ModelSource

        # the server's own session class: same providers and session options
        self.model = LoadedModel(ModelSource("reference", "1", model), "cpu", max_batch)
        self.shape, self.min_seconds = shape, min_seconds
        self.measured: dict[int, list[float]] = {}

    def times(self, batch: int) -> list[float]:
        if batch not in self.measured:
            inputs = np.random.default_rng(0).normal(size=[batch, *self.shape[1:]]).astype(
                np.float32)
            self.model.run(inputs)
            times: list[float] = []
            started = time.perf_counter()
            while time.perf_counter() - started < self.min_seconds or len(times) < 2:
                sent = time.perf_counter()
                self.model.run(inputs)
                times.append(time.perf_counter() - sent)
            self.measured[batch] = times
        return self.measured[batch]

    def seconds(self, batch: int) -> float:
        """Time of one call at `batch`, interpolated between power-of-two anchors."""
        if batch & (batch - 1) == 0:
            return float(np.median(self.times(batch)))
        low = 1 << (batch.bit_length() - 1)
        high = low * 2
        weight = (batch - low) / (high - low)
        return (1 - weight) * self.seconds(low) + weight * self.seconds(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=REPO / "specs" / "resnext50_32x4d.yaml")
    parser.add_argument("--onnx", type=Path, help="serve this model instead of compiling --spec")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per level")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]

    with tempfile.TemporaryDirectory() as scratch:
        model = args.onnx or compile_onnx(args.spec, Path(scratch) / "model.onnx")
        import onnxruntime as ort

        meta = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        name = meta.get_modelmeta().custom_metadata_map.get("spec_name", model.stem)
        shape = [1, *meta.get_inputs()[0].shape[1:]]
        del meta
        port = free_port()
        server = start_server(model, port, args.max_batch, args.max_delay_ms)
        # measured right after each level, while the idle server leaves the cores alone, so
        # both sides see about the same background load
        reference = InProcess(model, shape, min(args.duration, 5), args.max_batch)
        rows: list[dict] = []
        try:
            for clients in levels:
                asyncio.run(drive(port, name, shape, clients, 0.0, clients))  # warm up
                before = batch_counts(port)
                latencies, wall = asyncio.run(drive(port, name, shape, clients, args.duration,
                                                    2 * clients))
                after = batch_counts(port)
                formed = {size: after[size] - before.get(size, 0.0) for size in after
                          if after[size] > before.get(size, 0.0)}
                batches, formed_rows = sum(formed.values()), sum(s * n for s, n in formed.items())
                rows.append({"clients": clients, "requests": len(latencies),
                             "throughput": len(latencies) / wall,
                             "p50": np.percentile(latencies, 50) * 1000,
                             "p99": np.percentile(latencies, 99) * 1000,
                             "formed": formed, "mean_batch": formed_rows / max(batches, 1.0)})
                busy = sum(count * reference.seconds(size) for size, count in formed.items())
                rows[-1]["reference"] = formed_rows / busy
                rows[-1]["ratio"] = rows[-1]["throughput"] / rows[-1]["reference"]
                print(f"clients={clients}: {rows[-1]}", file=sys.stderr, flush=True)
        finally:
            server.terminate()
            server.wait(60)
        single = float(np.median(reference.times(1)))
        overhead = rows[0]["p50"] - single * 1000 if levels[0] == 1 else None

    print(f"\nModel {name} {shape[1:]}, onnxruntime {ort.__version__} CPU, "
          f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), loopback, "
          f"max batch {args.max_batch}, max delay {args.max_delay_ms} ms, {args.duration:g} s per "
          "level\n")
    print("| clients | requests | server img/s | p50 ms | p99 ms | mean batch formed "
          "| in-process img/s, same batches | ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['clients']} | {row['requests']} | {row['throughput']:.2f} | "
              f"{row['p50']:.0f} | {row['p99']:.0f} | {row['mean_batch']:.1f} | "
              f"{row['reference']:.2f} | {row['ratio']:.2f} |")
    if overhead is not None:
        print(f"\nHTTP overhead at batch 1: {overhead:.1f} ms (server p50 {rows[0]['p50']:.1f} ms "
              f"vs in-process p50 {single * 1000:.1f} ms)")
    print("\nBatch sizes formed: " + "; ".join(
        f"{row['clients']} clients: " + ", ".join(f"{size}x{count:.0f}" for size, count in
                                                  sorted(row["formed"].items()))
        for row in rows))


if __name__ == "__main__":
    main()
