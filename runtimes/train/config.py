"""The resolved settings of one training run: the spec's `train:` section plus CLI overrides.

Learning-rate scaling follows the seed (facebookresearch/ResNeXt `opts.lua`, Goyal et al. 2017):
the spec's `(batch_size, lr)` pair is a reference point and the rate scales linearly with the
global batch (ImageNet 256 -> 0.1; CIFAR 128 -> 0.1, 64 -> 0.05, 32 -> 0.025).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from resnext_compiler.dataset_types import AUGMENTS, dataset_type, dataset_types
from resnext_compiler.errors import UserError
from resnext_compiler.input_contract import InputContract
from resnext_compiler.limits import DEFAULT_WORKERS, SCHEDULES
from resnext_compiler.spec import Spec

AMP_DTYPES = ("bf16", "fp16")


@dataclass(frozen=True)
class TrainOverrides:
    """CLI flags; None means "take the spec's value"."""

    dataset: str | None = None
    data_dir: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    schedule: str | None = None
    milestones: tuple[int, ...] | None = None
    warmup_epochs: int | None = None
    weight_decay: float | None = None
    label_smoothing: float | None = None
    augment: str | None = None
    accum_steps: int = 1
    nproc: int = 1  # processes per node
    nnodes: int = 1
    device: str = "cpu"  # cpu | cuda
    amp: bool = False
    amp_dtype: str | None = None  # default: bf16 on CPU, fp16 on CUDA
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    workers: int = DEFAULT_WORKERS
    threads: int = 0  # 0: PyTorch's default (one per core)
    init_weights: str | None = None  # a local file (a pretrained name is fetched by the CLI)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training process needs; stored as `train.json` in the run directory."""

    run_dir: str
    dataset: str
    data_dir: str | None
    epochs: int
    batch_size: int  # global batch per optimizer step
    lr: float  # rate at `batch_size`
    reference_batch: int  # the spec's (batch_size, lr) pair the rate was scaled from
    reference_lr: float
    lr_from_flag: bool
    schedule: str
    milestones: tuple[int, ...]
    warmup_epochs: int
    weight_decay: float
    momentum: float
    nesterov: bool
    label_smoothing: float
    augment: str
    accum_steps: int = 1
    nproc: int = 1  # processes per node
    nnodes: int = 1  # machines, each running `nproc` processes (torchrun c10d rendezvous)
    device: str = "cpu"
    amp_dtype: str | None = None  # None: fp32
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    workers: int = DEFAULT_WORKERS
    threads: int = 0
    eval_batch_size: int = 256
    init_weights: str | None = None  # fine-tuning: the weights the run starts from

    @property
    def world_size(self) -> int:
        """Training processes over all nodes."""
        return self.nnodes * self.nproc

    @property
    def micro_batch(self) -> int:
        """Images per forward pass in one process."""
        return self.batch_size // (self.world_size * self.accum_steps)

    def describe_lr(self) -> str:
        if self.lr_from_flag:
            return f"lr {self.lr:g} (from --lr)"
        return (f"lr {self.lr:g} = {self.reference_lr:g} x {self.batch_size}/{self.reference_batch}"
                f" (linear scaling from the spec's batch {self.reference_batch} -> lr "
                f"{self.reference_lr:g})")

    def describe_schedule(self) -> str:
        if self.schedule == "cosine":
            text = "cosine"
        else:
            text = "step x0.1 at epochs " + (", ".join(map(str, self.milestones)) or "(none)")
        if self.warmup_epochs:
            text += f", {self.warmup_epochs} warmup epoch(s)"
        return text

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        known = {f.name: f.type for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        milestones = data.get("milestones", ())
        if not isinstance(milestones, list) or not all(_is_int(m) for m in milestones):
            raise ValueError("milestones must be a list of integers")
        data["milestones"] = tuple(milestones)
        for name, value in data.items():
            if name != "milestones" and not _has_type(value, str(known[name])):
                raise ValueError(f"{name} must be {known[name]}, got {str(value)[:40]!r}")
        return cls(**data)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _has_type(value: object, annotation: str) -> bool:
    """Whether a JSON value fits a field annotated `int`, `float`, `str`, `bool` or `X | None`."""
    if value is None:
        return annotation.endswith("| None")
    base = annotation.removesuffix(" | None")
    if base == "int":
        return _is_int(value)
    if base == "float":
        return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)
    return isinstance(value, {"str": str, "bool": bool}.get(base, object))


def scaled_lr(reference_lr: float, reference_batch: int, batch_size: int) -> float:
    """Linear scaling rule: the rate grows with the global batch (Goyal et al. 2017)."""
    return reference_lr * batch_size / reference_batch


def default_milestones(dataset: str, epochs: int) -> tuple[int, ...]:
    """ImageNet: x0.1 every 30 epochs (seed, He et al. 2016); CIFAR-style: at 50% and 75%."""
    known = dataset_type(dataset)
    if known is not None and known.image_folders:
        return tuple(range(30, epochs, 30))
    return tuple(sorted({max(1, math.ceil(epochs * 0.5)), max(1, math.ceil(epochs * 0.75))}))


def _check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{flag} must be one of {', '.join(choices)}; got {value!r}")


def resolve_config(spec: Spec, overrides: TrainOverrides, run_dir: Path) -> TrainConfig:
    """Merge the spec's `train:` defaults with CLI overrides and check they fit together."""
    train = spec.train
    o = overrides
    dataset = o.dataset or train.dataset
    _check_choice("--dataset", dataset, tuple(dataset_types()))
    schedule = o.schedule or train.schedule
    _check_choice("--schedule", schedule, SCHEDULES)
    augment = o.augment or train.augment
    _check_choice("--augment", augment, AUGMENTS)
    epochs = o.epochs if o.epochs is not None else train.epochs
    batch_size = o.batch_size if o.batch_size is not None else train.batch_size
    for flag, value in (("--epochs", epochs), ("--batch-size", batch_size),
                        ("--accum-steps", o.accum_steps), ("--nproc/--gpus", o.nproc),
                        ("--nnodes", o.nnodes)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1; got {value}")
    world_size = o.nproc * o.nnodes
    if batch_size % (world_size * o.accum_steps):
        raise UserError(
            f"the global batch {batch_size} does not split evenly over {world_size} process(es) "
            f"x {o.accum_steps} accumulation step(s); choose --batch-size as a multiple of "
            f"{world_size * o.accum_steps}")
    if o.lr is not None and o.lr <= 0:
        raise UserError(f"--lr must be positive; got {o.lr}")
    # The spec's warmup is a default: a run shorter than it warms up for all but its last
    # epoch (`--epochs 1`: none). An explicit --warmup-epochs must fit.
    warmup = (o.warmup_epochs if o.warmup_epochs is not None
              else min(train.warmup_epochs, epochs - 1))
    if warmup < 0 or (warmup > 0 and warmup >= epochs):
        raise UserError(f"--warmup-epochs must be between 0 and epochs - 1 ({epochs - 1}); "
                        f"got {warmup}")
    milestones = o.milestones if o.milestones is not None else train.milestones
    if milestones is None:
        milestones = default_milestones(dataset, epochs)
    if list(milestones) != sorted(set(milestones)) or any(m < 1 for m in milestones):
        raise UserError(f"milestones must be increasing positive epochs; got {list(milestones)}")
    amp_dtype = None
    if o.amp:
        amp_dtype = o.amp_dtype or ("bf16" if o.device == "cpu" else "fp16")
        _check_choice("--amp-dtype", amp_dtype, AMP_DTYPES)
        if amp_dtype == "fp16" and o.device == "cpu":
            raise UserError("fp16 autocast needs a GPU; on CPU use --amp-dtype bf16")
    kind = dataset_types()[dataset]
    if o.data_dir is not None and not kind.needs_data_dir:
        # --data never goes unused: a spec whose data set is built in must be told what DIR is
        source = "--dataset" if o.dataset else "the spec's train.dataset"
        readers = "; ".join(f"--dataset {d.name} ({d.description})"
                            for d in dataset_types().values() if d.needs_data_dir)
        raise UserError(f"--data {o.data_dir} is not used by the {dataset} data set ({source}); "
                        f"to train on it add one of: {readers}")
    if o.data_dir is None and kind.needs_data_dir:
        raise UserError(f"the {dataset} data set needs --data DIR (nothing is downloaded); "
                        "run `resnext-compile train` with no arguments for the embedded digits")
    lr = o.lr if o.lr is not None else scaled_lr(train.lr, train.batch_size, batch_size)
    return TrainConfig(
        run_dir=str(run_dir), dataset=dataset, data_dir=o.data_dir, epochs=epochs,
        batch_size=batch_size, lr=lr, reference_batch=train.batch_size, reference_lr=train.lr,
        lr_from_flag=o.lr is not None, schedule=schedule, milestones=tuple(milestones),
        warmup_epochs=warmup,
        weight_decay=o.weight_decay if o.weight_decay is not None else train.weight_decay,
        momentum=train.momentum, nesterov=train.nesterov,
        label_smoothing=(o.label_smoothing if o.label_smoothing is not None
                         else train.label_smoothing),
        augment=augment, accum_steps=o.accum_steps, nproc=o.nproc, nnodes=o.nnodes,
        device=o.device,
        amp_dtype=amp_dtype, channels_last=o.channels_last, compile=o.compile, seed=o.seed,
        workers=o.workers, threads=o.threads, init_weights=o.init_weights,
    )


def effective_spec(spec: Spec, config: TrainConfig, contract: InputContract | None = None,
                   labels_file: str | None = None) -> Spec:
    """The spec with its `train:` section set to what this run used (written as spec.yaml) and,
    given a contract, its `preprocess:` section resolved (class names in `labels_file`)."""
    from resnext_compiler.input_contract import preprocess_section
    from resnext_compiler.spec import PreprocessSpec, TrainSpec

    train = TrainSpec(
        dataset=config.dataset, epochs=config.epochs, batch_size=config.batch_size,
        lr=config.lr, schedule=config.schedule, milestones=list(config.milestones) or None,
        warmup_epochs=config.warmup_epochs, weight_decay=config.weight_decay,
        momentum=config.momentum, nesterov=config.nesterov,
        label_smoothing=config.label_smoothing, augment=config.augment)
    update: dict = {"train": train}
    if contract is not None:
        update["preprocess"] = PreprocessSpec(**preprocess_section(contract, labels_file))
    resolved = spec.model_copy(update=update)
    resolved._source = spec._source
    return resolved
