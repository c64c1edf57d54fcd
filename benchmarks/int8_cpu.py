"""float32 vs int8 (and float16) ResNeXt ONNX models in onnxruntime on the CPU.

    python benchmarks/int8_cpu.py [--specs resnext50_32x4d,resnext101_32x8d] [--runs 7]
                                  [--threads 2] [--update-results]

For each spec: compiles float32, float16 and int8 files with the CLI (seeded random weights;
int8 calibrated on the default number of generated images), each compile in its own process
so its wall time and peak memory (the child's max RSS) are its own; all compiles run before
any model is loaded here, since a child's max RSS includes the pages it was forked with.
Then one process holds a session per file (intra_op_num_threads = --threads, sequential
execution) and times batch 1 and batch 8 with the runs alternated across the files (A, B, C,
A, B, C, ...), so load from other jobs hits every file alike; the table gives the median of
--runs. A second table splits the first spec's batch-8 kernel time (onnxruntime's profiler)
into the grouped 3x3 convolutions and the rest, float32 against int8 (QLinearConv).

Prints Markdown; --update-results also writes it into benchmarks/RESULTS.md between the
`int8-cpu` markers (replacing the previous table).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- int8-cpu:begin -->", "<!-- int8-cpu:end -->"
DTYPES = ("fp32", "fp16", "int8")
BATCHES = (1, 8)


def generated_images(folder: Path, count: int, seed: int = 0) -> Path:
    """Smooth random colour pictures (upsampled coarse noise plus fine noise), 320x256 PNG."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        coarse = rng.integers(0, 256, (8, 10, 3), np.uint8)
        image = Image.fromarray(coarse).resize((320, 256), Image.Resampling.BICUBIC)
        pixels = np.asarray(image, np.int16) + rng.integers(-12, 13, (256, 320, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{index}.png")
    return folder


def compile_model(spec: Path, output: Path, dtype: str, calibration: Path) -> tuple[float, int]:
    """Run the CLI in a child process: (wall seconds, peak RSS bytes)."""
    args = [sys.executable, "-m", "resnext_compiler.cli", str(spec), "-o", str(output),
            "--dtype", dtype]
    if dtype == "int8":
        args += ["--calibrate", str(calibration)]
    start = time.perf_counter()
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"compile failed: {' '.join(args)}\n{child.stderr.read().decode()}")
    return seconds, usage.ru_maxrss * 1024


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def alternated_medians(runners: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median seconds of each runner over `runs` rounds, one call of each per round."""
    for run in runners.values():
        run()  # warm-up: first-run allocations and kernel selection
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(runs):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def fidelity(sessions: dict[str, ort.InferenceSession], fp32: Path, work: Path) -> str:
    """int8 logits against float32's on 16 held-out generated images (not the calibration
    ones), through the model's input contract."""
    from resnext_compiler.image_transform import load_images_for_model
    from resnext_compiler.input_contract import read_contract

    folder = generated_images(work / "held-out", 16, seed=1)
    x = load_images_for_model(sorted(folder.iterdir()), read_contract(fp32))
    ref = sessions["fp32"].run(None, {"input": x})[0]
    out = sessions["int8"].run(None, {"input": x})[0]
    relative = float(np.sqrt(np.mean((out - ref) ** 2)) / ref.std())
    agree = float(np.mean(out.argmax(1) == ref.argmax(1)))
    return (f"held-out generated images: logit RMS error / fp32 logit std {relative:.3f}, "
            f"top-1 agrees on {100 * agree:.0f}%")


def compile_all(spec: Path, work: Path, calibration: Path) -> dict[str, tuple[float, int]]:
    return {dtype: compile_model(spec, work / f"{spec.stem}-{dtype}.onnx", dtype, calibration)
            for dtype in DTYPES}


def model_rows(spec: Path, work: Path, compiles: dict[str, tuple[float, int]], runs: int,
               threads: int) -> list[str]:
    name = spec.stem
    paths = {dtype: work / f"{name}-{dtype}.onnx" for dtype in DTYPES}
    sessions = {dtype: session(paths[dtype], threads) for dtype in DTYPES}
    shape = [d.dim_value for d in onnx.load(str(paths["fp32"]), load_external_data=False)
             .graph.input[0].type.tensor_type.shape.dim[1:]]
    medians: dict[int, dict[str, float]] = {}
    for batch in BATCHES:
        x = np.random.default_rng(batch).normal(size=(batch, *shape)).astype(np.float32)
        feeds = {"fp32": x, "fp16": x.astype(np.float16), "int8": x}
        medians[batch] = alternated_medians(
            {dtype: (lambda d=dtype, f=feeds: sessions[d].run(None, {"input": f[d]}))
             for dtype in DTYPES}, runs)
    agreement = fidelity(sessions, paths["fp32"], work)
    sizes = {dtype: paths[dtype].stat().st_size for dtype in DTYPES}
    rows = []
    for dtype in DTYPES:
        speed = " / ".join(f"{medians[b]['fp32'] / medians[b][dtype]:.2f}x" for b in BATCHES)
        seconds, peak = compiles[dtype]
        rows.append(
            f"| {name} | {dtype} | {sizes[dtype] / 1e6:.1f} MB "
            f"({100 * sizes[dtype] / sizes['fp32']:.0f}%) | "
            + " | ".join(f"{1000 * medians[b][dtype]:.0f} ms" for b in BATCHES)
            + f" | {speed} | {seconds:.1f} s | {peak / 2**20:.0f} MB |")
    rows.append(f"| {name} | int8 vs fp32 | {agreement} | | | | | |")
    return rows


def profile_rows(spec: Path, work: Path, threads: int, runs: int = 3) -> list[str]:
    """Where batch 8 spends its time, float32 vs int8, by onnxruntime's node profiler: the
    grouped 3x3 convolutions (conv2 of every block; onnxruntime names a conv fused with its
    ReLU after the ReLU, relu2) against everything else."""
    import json

    rows = []
    totals = {}
    for dtype in ("fp32", "int8"):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(work / f"profile-{dtype}")
        model = ort.InferenceSession(str(work / f"{spec.stem}-{dtype}.onnx"), options,
                                     providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).normal(size=(8, *model.get_inputs()[0].shape[1:]))
        model.run(None, {"input": x.astype(np.float32)})
        for _ in range(runs):
            model.run(None, {"input": x.astype(np.float32)})
        events = json.loads(Path(model.end_profiling()).read_text())
        grouped = other = 0.0
        for event in events:
            if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
                continue
            node = event["name"].removesuffix("_kernel_time")
            if ".conv2" in node or ".relu2" in node:
                grouped += event["dur"]
            else:
                other += event["dur"]
        # profiled durations are microseconds, over runs + 1 calls
        totals[dtype] = (grouped / 1e3 / (runs + 1), other / 1e3 / (runs + 1))
    for label, index in (("grouped 3x3 convs (conv2)", 0), ("everything else", 1)):
        fp32, int8 = totals["fp32"][index], totals["int8"][index]
        rows.append(f"| {spec.stem} | {label} | {fp32:.0f} ms | {int8:.0f} ms | "
                    f"{fp32 / int8:.2f}x |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default="resnext50_32x4d,resnext101_32x8d",
                        help="zoo names or spec files, comma-separated")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--update-results", action="store_true")
    args = parser.parse_args()
    from resnext_compiler.backends.base import DEFAULT_CALIBRATION_IMAGES

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="int8-cpu-") as tmp:
        work = Path(tmp)
        calibration = generated_images(work / "calibration", DEFAULT_CALIBRATION_IMAGES)
        specs = [Path(name) if name.endswith(".yaml") else REPO / "specs" / f"{name}.yaml"
                 for name in args.specs.split(",")]
        # Every compile first, while this process is small: a child's peak RSS counts the
        # parent's pages it was forked with.
        compiles = {spec: compile_all(spec, work, calibration) for spec in specs}
        rows = []
        for spec in specs:
            rows += model_rows(spec, work, compiles[spec], args.runs, args.threads)
        first = args.specs.split(",")[0]
        conv_rows = profile_rows(Path(first) if first.endswith(".yaml") else
                                 REPO / "specs" / f"{first}.yaml", work, args.threads)
    load_after = os.getloadavg()
    text = "\n".join([
        BEGIN,
        f"`python benchmarks/int8_cpu.py` on {platform.machine()} "
        f"({os.cpu_count()} CPUs visible), onnxruntime {ort.__version__}, "
        f"intra_op_num_threads={args.threads}, median of {args.runs} alternated runs, seeded "
        f"random weights, int8 calibrated on {DEFAULT_CALIBRATION_IMAGES} generated images. "
        f"Load average before / after: {load_before[0]:.1f} / {load_after[0]:.1f}.",
        "",
        "| model | dtype | file (of fp32) | batch 1 | batch 8 | speed-up vs fp32 (b1 / b8) "
        "| compile | compile peak RSS |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Kernel time per batch-8 run by onnxruntime's profiler (mean of 4 runs, first "
        "included), grouped convolutions against the rest:",
        "",
        "| model | nodes | fp32 | int8 | speed-up |",
        "|---|---|---:|---:|---:|",
        *conv_rows,
        END,
    ])
    print(text)
    if args.update_results:
        current = RESULTS.read_text()
        if BEGIN in current and END in current:
            head, rest = current.split(BEGIN, 1)
            current = head + text + rest.split(END, 1)[1]
        else:
            current = current.rstrip("\n") + "\n\n## int8 on the CPU (issue 13)\n\n" + text + "\n"
        RESULTS.write_text(current)


if __name__ == "__main__":
    main()
