"""Start or resume a run: prepare the run directory, check the data, then train in this process
or in `nproc` torchrun workers, and summarise the result from the run directory.

A run directory holds `spec.yaml` (the spec with the `train:` values this run used and its
resolved `preprocess:` input contract), `labels.txt` (the class names, one per line, which
spec.yaml names), `train.json` (every resolved setting), `metrics.jsonl`/`metrics.csv`,
`checkpoints/last.pt` and `model.safetensors`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from resnext_compiler.artifacts import write_text_atomic
from resnext_compiler.errors import ResnextError, UserError, sanitise
from resnext_compiler.input_contract import labels_text
from resnext_compiler.named_files import LABELS, RUN_SETTINGS, read_named_text
from resnext_compiler.naming import file_stem
from resnext_compiler.runtimes.train.checkpoint import CHECKPOINT, WEIGHTS
from resnext_compiler.runtimes.train.config import (
    TrainConfig,
    TrainOverrides,
    effective_spec,
    resolve_config,
)
from resnext_compiler.runtimes.train.datasets import DataSplits
from resnext_compiler.runtimes.train.distributed import DistContext, Rendezvous
from resnext_compiler.runtimes.train.image_check import check_image_files, dataset_files
from resnext_compiler.runtimes.train.metrics import read_metrics
from resnext_compiler.runtimes.train.schedule import LRSchedule
from resnext_compiler.spec import Spec, load_spec

CONFIG_FILE = "train.json"
LABELS_FILE = "labels.txt"
DEFAULT_SPEC = "default_spec.yaml"


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    spec_name: str
    epochs: int
    history: list[dict[str, Any]]
    interrupted: bool
    reference_top1_error: float | None

    @property
    def final(self) -> dict[str, Any] | None:
        return self.history[-1] if self.history else None

    def lines(self) -> list[str]:
        out = []
        final = self.final
        if final is not None:
            line = (f"{self.spec_name}: val top-1 error {final['val_top1_error']:.2f}% "
                    f"(accuracy {100 - final['val_top1_error']:.2f}%), top-5 error "
                    f"{final['val_top5_error']:.2f}% after {final['epoch']} epoch(s)")
            if self.reference_top1_error is not None:
                line += f"; this spec's reference: top-1 error <= {self.reference_top1_error}%"
            out.append(line)
        if self.interrupted:
            out.append(f"interrupted: state saved to {self.run_dir / CHECKPOINT}; continue with\n"
                       f"  resnext-compile train --resume {self.run_dir}")
        out.append(f"run directory: {self.run_dir}")
        if (self.run_dir / WEIGHTS).is_file():
            out.append("export it with:\n  resnext-compile "
                       f"{self.run_dir / 'spec.yaml'} --weights {self.run_dir / WEIGHTS} "
                       f"-o {self.run_dir / 'model.onnx'}")
        return out


def default_spec_path(stack: ExitStack) -> Path:
    """The small spec `resnext-compile train` uses with no arguments (package data)."""
    resource = resources.files("resnext_compiler.runtimes.train").joinpath(DEFAULT_SPEC)
    return stack.enter_context(resources.as_file(resource))


def default_run_dir(spec: Spec, root: Path = Path("runs")) -> Path:
    """`runs/<name>-<date>`, the name sanitised as compile's outputs are: a spec named
    `../../x` or `/etc` still gets a folder directly under `root`."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = file_stem(spec.name)
    candidate = root / f"{name}-{stamp}"
    suffix = 2
    while candidate.exists():
        candidate = root / f"{name}-{stamp}-{suffix}"
        suffix += 1
    return candidate


def prepare_run(spec_path: Path | None, overrides: TrainOverrides, run_dir: Path | None,
                staging: Path | None = None, scan_data: bool = True,
                log: Callable[[str], None] | None = None) -> tuple[TrainConfig, DataSplits]:
    """Resolve settings, check the spec and data, and write spec.yaml + train.json.

    They go to the run directory, or with `staging` (a multi-node run) to that node-local
    directory, from which global rank 0 publishes them. `scan_data` opens every image file of a
    folder data set first (runtimes/train/image_check), so a damaged file stops the run before
    its directory exists. `log` hears what is being prepared (reading CIFAR or a large folder
    takes a while before the first step). Returns the data set opened for the check too;
    `execute` reuses it in this process, so a folder is listed once.
    """
    from resnext_compiler.pipeline import compile_spec
    from resnext_compiler.runtimes.train.datasets import open_dataset
    from resnext_compiler.runtimes.train.loop import check_batch_fits

    with ExitStack() as stack:
        path = spec_path if spec_path is not None else default_spec_path(stack)
        if not path.is_file():
            raise UserError(f"spec file not found: {path}")
        spec = load_spec(path)
    compile_spec(spec)  # located spec errors before anything is written
    if run_dir is None:
        if staging is not None:
            raise UserError("a multi-node run needs --run-dir (the same path on every node, "
                            "on a shared filesystem)")
        run_dir = default_run_dir(spec)
    if (run_dir / CHECKPOINT).exists():
        raise UserError(f"{run_dir} already holds a run; continue it with "
                        f"`resnext-compile train --resume {run_dir}` or choose another --run-dir")
    config = resolve_config(spec, overrides, run_dir)
    say = log or (lambda line: None)
    say(f"preparing data: {config.dataset}"
        + (f" from {config.data_dir}" if config.data_dir is not None else "")
        + " (reading and decoding the images)")
    data = open_dataset(spec, config.dataset, config.data_dir, config.augment, config.seed)
    check_batch_fits(len(data.train), config.batch_size)
    files = dataset_files(data.train, data.val) if scan_data else []
    if files:
        say(f"checking that all {len(files)} image files open (--no-scan-data skips this)")
        started = time.monotonic()
        check_image_files(files)
        data = replace(data, description=f"{data.description}; all {len(files)} image files "
                                         f"readable (scan {time.monotonic() - started:.1f} s)")
    target = staging if staging is not None else run_dir
    target.mkdir(parents=True, exist_ok=True)
    # The labels file first: spec.yaml names it.
    write_text_atomic(target / LABELS_FILE, labels_text(data.contract.labels or ()))
    write_text_atomic(target / "spec.yaml",
                      effective_spec(spec, config, data.contract, LABELS_FILE).to_yaml())
    write_text_atomic(target / CONFIG_FILE, config.to_json())
    return config, data


def resume_config(run_dir: Path, epochs: int | None = None, lr: float | None = None,
                  staging: Path | None = None, nnodes: int | None = None,
                  notices: list[str] | None = None) -> TrainConfig:
    """The settings of an existing run, optionally with more epochs or another rate.

    Without `epochs` an interrupted run continues bitwise as if never stopped. Another epoch
    count changes the schedule (cosine, warmup and default milestones depend on it): the run is
    then extended, not continued, and a line saying how the rate moves is added to `notices`.
    With `staging` (a multi-node run) the settings are written there, not into the run.
    """
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise UserError(f"--resume {run_dir}: no such run directory")
    if not path.is_file() or not (run_dir / "spec.yaml").is_file():
        raise UserError(f"--resume {run_dir}: not a run directory (expected {CONFIG_FILE} and "
                        "spec.yaml written by `resnext-compile train`)")
    if not (run_dir / CHECKPOINT).is_file():
        raise UserError(f"--resume {run_dir}: no checkpoint yet (expected {run_dir / CHECKPOINT};"
                        " the run stopped before finishing its first epoch)")
    try:
        config = TrainConfig.from_json(read_named_text(path, RUN_SETTINGS, run_dir))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise UserError(f"{path}: corrupt run settings ({type(exc).__name__}: "
                        f"{str(exc)[:200]}); start a new run instead of --resume") from None
    config = replace(config, run_dir=str(run_dir))
    if nnodes is not None and config.nnodes != nnodes:
        raise UserError(f"{run_dir} was trained on {config.nnodes} node(s); resume it with "
                        f"--nnodes {config.nnodes}" + (" (and --node-rank, --rdzv-endpoint on "
                                                       "each node)" if config.nnodes > 1 else ""))
    before = config
    if epochs is not None:
        if epochs < 1:
            raise UserError(f"--epochs must be at least 1; got {epochs}")
        config = replace(config, epochs=epochs)
    if lr is not None:
        if lr <= 0:
            raise UserError(f"--lr must be positive; got {lr}")
        config = replace(config, lr=lr, lr_from_flag=True)
    done = len(read_metrics(run_dir))
    if done >= config.epochs:
        raise UserError(f"{run_dir} has already finished {done} of {config.epochs} epochs; pass "
                        "--epochs N with a larger N to train longer")
    if notices is not None and config.epochs != before.epochs and done > 0:
        notices.append(_extension_notice(before, config, done))
    if epochs is not None or lr is not None or staging is not None:
        target = staging if staging is not None else run_dir
        if staging is not None and (run_dir / LABELS_FILE).is_file():
            write_text_atomic(staging / LABELS_FILE,
                              read_named_text(run_dir / LABELS_FILE, LABELS, run_dir))
        spec = load_spec(run_dir / "spec.yaml")
        write_text_atomic(target / "spec.yaml", effective_spec(spec, config).to_yaml())
        write_text_atomic(target / CONFIG_FILE, config.to_json())
    return config


def _extension_notice(before: TrainConfig, after: TrainConfig, done: int) -> str:
    """How the rate moves when a run of `before.epochs` becomes one of `after.epochs`."""
    def rate(config: TrainConfig, epoch: int) -> float:  # at the start of a 0-based epoch
        return LRSchedule(config.lr, config.schedule, config.epochs, 1, config.milestones,
                          config.warmup_epochs).lr(epoch, 0)

    old, new = rate(before, done - 1), rate(after, done)
    return (f"extending a run of {before.epochs} epochs to {after.epochs}: the {after.schedule} "
            f"schedule is recomputed for {after.epochs} epochs (lr {old:.3g} at epoch {done}, "
            f"{new:.3g} at epoch {done + 1}); the result is not bitwise a {after.epochs}-epoch "
            "run from the start")


def _comparable(config: TrainConfig, spec_text: str) -> dict[str, object]:
    """What every node must agree on: the settings, the spec and the run. Paths may be spelled
    differently per node (a shared filesystem mounted elsewhere), as may loader threads, so
    the run is compared by its folder's name and the data by what was resolved from it."""
    settings = {key: value for key, value in json.loads(config.to_json()).items()
                if key not in ("data_dir", "workers", "threads", "run_dir")}
    settings["run"] = Path(config.run_dir).name
    settings["spec"] = hashlib.sha256(spec_text.encode()).hexdigest()[:16]
    return settings


def _differences(other: dict[str, object], main: dict[str, object], rank: int) -> list[str]:
    return [f"{key} ({sanitise(str(main.get(key)))[:60]} on rank 0, "
            f"{sanitise(str(other.get(key)))[:60]} on rank {rank})"
            for key in sorted(set(other) | set(main)) if other.get(key) != main.get(key)]


def publish_staged_run(staging: Path, config: TrainConfig, context: DistContext) -> None:
    """In every worker of a multi-node run: check that all nodes resolved the same run, then
    global rank 0 (alone) writes labels.txt, spec.yaml and train.json into the run directory."""
    import torch.distributed as dist

    spec_text = read_named_text(staging / "spec.yaml", RUN_SETTINGS, staging)
    resolved: list[dict | None] = [None] * context.world_size
    dist.all_gather_object(resolved, _comparable(config, spec_text))
    differing = [rank for rank, settings in enumerate(resolved) if settings != resolved[0]]
    if differing:
        other = context.rank if context.rank in differing else differing[0]
        detail = "; ".join(_differences(resolved[other] or {}, resolved[0] or {}, other))
        raise UserError(f"ranks {differing} resolved different settings or spec than rank 0: "
                        f"{detail}. Run the same command (same spec file, data and flags) on "
                        "every node")
    if context.is_main:
        run_dir = Path(config.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if (staging / LABELS_FILE).is_file():  # first: spec.yaml names it
            write_text_atomic(run_dir / LABELS_FILE,
                              read_named_text(staging / LABELS_FILE, LABELS, staging))
        write_text_atomic(run_dir / "spec.yaml", spec_text)
        write_text_atomic(run_dir / CONFIG_FILE,
                          read_named_text(staging / CONFIG_FILE, RUN_SETTINGS, staging))
    context.barrier()


def _launch_workers(config: TrainConfig, resume: bool, config_path: Path,
                    rendezvous: Rendezvous | None) -> None:
    from resnext_compiler.runtimes.train.distributed import launch

    args = ["--resume"] if resume else []
    process = launch(config_path, config.nproc, args, rendezvous)
    while True:
        try:
            code = process.wait()
            break
        except KeyboardInterrupt:  # workers got the signal too; wait for them to save
            continue
    if code == 2:  # a worker's user error, which it has printed
        raise UserError("training stopped in a worker process; see the message above")
    if code != 0:
        raise ResnextError(f"training failed in a worker process (exit code {code}); "
                           "see the messages above")


def execute(config: TrainConfig, resume: bool = False, data: DataSplits | None = None,
            rendezvous: Rendezvous | None = None, staging: Path | None = None) -> RunSummary:
    """Train to `config.epochs` and summarise; raises on failure, returns when interrupted.

    `data`, when given, is the opened data set (single-process runs use it directly). A
    multi-node run passes its `rendezvous` and the `staging` directory its settings were
    written to.
    """
    from resnext_compiler.runtimes.train.loop import train_process

    run_dir = Path(config.run_dir)
    if config.nnodes > 1 and (rendezvous is None or staging is None):
        raise UserError(f"this run trains on {config.nnodes} nodes; pass --nnodes "
                        f"{config.nnodes} --node-rank R --rdzv-endpoint HOST:PORT on each")
    if config.world_size > 1:
        config_path = (staging if staging is not None else run_dir) / CONFIG_FILE
        _launch_workers(config, resume, config_path, rendezvous)
    else:
        train_process(config, DistContext(), resume, data)
    history = read_metrics(run_dir)
    spec = load_spec(run_dir / "spec.yaml")
    reference = spec.reference.top1_error if spec.reference is not None else None
    return RunSummary(run_dir, spec.name, config.epochs, history,
                      interrupted=len(history) < config.epochs,
                      reference_top1_error=reference)
