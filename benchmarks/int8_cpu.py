"""float32 vs int8 (and float16) ResNeXt ONNX models in onnxruntime on the CPU.

    python benchmarks/int8_cpu.py [--specs resnext50_32x4d,resnext101_32x8d] [--runs 7]
                                  [--threads 2] [--update-results]

For each spec: compiles float32, float16 and int8 files with the CLI (seeded random weights;
int8 calibrated on the default number of generated images, as many more held out to measure
it: the compile's time and memory include that measurement), each compile in its own process
so its wall time and peak memory (the child's max RSS) are its own; all compiles run before
any model is loaded here, since a child's max RSS includes the pages it was forked with.
Then one process holds a session per file (intra_op_num_threads = --threads, sequential
execution) and times batch 1 and batch 8 with the runs alternated across the files (A, B, C,
A, B, C, ...), so load from other jobs hits every file alike; the table gives the median of
--runs. The int8 row's agreement with float32 is the one the compile measured and recorded in
the file. For the first spec, the same table also times the cost of nodes kept in float (the
stem and the classifier, the first fallback round; the grouped convolutions) and another
lowering of the grouped convolutions (form B: one dense convolution per path, concatenated).
A second table splits the first spec's batch-8 kernel time (onnxruntime's profiler) into the
grouped 3x3 convolutions and the rest, float32 against int8 (QLinearConv).

Prints Markdown; --update-results also writes it into benchmarks/RESULTS.md between the
`int8-cpu` markers (replacing the previous table).
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


def compile_model(spec: Path, output: Path, dtype: str, calibration: Path,
                  *extra: str) -> tuple[float, int]:
    """Run the CLI in a child process: (wall seconds, peak RSS bytes)."""
    args = [sys.executable, "-m", "resnext_compiler.cli", str(spec), "-o", str(output),
            "--dtype", dtype, *extra]
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


def recorded_agreement(path: Path) -> str:
    """The agreement with float32 that the int8 compile measured and wrote into the file."""
    metadata = {e.key: e.value for e in onnx.load(str(path), load_external_data=False)
                .metadata_props}
    return (f"recorded by the compile on {metadata['int8.held_out_images']} held-out generated "
            f"images: top-1 agreement {metadata['int8.top1_agreement']}%, logit cosine "
            f"{metadata['int8.logit_cosine']}, kept in float: "
            f"{', '.join(json.loads(metadata['int8.kept_float'])) or 'nothing'}")


def variants(spec: Path, work: Path, calibration: Path) -> dict[str, tuple[float, int]]:
    """int8 files with nodes kept in float (quantize_qdq with the compile's settings and
    calibration images), and form B compiled by the CLI: name -> (compile s, peak RSS)."""
    from onnxruntime.quantization import quant_pre_process

    from resnext_compiler.artifact_format import read_contract
    from resnext_compiler.backends.base import DEFAULT_CALIBRATION_IMAGES
    from resnext_compiler.backends.int8_agreement import stem_and_classifier
    from resnext_compiler.backends.onnx_quantize import (
        _reader,
        calibration_pixels,
        quantize_qdq,
        split_calibration,
    )

    fp32 = work / f"{spec.stem}-fp32.onnx"
    prepared = work / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    model = onnx.load(str(prepared))
    grouped = tuple(node.name for node in model.graph.node if node.op_type == "Conv" and any(
        a.name == "group" and a.i > 1 for a in node.attribute))
    contract = read_contract(fp32)
    images, _ = split_calibration(calibration, DEFAULT_CALIBRATION_IMAGES, None)
    reader = _reader(model, contract, calibration_pixels(images, contract))
    compiles = {}
    for name, keep in (("int8, stem + classifier in float", tuple(stem_and_classifier(model))),
                       ("int8, grouped convs in float", grouped)):
        start = time.perf_counter()
        quantize_qdq(prepared, work / f"{spec.stem}-{name}.onnx", reader, keep)
        compiles[name] = (time.perf_counter() - start, 0)
    compiles["int8, form B"] = compile_model(spec, work / f"{spec.stem}-int8, form B.onnx",
                                             "int8", calibration, "--form", "B")
    prepared.unlink()
    return compiles


def compile_all(spec: Path, work: Path, calibration: Path) -> dict[str, tuple[float, int]]:
    return {dtype: compile_model(spec, work / f"{spec.stem}-{dtype}.onnx", dtype, calibration)
            for dtype in DTYPES}


def model_rows(spec: Path, work: Path, compiles: dict[str, tuple[float, int]], runs: int,
               threads: int) -> list[str]:
    name = spec.stem
    kinds = list(compiles)
    paths = {dtype: work / f"{name}-{dtype}.onnx" for dtype in kinds}
    sessions = {dtype: session(paths[dtype], threads) for dtype in kinds}
    shape = [d.dim_value for d in onnx.load(str(paths["fp32"]), load_external_data=False)
             .graph.input[0].type.tensor_type.shape.dim[1:]]
    medians: dict[int, dict[str, float]] = {}
    for batch in BATCHES:
        x = np.random.default_rng(batch).normal(size=(batch, *shape)).astype(np.float32)
        feeds = {dtype: x.astype(np.float16) if dtype == "fp16" else x for dtype in kinds}
        medians[batch] = alternated_medians(
            {dtype: (lambda d=dtype, f=feeds: sessions[d].run(None, {"input": f[d]}))
             for dtype in kinds}, runs)
    agreement = recorded_agreement(paths["int8"])
    sizes = {dtype: paths[dtype].stat().st_size for dtype in kinds}
    rows = []
    for dtype in kinds:
        speed = " / ".join(f"{medians[b]['fp32'] / medians[b][dtype]:.2f}x" for b in BATCHES)
        seconds, peak = compiles[dtype]
        peak_text = f"{peak / 2**20:.0f} MB" if peak else "(in process)"
        rows.append(
            f"| {name} | {dtype} | {sizes[dtype] / 1e6:.1f} MB "
            f"({100 * sizes[dtype] / sizes['fp32']:.0f}%) | "
            + " | ".join(f"{1000 * medians[b][dtype]:.0f} ms" for b in BATCHES)
            + f" | {speed} | {seconds:.1f} s | {peak_text} |")
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


def cpu_name() -> str:
    """The CPU model and whether it has VNNI (int8 kernels differ: docs/onnx.md)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), "unknown")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    vnni = [flag for flag in ("avx512_vnni", "avx_vnni") if flag in flags]
    return f"{model}, {' and '.join(vnni) if vnni else 'no VNNI'}"


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
        # as many images again are held out to measure int8 against float32
        calibration = generated_images(work / "calibration", 2 * DEFAULT_CALIBRATION_IMAGES)
        specs = [Path(name) if name.endswith(".yaml") else REPO / "specs" / f"{name}.yaml"
                 for name in args.specs.split(",")]
        # Every compile first, while this process is small: a child's peak RSS counts the
        # parent's pages it was forked with.
        compiles = {spec: compile_all(spec, work, calibration) for spec in specs}
        compiles[specs[0]].update(variants(specs[0], work, calibration))
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
        f"random weights, int8 calibrated on {DEFAULT_CALIBRATION_IMAGES} generated images "
        f"and measured on {DEFAULT_CALIBRATION_IMAGES} more. CPU: {cpu_name()}. "
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
