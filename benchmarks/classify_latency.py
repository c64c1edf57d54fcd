"""`POST /v1/classify` latency at a 224x224 model input, one client, on loopback.

Starts `resnext-compile serve` as a subprocess, posts the same photo-sized JPEG (640x480)
`--requests` times after a warm-up, and prints p50/p90 latency. The model is small on purpose
(a ResNeXt of two tiny stages at 224x224), so decoding, the evaluation transform and the HTTP
path dominate, which is what changes between server versions. `--pythonpath DIR` serves with
another checkout's package (DIR/resnext_compiler): both servers run at once and requests
alternate between them, so both see the same machine state (`--after DIR` loads the new
code the same way; an A/A run with two copies of one tree shows the noise floor).

    python benchmarks/classify_latency.py [--before DIR] [--after DIR] [--requests 500]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SPEC = """\
spec_version: 1
name: classify_bench
input: {channels: 3, height: 224, width: 224}
stem: imagenet
block: {type: bottleneck, cardinality: 4, base_width: 4}
stages: [{depth: 1, width: 16}, {depth: 1, width: 32}]
head: {num_classes: 1000}
"""


def photo(width: int = 640, height: int = 480) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    pixels = np.stack([x, y, 255 - x], -1) + rng.normal(0, 12, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def start_server(model: Path, pythonpath: str | None, port: int) -> subprocess.Popen:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    server = subprocess.Popen(
        [sys.executable, "-m", "resnext_compiler.cli", "serve", str(model), "--port", str(port),
         "--device", "cpu", "--threads", "1", "--log-level", "error"], env=env)
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1)
            return server
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise SystemExit("server did not start") from None
            time.sleep(0.2)


def classify_seconds(port: int, data: bytes) -> float:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/classify", data=data,
                                     headers={"content-type": "image/jpeg"})
    started = time.perf_counter()
    with urllib.request.urlopen(request) as response:
        response.read()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="PYTHONPATH holding the 'before' resnext_compiler")
    parser.add_argument("--after", help="PYTHONPATH for 'after' (default: the installed "
                        "package; give a copy too so both load the same way)")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--port", type=int, default=18931)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "bench.yaml"
        spec.write_text(SPEC)
        model = Path(tmp) / "bench.onnx"
        subprocess.run([sys.executable, "-m", "resnext_compiler.cli", str(spec), "-o",
                        str(model)], check=True, stdout=subprocess.DEVNULL)
        data = photo()
        names = (["before"] if args.before else []) + ["after"]
        paths = {"before": args.before, "after": args.after}
        ports = {name: args.port + i for i, name in enumerate(names)}
        servers = [start_server(model, paths[name], ports[name]) for name in names]
        try:
            # Requests alternate between the servers (order flipped every round), so both
            # see the same background load: a paired comparison on a shared machine.
            results: dict[str, list[float]] = {name: [] for name in names}
            for i in range(args.requests + 20):
                for name in names if i % 2 == 0 else names[::-1]:
                    seconds = classify_seconds(ports[name], data)
                    if i >= 20:  # warm-up
                        results[name].append(seconds)
        finally:
            for server in servers:
                server.terminate()
                server.wait(30)
        for name, times in results.items():
            ms = sorted(1000 * t for t in times)
            print(f"{name}: p50 {statistics.median(ms):.2f} ms, p90 "
                  f"{ms[int(0.9 * len(ms))]:.2f} ms over {len(ms)} requests")
        if args.before:
            ratio = statistics.median(results["after"]) / statistics.median(results["before"])
            print(f"after / before p50: {ratio:.3f}")


if __name__ == "__main__":
    main()
