"""Training-step speed: our `Trainer.train_step` against a plain eager PyTorch loop.

Both sides train the same `build_module` network on the same pre-made batch with the same
SGD (Nesterov 0.9, weight decay) and cross-entropy, so the ratio measures what our step adds
(per-step metric sums, the NaN check, the all-reduce hook, lr setting) or saves. Each
variant runs in its own process; inside it the two sides are timed in alternating rounds
(best round counts) so that load from other processes hits both alike, and the peak
resident memory (VmHWM, reset before each round) or peak GPU memory is taken per side.

CPU variants: fp32 | channels_last | bf16 autocast | channels_last + bf16.
With a GPU (`--gpu`): ResNeXt-101 32x4d, 224x224, fp16 autocast + channels_last (NVIDIA's
published DeepLearningExamples reference: 1211 images/s on one A100 80GB, AMP, batch 128).

    python benchmarks/train_speed.py    # CPU table: ~3 min on 2 AVX2 cores, mostly bf16
    python benchmarks/train_speed.py --gpu --batch 128 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# A narrow CIFAR ResNeXt (8x8d, half width, one block per stage): a step is real work on
# 2 cores (62 M multiply-accumulates per image), yet fp32 rounds take seconds.
BENCH_SPEC = """\
spec_version: 1
name: resnext11_8x8d_half_bench
input: {channels: 3, height: 32, width: 32}
stem: cifar
block: {type: bottleneck, cardinality: 8, base_width: 8}
stages:
  - {depth: 1, width: 32}
  - {depth: 1, width: 64}
  - {depth: 1, width: 128}
head: {num_classes: 10}
train: {dataset: synthetic, batch_size: 128, lr: 0.1, weight_decay: 5.0e-4}
"""
CPU_VARIANTS = {
    "fp32": (False, None),
    "channels_last": (True, None),
    "bf16": (False, "bf16"),
    "channels_last+bf16": (True, "bf16"),
}


def _spec_path(args: argparse.Namespace, folder: Path) -> Path:
    if args.spec:
        return Path(args.spec)
    path = folder / "bench.yaml"
    path.write_text(BENCH_SPEC)
    return path


def _ours(spec_path: Path, args: argparse.Namespace, channels_last: bool, amp: str | None,
          folder: Path):
    """Our trainer, one optimizer step per call on a pre-made batch."""
    import torch

    from resnext_compiler.runtimes.train.config import TrainOverrides
    from resnext_compiler.runtimes.train.distributed import DistContext
    from resnext_compiler.runtimes.train.loop import Trainer
    from resnext_compiler.runtimes.train.progress import Progress
    from resnext_compiler.runtimes.train.runner import prepare_run

    overrides = TrainOverrides(dataset="synthetic", batch_size=args.batch, device=args.device,
                               amp=amp is not None, amp_dtype=amp, channels_last=channels_last)
    config, data = prepare_run(spec_path, overrides, folder / "run")
    trainer = Trainer(config, DistContext(), Progress(enabled=False), data)
    x, y = trainer.data.train.load(torch.arange(args.batch), epoch=0)
    x, y = x.to(args.device), y.to(args.device)
    trainer.model.train()
    return lambda: trainer.train_step([(x, y)], lr=0.01)


def _plain(spec_path: Path, args: argparse.Namespace, channels_last: bool, amp: str | None):
    """The loop a PyTorch user writes by hand, on the same module and batch."""
    import torch
    import torch.nn.functional as F

    from resnext_compiler.backends.torch_module import build_module
    from resnext_compiler.pipeline import compile_spec
    from resnext_compiler.runtimes.train.datasets import open_dataset
    from resnext_compiler.spec import load_spec

    spec = load_spec(spec_path)
    model = build_module(compile_spec(spec), seed=0).to(args.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                                weight_decay=spec.train.weight_decay)
    scaler = torch.amp.GradScaler(args.device, enabled=amp == "fp16")
    data = open_dataset(spec, "synthetic", None)
    x, y = data.train.load(torch.arange(args.batch), epoch=0)
    x, y = x.to(args.device), y.to(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")

    def step() -> None:
        batch = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(args.device, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(batch), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    model.train()
    return step


def _peak_rss_reset() -> None:
    """Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> None:
    """Both sides in one process, timed in alternating rounds so load changes hit both."""
    import torch

    channels_last, amp = (True, "fp16") if args.device == "cuda" else CPU_VARIANTS[args.variant]
    cuda = args.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = _spec_path(args, Path(tmp))
        steps = {"ours": _ours(spec_path, args, channels_last, amp, Path(tmp)),
                 "plain": _plain(spec_path, args, channels_last, amp)}
        best = {side: 0.0 for side in steps}
        peak = {side: 0.0 for side in steps}
        for round_index in range(args.rounds + 1):  # round 0 warms up
            for side, step in steps.items():
                _peak_rss_reset()
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                sync()
                started = time.perf_counter()
                for _ in range(args.steps):
                    step()
                sync()
                seconds = time.perf_counter() - started
                if round_index:
                    best[side] = max(best[side], args.batch * args.steps / seconds)
                    peak[side] = max(peak[side], torch.cuda.max_memory_allocated() / 2**20
                                     if cuda else _peak_rss_mib())
    result = {"ours": best["ours"], "plain": best["plain"], "peak_ours_mib": peak["ours"],
              "peak_plain_mib": peak["plain"], "threads": torch.get_num_threads(),
              "device_name": torch.cuda.get_device_name() if cuda else "cpu"}
    print(json.dumps(result))


def _measure(args: argparse.Namespace, variant: str) -> dict:
    command = [sys.executable, __file__, "--worker", "--variant", variant,
               "--batch", str(args.batch), "--steps", str(args.steps),
               "--rounds", str(args.rounds), "--device", args.device]
    if args.spec:
        command += ["--spec", args.spec]
    out = subprocess.run(command, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", help="Spec file (default: a half-width ResNeXt-11 8x8d at "
                        "32x32, or specs/resnext101_32x4d.yaml with --gpu).")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2, help="Steps per timed round.")
    parser.add_argument("--rounds", type=int, default=3,
                        help="Timed rounds per side, alternating; the best counts.")
    parser.add_argument("--gpu", action="store_true", help="Benchmark on CUDA instead.")
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.gpu:
        args.device = "cuda"
        args.spec = args.spec or str(REPO / "specs" / "resnext101_32x4d.yaml")
        variants = ["fp16+channels_last"]
    else:
        variants = list(CPU_VARIANTS)
    memory = "peak GPU memory" if args.gpu else "peak RSS"
    print(f"batch {args.batch}; best of {args.rounds} alternating rounds of {args.steps} steps "
          "per side after one warm-up round")
    print(f"| variant | ours (img/s) | plain eager (img/s) | ratio | {memory} ours / plain "
          "(MiB) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for variant in variants:
        r = _measure(args, variant)
        print(f"| {variant} | {r['ours']:.1f} | {r['plain']:.1f} | {r['ours'] / r['plain']:.2f} "
              f"| {r['peak_ours_mib']:.0f} / {r['peak_plain_mib']:.0f} |", flush=True)
    print(f"device: {r['device_name']}, {r['threads']} thread(s)")


if __name__ == "__main__":
    main()
