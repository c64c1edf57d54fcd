"""int8 calibration choices, measured on a trained network: method x number of images.

    python benchmarks/int8_calibration.py [--work DIR] [--counts 16,64,256]

Trains `resnext-compile train`'s default network (ResNeXt-11 4x16d on the embedded 8x8
digits, about 30 s on 2 cores) unless DIR already holds the run, writes the digits' train and
validation images as PNG files, exports the float32 ONNX model, and quantizes it with each
onnxruntime calibration method (MinMax, Entropy, Percentile) on the first N training images.
Every int8 model is measured on the 355 validation images read through the model's input
contract: top-1 error, agreement of its top-1 with float32's, and the logits' error relative
to float32's spread. Prints a Markdown table (the one in docs/onnx.md, "int8").
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

METHODS = ("minmax", "entropy", "percentile")


def train(run: Path) -> None:
    if not (run / "model.safetensors").is_file():
        subprocess.run([sys.executable, "-m", "resnext_compiler.cli", "train", "--seed", "0",
                        "-o", str(run)], check=True, stdout=subprocess.DEVNULL)


def write_digits(spec_path: Path, root: Path) -> dict[str, list[tuple[Path, int]]]:
    """The digits splits as PNG files: root/<split>/<label>/<index>.png."""
    from PIL import Image

    from resnext_compiler.runtimes.train.datasets import open_dataset
    from resnext_compiler.spec import load_spec

    data = open_dataset(load_spec(spec_path), "digits", None, augment="none")
    out = {}
    for split, images in (("train", data.train), ("val", data.val)):
        files = []
        for index in range(len(images)):
            label = int(images.labels[index])
            path = root / split / str(label) / f"{index:04d}.png"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images.images[index, 0].numpy()).save(path)
            files.append((path, label))
        out[split] = files
    return out


def logits_of(model: Path, inputs: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--counts", default="16,64,256")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="int8-calibration-"))
    work.mkdir(parents=True, exist_ok=True)

    from resnext_compiler.artifact_format import read_contract
    from resnext_compiler.backends.base import CompileOptions
    from resnext_compiler.backends.onnx import export_onnx
    from resnext_compiler.backends.onnx_quantize import (
        CalibrationSet,
        quantize_int8,
    )
    from resnext_compiler.image_transform import load_images_for_model
    from resnext_compiler.input_contract import resolve_contract
    from resnext_compiler.pipeline import compile_spec
    from resnext_compiler.spec import load_spec

    run = work / "run"
    train(run)
    files = write_digits(run / "spec.yaml", work / "digits")
    fp32 = work / "fp32.onnx"
    spec = load_spec(run / "spec.yaml")
    export_onnx(compile_spec(spec), CompileOptions(weights=run / "model.safetensors"), fp32,
                contract=resolve_contract(spec))
    contract = read_contract(fp32)
    val_paths = [path for path, _ in files["val"]]
    labels = np.array([label for _, label in files["val"]])
    inputs = load_images_for_model(val_paths, contract)
    reference = logits_of(fp32, inputs)
    spread = float(reference.std())
    print(f"float32: top-1 error {100 * np.mean(reference.argmax(1) != labels):.2f}% on "
          f"{len(labels)} validation images\n")
    print("| method | images | top-1 error | agrees with fp32 | logit RMS error / fp32 std "
          "| calibration s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    train_paths = tuple(path for path, _ in files["train"])
    for method in METHODS:
        for count in (int(c) for c in args.counts.split(",")):
            start = time.perf_counter()
            int8 = quantize_int8(fp32, work / f"{method}-{count}.onnx",
                                 CalibrationSet(work / "digits" / "train", train_paths[:count]),
                                 method=method)
            seconds = time.perf_counter() - start
            logits = logits_of(int8, inputs)
            error = 100 * np.mean(logits.argmax(1) != labels)
            agree = 100 * np.mean(logits.argmax(1) == reference.argmax(1))
            rms = float(np.sqrt(np.mean((logits - reference) ** 2))) / spread
            print(f"| {method} | {count} | {error:.2f}% | {agree:.1f}% | {rms:.3f} | "
                  f"{seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
