"""Caffe backend benchmark (issue 15): emit time and peak memory, and a check of the result.

    .venv/bin/python benchmarks/caffe_emit.py [--spec specs/resnext101_64x4d.yaml] [--repeats 3]

1. Whole-process wall time and peak RSS of
   `resnext-compile SPEC --backend caffe -o DIR --weights W.safetensors` (and without
   `--weights`, seeded init), best of `--repeats` after one untimed warm-up run; each in its own
   launcher process (`onnx_export.run_process`), so the numbers are the CLI's alone.
2. The same for `resnext-compile import-weights DIR/<name>.caffemodel` back to safetensors.
3. OpenCV's dnn module loads the pair and runs one image at the spec's input size; its logits
   are compared with onnxruntime on the ONNX backend's model of the same weights.

Prints a Markdown report (paste it into benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_export import CLI, REPO, best_of, run_process  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=REPO / "specs" / "resnext101_64x4d.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import cv2
    import onnxruntime as ort
    from safetensors.numpy import save_file

    from resnext_compiler.naming import file_stem
    from resnext_compiler.passes.complexity import analyse
    from resnext_compiler.pipeline import compile_spec
    from resnext_compiler.spec import load_spec
    from resnext_compiler.weights import InitialWeights

    spec = load_spec(args.spec)
    graph = compile_spec(spec)
    stem = file_stem(spec.name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights = work / "weights.safetensors"
        save_file(dict(InitialWeights(graph, 0).items()), str(weights))
        out = work / "caffe"
        emit = [str(CLI), str(args.spec), "--backend", "caffe", "-o", str(out)]
        run_process("warm-up", emit, env)
        for label, extra in (("--backend caffe --weights W", ["--weights", str(weights)]),
                             ("--backend caffe (seeded init)", [])):
            rows.append(best_of([run_process(label, emit + extra, env)
                                 for _ in range(args.repeats)]))
        run_process("emit with weights", emit + ["--weights", str(weights)], env)
        model = out / f"{stem}.caffemodel"
        back = work / "back.safetensors"
        rows.append(best_of([run_process("import-weights X.caffemodel", [
            str(CLI), "import-weights", str(model), "--spec", str(args.spec), "-o", str(back)],
            env) for _ in range(args.repeats)]))
        onnx_path = work / "model.onnx"
        run_process("onnx", [str(CLI), str(args.spec), "-o", str(onnx_path), "--weights",
                             str(weights), "--no-fold-bn"], env)

        s = graph.input_shape
        x = np.random.default_rng(0).normal(size=(1, s.channels, s.height, s.width)).astype(
            np.float32)
        net = cv2.dnn.readNetFromCaffe(str(out / f"{stem}.prototxt"), str(model))
        net.setInput(x)
        theirs = net.forward()
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        ours = session.run(None, {"input": x})[0]
        relative = float(np.abs(theirs - ours).max() / np.abs(ours).max())
        size_mb = model.stat().st_size / 2**20

    cost = analyse(graph)
    print(f"### Caffe backend: {spec.name} ({cost.params:,} parameters, caffemodel "
          f"{size_mb:.0f} MiB)\n")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, best of {args.repeats} after a warm-up.\n")
    print("| command | wall | peak RSS |\n|---|---:|---:|")
    for row in rows:
        status = "" if row.ok else f" (failed: {row.error})"
        print(f"| `resnext-compile {row.label}`{status} | {row.wall_s:.2f} s | "
              f"{row.peak_rss_mb:.0f} MB |")
    print(f"\nOpenCV {cv2.__version__} (readNetFromCaffe) vs onnxruntime {ort.__version__} on the "
          f"same weights, one {s.height}x{s.width} image: largest logit difference "
          f"{relative:.2e} of the largest logit.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
