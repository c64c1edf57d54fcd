"""ONNX export benchmark (issue 5): `resnext-compile --backend onnx` against torch.onnx.export.

    .venv/bin/python benchmarks/onnx_export.py [--spec specs/resnext101_64x4d.yaml] [--quick]

1. Whole-process wall time and peak RSS (os.wait4's ru_maxrss) of
   `resnext-compile SPEC --backend onnx -o out.onnx`, fresh init and with `--weights`, against a
   Python process that builds the same model with torch and calls torch.onnx.export, with the
   dynamo exporter and the legacy TorchScript one. Every command runs in its own subprocess,
   after one untimed warm-up run of our CLI (so Python's bytecode cache is warm, as in an
   installed package).
2. onnxruntime inference (CPU) of our model and the torch-exported models with the same weights
   at batch 1 and 8: images/s, the ratio, and the largest logit difference.
3. Achieved GFLOP/s (2 x MACs from the IR's analytic count) against onnxruntime's own fp32 GEMM
   throughput (a 2048^3 MatMul) on this CPU.

Prints a Markdown report (paste it into benchmarks/RESULTS.md). Needs torch and onnxscript only
for the torch baselines (`--skip-torch` leaves them out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).with_name("resnext-compile")

TORCH_EXPORT = textwrap.dedent("""
    import sys
    import torch
    from safetensors.torch import load_file
    from resnext_compiler.backends.torch_module import build_module, load_weights
    from resnext_compiler.pipeline import compile_spec
    from resnext_compiler.spec import load_spec

    spec_path, weights_path, out, mode = sys.argv[1:5]
    graph = compile_spec(load_spec(spec_path))
    model = build_module(graph).eval()
    load_weights(model, load_file(weights_path))
    s = graph.input_shape
    x = torch.randn(1, s.channels, s.height, s.width)
    with torch.no_grad():
        if mode == "dynamo":
            torch.onnx.export(model, (x,), out, dynamo=True, opset_version=18,
                              input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("N", min=1, max=1024)},))
        else:
            torch.onnx.export(model, (x,), out, dynamo=False, opset_version=18,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
""")


@dataclass
class ProcessRun:
    label: str
    wall_s: float
    peak_rss_mb: float
    ok: bool
    error: str = ""


# Runs one command and reports its wall time and peak RSS. It runs in a small launcher process:
# a child's ru_maxrss includes the memory it shared with its parent at fork time, so forking
# from this (large) benchmark process would inflate every number.
LAUNCHER = textwrap.dedent("""
    import json, os, subprocess, sys, time
    start = time.perf_counter()
    child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    print(json.dumps({"wall": time.perf_counter() - start, "rss_kb": usage.ru_maxrss,
                      "code": os.waitstatus_to_exitcode(status),
                      "err": err.decode(errors="replace")[-2000:]}))
""")


def run_process(label: str, argv: list[str], env: dict[str, str], timeout: float = 900
                ) -> ProcessRun:
    """Wall time and peak RSS of one child process (os.wait4 gives that child's rusage)."""
    try:
        result = subprocess.run([sys.executable, "-c", LAUNCHER, *argv], env=env, timeout=timeout,
                                capture_output=True, text=True, check=True)
    except subprocess.TimeoutExpired:
        return ProcessRun(label, timeout, 0.0, False, "timed out")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    ok = report["code"] == 0
    error = report["err"].strip().splitlines()[-1] if report["err"].strip() and not ok else ""
    return ProcessRun(label, report["wall"], report["rss_kb"] / 1024, ok, error)


def best_of(runs: list[ProcessRun]) -> ProcessRun:
    ok = [r for r in runs if r.ok]
    return min(ok, key=lambda r: r.wall_s) if ok else runs[-1]


def ort_images_per_s(path: Path, batch: int, shape: tuple[int, int, int], repeats: int
                     ) -> tuple[float, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    logits = session.run(None, {"input": x})[0]  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times), logits


def ort_gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """onnxruntime's own fp32 MatMul throughput on this CPU (GFLOP/s, 2 n^3 per product)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    b = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n)).astype(
        np.float32), "b")
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
                              initializer=[b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    session.run(None, {"a": a})
    onnx.checker.check_model(model)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"a": a})
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=REPO / "specs" / "resnext101_64x4d.yaml")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of our CLI (best kept)")
    parser.add_argument("--skip-torch", action="store_true", help="no torch.onnx.export baselines")
    parser.add_argument("--quick", action="store_true", help="fewer inference repeats")
    args = parser.parse_args(argv)

    from safetensors.numpy import save_file

    from resnext_compiler.passes.complexity import analyse
    from resnext_compiler.pipeline import compile_spec
    from resnext_compiler.spec import load_spec
    from resnext_compiler.weights import InitialWeights

    spec = load_spec(args.spec)
    graph = compile_spec(spec)
    macs = analyse(graph).macs
    shape = (graph.input_shape.channels, graph.input_shape.height, graph.input_shape.width)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    work = Path(tempfile.mkdtemp(prefix="onnx-bench-"))
    weights = work / "weights.safetensors"
    save_file(dict(InitialWeights(graph, 0).items()), str(weights))

    ours_out = work / "ours.onnx"
    compile_cmd = [str(CLI), str(args.spec), "--backend", "onnx", "-o", str(ours_out)]
    run_process("warm-up", compile_cmd, env)  # writes bytecode caches; not timed
    runs: list[ProcessRun] = []
    for label, extra in (("resnext-compile (seeded init)", []),
                         ("resnext-compile --weights", ["--weights", str(weights)])):
        timed = []
        for _ in range(args.runs):
            ours_out.unlink(missing_ok=True)
            timed.append(run_process(label, compile_cmd + extra, env))
        runs.append(best_of(timed))
    ours = runs[0]

    exported: dict[str, Path] = {"resnext-compile": ours_out}
    if not args.skip_torch:
        for mode in ("dynamo", "legacy"):
            out = work / f"torch_{mode}.onnx"
            result = run_process(f"torch.onnx.export ({mode})",
                                 [sys.executable, "-c", TORCH_EXPORT, str(args.spec), str(weights),
                                  str(out), mode], env)
            runs.append(result)
            if result.ok and out.is_file():
                exported[f"torch {mode}"] = out

    repeats = {1: 3 if args.quick else 10, 8: 2 if args.quick else 5}
    inference: dict[str, dict[int, tuple[float, np.ndarray]]] = {}
    for name, path in exported.items():
        inference[name] = {b: ort_images_per_s(path, b, shape, r) for b, r in repeats.items()}
    gemm = ort_gemm_gflops()

    cpu = platform.processor() or platform.machine()
    print(f"## ONNX export\n\n{spec.name}: {analyse(graph).params / 1e6:.1f}M parameters, "
          f"{macs / 1e9:.2f} GMACs/image; {os.cpu_count()} CPU cores ({cpu}), "
          f"onnxruntime CPU EP; best of {args.runs} runs for our CLI, one run per torch export.\n")
    print("| command | wall s | peak RSS MB | vs ours (time) | vs ours (memory) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in runs:
        if not r.ok:
            print(f"| {r.label} | failed: {r.error[:80]} | | | |")
            continue
        print(f"| {r.label} | {r.wall_s:.2f} | {r.peak_rss_mb:.0f} | "
              f"{r.wall_s / ours.wall_s:.1f}x | {r.peak_rss_mb / ours.peak_rss_mb:.1f}x |")
    print("\n| model | batch | images/s | ratio ours/this | max abs logit diff vs ours | "
          "GFLOP/s | % of ORT GEMM |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, by_batch in inference.items():
        for batch, (images, logits) in by_batch.items():
            ours_images, ours_logits = inference["resnext-compile"][batch]
            gflops = 2 * macs * images / 1e9
            diff = float(np.abs(logits - ours_logits).max())
            print(f"| {name} | {batch} | {images:.2f} | {ours_images / images:.2f} | {diff:.1e} "
                  f"| {gflops:.0f} | {100 * gflops / gemm:.0f}% |")
    print(f"\nonnxruntime fp32 GEMM (2048^3 MatMul) on this CPU: {gemm:.0f} GFLOP/s.")
    for path in work.iterdir():
        path.unlink()
    work.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
