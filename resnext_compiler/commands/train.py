"""train, evaluate, plot: the training runtime's commands (torch is imported inside them)."""

from __future__ import annotations

import json
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from resnext_compiler.commands.options import (
    DEVICE,
    WORKERS,
    allow_root_option,
    choice,
    number_range,
)
from resnext_compiler.dataset_types import AUGMENTS, dataset_names_help
from resnext_compiler.errors import UserError, sanitise
from resnext_compiler.extras import require
from resnext_compiler.limits import MAX_BATCH, MAX_EPOCHS, MAX_LR, SCHEDULES

if TYPE_CHECKING:
    from resnext_compiler.runtimes.train.distributed import Rendezvous

EXIT_INTERRUPTED = 130


def _milestones(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise UserError(f"--milestones must be comma-separated epochs like 30,60,90; got "
                        f"{value!r}") from None


def _device(device: str, gpus: int) -> str:
    if gpus > 0:
        device = "cuda"
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        import torch

        available = torch.cuda.device_count()
        if available < max(1, gpus):
            raise UserError(f"asked for {max(1, gpus)} GPU(s) but {available} are visible")
    return device


RENDEZVOUS_ID = "resnext-compile"


def _rendezvous(nnodes: int, node_rank: int, endpoint: str | None, run: Path | None
                ) -> Rendezvous | None:
    """The multi-node rendezvous the flags describe (None on one machine)."""
    from resnext_compiler.runtimes.train.distributed import Rendezvous, parse_endpoint

    if nnodes < 1:
        raise UserError(f"--nnodes must be at least 1; got {nnodes}")
    if nnodes == 1:
        if node_rank != 0 or endpoint is not None:
            raise UserError("--node-rank and --rdzv-endpoint are for multi-node runs "
                            "(--nnodes 2 or more)")
        return None
    if endpoint is None:
        raise UserError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (node 0's address "
                        "and a free port), the same on every node")
    parse_endpoint(endpoint)
    if not 0 <= node_rank < nnodes:
        raise UserError(f"--node-rank must be between 0 and {nnodes - 1}; got {node_rank}")
    if run is None:
        raise UserError("a multi-node run needs --run-dir (the same path on every node, on a "
                        "shared filesystem), or --resume RUN")
    # Node 0's torchrun hosts the rendezvous store for this run alone, so the id need only be
    # one every node computes alike: not the run directory's path, which a shared filesystem
    # mounted at different places spells differently (different ids would wait 10 minutes).
    # Nodes that meet but disagree on the run are stopped right after (publish_staged_run).
    return Rendezvous(nnodes, node_rank, endpoint, RENDEZVOUS_ID)


def train_command(
    spec: Path | None = typer.Argument(
        None, help="Spec file (YAML). Default: a small ResNeXt on the embedded digits.",
        show_default=False),
    data: Path | None = typer.Option(
        None, "--data", help="CIFAR batches folder, or an image folder with train/ and val/."),
    dataset: str | None = typer.Option(
        None, "--dataset",
        help=f"{dataset_names_help()} (default: spec)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs (default: spec).",
                                      callback=number_range(1, MAX_EPOCHS)),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Global batch; the spec's lr is scaled linearly to it.",
        callback=number_range(1, MAX_BATCH)),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate, used as given.",
                                    callback=number_range(0, MAX_LR, min_open=True)),
    schedule: str | None = typer.Option(None, "--schedule", help=" | ".join(SCHEDULES)),
    milestones: str | None = typer.Option(
        None, "--milestones", help="Step schedule: epochs where lr x0.1, e.g. 30,60,90."),
    warmup_epochs: int | None = typer.Option(None, "--warmup-epochs", help="Linear warmup.",
                                             callback=number_range(0, MAX_EPOCHS)),
    weight_decay: float | None = typer.Option(None, "--weight-decay",
                                              callback=number_range(0, 1)),
    label_smoothing: float | None = typer.Option(None, "--label-smoothing",
                                                 callback=number_range(0, 1, max_open=True)),
    augment: str | None = typer.Option(
        None, "--augment", help=" | ".join(AUGMENTS)),
    accum_steps: int = typer.Option(
        1, "--accum-steps", help="Gradient accumulation steps per optimizer step.",
        callback=number_range(1, 1024)),
    nproc: int = typer.Option(1, "--nproc", help="CPU processes (DDP over gloo, via torchrun).",
                              callback=number_range(1, 1024)),
    gpus: int = typer.Option(0, "--gpus", help="GPUs (one process each, DDP over NCCL).",
                             callback=number_range(0, 1024)),
    nnodes: int = typer.Option(
        1, "--nnodes", help="Machines; run the same command on each (--nproc/--gpus per node).",
        callback=number_range(1, 1024)),
    node_rank: int = typer.Option(
        0, "--node-rank", help="This machine's index, 0..nnodes-1 (0 hosts the rendezvous).",
        callback=number_range(0, 1023)),
    rdzv_endpoint: str | None = typer.Option(
        None, "--rdzv-endpoint", help="HOST:PORT of node 0 for torchrun's c10d rendezvous."),
    device: str = DEVICE.option(),
    amp: bool = typer.Option(False, "--amp", help="Mixed precision (bf16 on CPU, fp16 on GPU)."),
    amp_dtype: str | None = typer.Option(None, "--amp-dtype", help="bf16 | fp16",
                                         callback=choice("bf16", "fp16")),
    channels_last: bool = typer.Option(False, "--channels-last", help="NHWC memory format."),
    compile_model: bool = typer.Option(False, "--compile", help="Use torch.compile."),
    workers: int = WORKERS.option(),
    seed: int = typer.Option(0, "--seed", help="Seed of weights, data order, augmentation.",
                             callback=number_range(0, 2**63 - 1)),
    threads: int = typer.Option(
        0, "--threads", help="CPU threads per process (0: one for tiny nets, else PyTorch's).",
        callback=number_range(0, 1024)),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", "-o", help="Run directory (default: runs/NAME-TIMESTAMP)."),
    weights: str | None = typer.Option(
        None, "--weights", "-w", help="Fine-tune from these weights: a file, or pretrained by "
        "name (torchvision:resnext50_32x4d, timm:...; a classifier with another class count "
        "starts afresh)."),
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue the run in this directory from its last checkpoint."),
    scan_data: bool = typer.Option(
        True, "--scan-data/--no-scan-data",
        help="Open every image file of a folder data set before training starts."),
    allow_root: list[Path] = allow_root_option(),
) -> None:
    """Train a spec with the seed's recipe (SGD + Nesterov, linear lr scaling, step/cosine).

    With no arguments: a small ResNeXt on the embedded UCI handwritten digits for 10 epochs,
    >= 97% validation accuracy (about 10 s of CPU time).
    """
    require("torch", "train")
    from resnext_compiler.runtimes.train.config import TrainOverrides
    from resnext_compiler.runtimes.train.runner import execute, prepare_run, resume_config

    if nproc > 1 and gpus > 0:
        raise UserError("use --nproc for CPU processes or --gpus for GPUs, not both")
    rendezvous = _rendezvous(nnodes, node_rank, rdzv_endpoint, resume or run_dir)
    with ExitStack() as stack:
        # a multi-node run's settings go to a node-local directory; global rank 0 publishes them
        staging = (Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="resnext-train-")))
                   if rendezvous is not None else None)
        if resume is not None:
            given = [flag for flag, value in (
                ("SPEC", spec), ("--data", data), ("--dataset", dataset),
                ("--batch-size", batch_size), ("--schedule", schedule),
                ("--milestones", milestones), ("--warmup-epochs", warmup_epochs),
                ("--weight-decay", weight_decay), ("--label-smoothing", label_smoothing),
                ("--augment", augment), ("--run-dir", run_dir), ("--weights", weights))
                if value is not None]
            if given:
                raise UserError(f"--resume continues with the run's own settings; drop "
                                f"{', '.join(given)} (only --epochs and --lr may change)")
            notices: list[str] = []
            config, data_splits = resume_config(resume, epochs, lr, staging, nnodes,
                                                notices), None
            for line in notices:
                typer.echo(sanitise(line))
        else:
            from resnext_compiler.pretrained import weights_source

            init_weights, _ = weights_source(weights)
            if init_weights is not None and not init_weights.is_file():
                raise UserError(f"weights file not found: {init_weights}")
            overrides = TrainOverrides(
                dataset=dataset, data_dir=str(data) if data is not None else None,
                epochs=epochs, batch_size=batch_size, lr=lr, schedule=schedule,
                milestones=_milestones(milestones), warmup_epochs=warmup_epochs,
                weight_decay=weight_decay, label_smoothing=label_smoothing, augment=augment,
                accum_steps=accum_steps, nproc=max(nproc, gpus, 1), nnodes=nnodes,
                device=_device(device, gpus), amp=amp, amp_dtype=amp_dtype,
                channels_last=channels_last, compile=compile_model, seed=seed, workers=workers,
                threads=threads,
                init_weights=str(init_weights.resolve()) if init_weights is not None else None)
            config, data_splits = prepare_run(spec, overrides, run_dir, staging, scan_data,
                                              log=lambda line: typer.echo(sanitise(line)))
        summary = execute(config, resume=resume is not None, data=data_splits,
                          rendezvous=rendezvous, staging=staging)
    for line in summary.lines():
        typer.echo(sanitise(line, keep_newlines=True))
    if summary.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)


def _is_artifact(path: Path) -> bool:
    """A compiled model (ONNX file or Triton model folder/repository), not a spec."""
    return path.is_dir() or path.suffix.lower() == ".onnx"


def evaluate_command(
    model: Path = typer.Argument(
        ..., metavar="SPEC|MODEL.onnx|REPO",
        help="A spec with --weights (e.g. RUN/spec.yaml), or a compiled ONNX file or Triton "
        "repository, measured with the preprocessing and class names it records.",
        show_default=False),
    weights: Path | None = typer.Option(
        None, "--weights", "-w", help="With a SPEC: .safetensors, train checkpoint, .pt, or "
        "pretrained by name (torchvision:resnext50_32x4d, timm:seresnext50_32x4d, ...)."),
    data: Path | None = typer.Option(
        None, "--data", help="Data folder (DIR/val/<class>/ or, for artifacts, DIR/<class>/; "
        "not needed for the embedded digits)."),
    dataset: str | None = typer.Option(None, "--dataset", help="With a SPEC; default: the "
                                       "spec's."),
    batch_size: int = typer.Option(256, "--batch-size", callback=number_range(1, MAX_BATCH)),
    device: str = DEVICE.option(),
    workers: int = WORKERS.option(),
    predictions: Path | None = typer.Option(
        None, "--predictions", help="Write each image's top-1 answer as CSV "
        "(image,target,predicted,label,logit)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    allow_root: list[Path] = allow_root_option(),
) -> None:
    """Single-crop top-1/top-5 error on the validation split (the paper's table metric)."""
    from resnext_compiler.runtimes.evaluation import write_predictions

    if not model.exists():
        raise UserError(f"model or spec not found: {model}")
    if _is_artifact(model):
        from resnext_compiler.runtimes.evaluation import evaluate_artifact

        if weights is not None or dataset is not None:
            raise UserError(f"{model} is a compiled model: it carries its weights and "
                            "preprocessing; drop --weights/--dataset")
        if data is None:
            raise UserError("evaluating a compiled model needs --data DIR (class folders)")
        result, answers, description, classes = evaluate_artifact(
            model, data, min(batch_size, 1024), device)
    else:
        require("torch", "evaluate SPEC --weights")
        from resnext_compiler.pretrained import weights_source
        from resnext_compiler.runtimes.train.evaluate import evaluate_weights

        if weights is None:
            raise UserError(f"evaluating the spec {model} needs --weights W (or give a compiled "
                            "MODEL.onnx)")
        weights, _ = weights_source(weights)
        result, answers, description, classes = evaluate_weights(
            model, weights, dataset, str(data) if data is not None else None, batch_size,
            _device(device, 0), workers)
    if predictions is not None:
        write_predictions(predictions, answers, classes)
    if as_json:
        typer.echo(json.dumps({"top1_error": result.top1_error, "top5_error": result.top5_error,
                               "loss": result.loss, "images": result.images}))
    else:
        typer.echo(sanitise(f"{description}\nsingle-crop top-1 error {result.top1_error:.2f}%, "
                            f"top-5 error {result.top5_error:.2f}% on {result.images} images",
                            keep_newlines=True))


def plot_command(
    runs: list[Path] = typer.Argument(..., help="Run directories.", show_default=False),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="PNG (default: RUN/curves.png, or curves.png for several)."),
    title: str | None = typer.Option(None, "--title"),
    allow_root: list[Path] = allow_root_option(),
) -> None:
    """Top-1 error against epochs, train dashed and val solid (like the paper's Figure 5)."""
    require("matplotlib", "plot")
    from resnext_compiler.runtimes.train.plot import plot_runs

    target = output or (runs[0] / "curves.png" if len(runs) == 1 else Path("curves.png"))
    typer.echo(sanitise(f"wrote {plot_runs(runs, target, title)}"))


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    app.command("plot")(plot_command)
