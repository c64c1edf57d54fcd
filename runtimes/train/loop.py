"""The training loop of one process (rank): the seed's recipe (facebookresearch/ResNeXt
`train.lua`): SGD with Nesterov momentum 0.9, weight decay on every parameter, cross-entropy
(optionally label-smoothed), a step or cosine schedule, per-epoch validation.

Determinism: the model is built from `seed`, the sample order and augmentation are functions
of (seed, epoch, index), and the global generator (dropout) is re-seeded from
(seed, rank, epoch, step) before every step, so a resumed run replays an uninterrupted one
bit for bit on CPU. Only rank 0 writes files; per-step sums are all-reduced.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from resnext_compiler.backends.torch_module import build_module, load_weights
from resnext_compiler.errors import ResnextError, UserError
from resnext_compiler.ir import Graph
from resnext_compiler.runtimes.train.checkpoint import (
    CHECKPOINT,
    WEIGHTS,
    load_training_state,
    portable_state,
    save_training_state,
    save_weights,
)
from resnext_compiler.runtimes.train.config import TrainConfig
from resnext_compiler.runtimes.train.datasets import DataSplits, open_dataset
from resnext_compiler.runtimes.train.distributed import DistContext
from resnext_compiler.runtimes.train.evaluate import autocast, evaluate_model
from resnext_compiler.runtimes.train.loader import batches
from resnext_compiler.runtimes.train.metrics import batch_sums, write_metrics
from resnext_compiler.runtimes.train.progress import Progress
from resnext_compiler.runtimes.train.sampler import GlobalBatchSampler
from resnext_compiler.runtimes.train.schedule import LRSchedule
from resnext_compiler.runtimes.train.seeding import sample_hash
from resnext_compiler.spec import Spec
from resnext_compiler.weights import fine_tune_weights

TINY_STEP_MACS = 100e6


class TrainingDiverged(ResnextError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class LoopResult:
    history: list[dict[str, Any]]
    interrupted: bool = False


class _StopRequest:
    """SIGINT/SIGTERM set a flag; the loop saves at the end of the step and exits."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        with contextlib.suppress(ValueError):  # not the main thread: no handlers
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def network_hash(spec: Spec) -> str:
    """Identity of the network alone: a resumed run may change `train:` (lr, epochs)."""
    from resnext_compiler.spec import TrainSpec

    return spec.model_copy(update={"train": TrainSpec()}).spec_hash()


def cpu_threads(config: TrainConfig, graph: Graph) -> int:
    """`--threads`, else one thread for tiny networks, else PyTorch's choice.

    Below ~100 M multiply-accumulates per micro-batch the tensors are too small for intra-op
    threads to pay off, and on shared cores their spin-waiting makes steps many times slower.
    """
    from resnext_compiler.passes.complexity import analyse

    if config.threads > 0:
        return config.threads
    if analyse(graph).macs * config.micro_batch < TINY_STEP_MACS:
        return 1
    return torch.get_num_threads()


def check_batch_fits(train_images: int, batch_size: int) -> None:
    if train_images < batch_size:
        raise UserError(f"the training split has {train_images} images, fewer than one global "
                        f"batch of {batch_size}; lower --batch-size")


def _step_seed(config: TrainConfig, rank: int, epoch: int, step: int) -> int:
    return int(sample_hash(config.seed, epoch, torch.tensor([step]), 1000 + rank)[0])


def _ddp_no_sync(model: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager:
    if last or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


class Trainer:
    """One rank's model, optimizer and data; `run()` trains to `config.epochs`."""

    def __init__(self, config: TrainConfig, context: DistContext, progress: Progress,
                 data: DataSplits | None = None, spec_path: Path | None = None):
        from resnext_compiler.pipeline import compile_spec
        from resnext_compiler.spec import load_spec

        self.config, self.context, self.progress = config, context, progress
        self.run_dir = Path(config.run_dir)
        self.spec = load_spec(spec_path or self.run_dir / "spec.yaml")
        self.device = torch.device(
            "cpu" if config.device == "cpu" else f"cuda:{context.local_rank}")
        if data is None:
            data = open_dataset(self.spec, config.dataset, config.data_dir, config.augment,
                                config.seed)
        self.data = data
        self.sampler = GlobalBatchSampler(len(self.data.train), config.batch_size,
                                          context.world_size, context.rank,
                                          config.accum_steps, config.seed)
        check_batch_fits(len(data.train), config.batch_size)
        self.schedule = LRSchedule(config.lr, config.schedule, config.epochs,
                                   self.sampler.steps_per_epoch, config.milestones,
                                   config.warmup_epochs)
        self.graph = compile_spec(self.spec)
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads(config, self.graph))
        self.model = build_module(self.graph, seed=config.seed).to(self.device)
        if config.init_weights is not None:
            weights, fresh = fine_tune_weights(self.graph, config.init_weights, config.seed)
            load_weights(self.model, weights)
            if fresh:
                progress.log(f"fine-tuning: {', '.join(fresh)} initialised afresh (the "
                             f"weights have another class count)")
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=config.lr, momentum=config.momentum,
            weight_decay=config.weight_decay, nesterov=config.nesterov and config.momentum > 0)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=config.amp_dtype == "fp16")
        self.history: list[dict[str, Any]] = []
        self.position = (0, 0)  # (epoch, step) of the next optimizer step
        self.partial = torch.zeros(4, dtype=torch.float64)  # sums of the unfinished epoch
        self.train_seconds = 0.0
        self.forward = self._wrap()

    def _wrap(self) -> torch.nn.Module:
        model: torch.nn.Module = self.model
        if self.context.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.context.local_rank] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        self.ddp = model
        if self.config.compile:
            model = torch.compile(model)  # type: ignore[assignment]
        return model

    # --- state -------------------------------------------------------------------------

    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def state(self) -> dict[str, Any]:
        return {
            "model": portable_state(self.model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "schedule": {"kind": self.config.schedule, "base_lr": self.config.lr},
            "rng": {"seed": self.config.seed, "torch": torch.get_rng_state()},
            "position": {"epoch": self.position[0], "step": self.position[1]},
            "partial": self.partial.clone(),
            "train_seconds": self.train_seconds,
            "history": self.history,
            "spec_hash": network_hash(self.spec),
        }

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("spec_hash") != network_hash(self.spec):
            raise UserError(f"the network in {self.run_dir / 'spec.yaml'} changed since the "
                            "checkpoint was written; resume needs the spec the run started with")
        load_weights(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        self.position = (int(state["position"]["epoch"]), int(state["position"]["step"]))
        self.partial = state["partial"].to(torch.float64)
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.history = list(state["history"])
        if self.context.is_main:  # a kill between checkpoint and metrics leaves them behind
            write_metrics(self.run_dir, self.history)

    def save(self) -> None:
        """Rank 0 writes last.pt, then model.safetensors and the metrics log; the other ranks
        wait for it, so no node's launcher reads the run directory half-written."""
        if self.context.is_main:
            save_training_state(self.checkpoint_path(), self.state())
            save_weights(self.run_dir / WEIGHTS, self.model.state_dict(),
                         metadata={"spec": self.spec.name, "epoch": str(self.position[0])})
            write_metrics(self.run_dir, self.history)
        self.context.barrier()

    # --- training ----------------------------------------------------------------------

    def _micro_step(self, x: torch.Tensor, y: torch.Tensor, last: bool) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _ddp_no_sync(self.ddp, last):
            with autocast(self.device.type, self.config.amp_dtype):
                logits = self.forward(x)
            logits = logits.float()
            loss = F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing)
            self.scaler.scale(loss / self.config.accum_steps).backward()
        return batch_sums(loss.detach().double() * len(y), logits, y)

    def train_step(self, micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]], lr: float,
                   stop: bool = False) -> torch.Tensor:
        """One optimizer step over `accum_steps` micro-batches at rate `lr`.

        Returns the sums over all ranks [loss, top-1 misses, top-5 misses, images, stop
        requests]; when the loss is not finite the optimizer step is skipped.
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(4, dtype=torch.float64)
        for j, (x, y) in enumerate(micro_batches):
            sums += self._micro_step(x, y, last=j == self.config.accum_steps - 1)
        flag = torch.tensor([1.0 if stop else 0.0], dtype=torch.float64)
        reduced = self.context.all_reduce_sum(torch.cat([sums, flag]))
        if math.isfinite(float(reduced[0])):
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return reduced

    def _lower_rate(self) -> float:
        """The rate to suggest after a divergence: the spec's recipe scaled to this batch when
        the run used more than that (a mistyped --lr), else a tenth of the run's rate."""
        from resnext_compiler.runtimes.train.config import scaled_lr

        recipe = scaled_lr(self.config.reference_lr, self.config.reference_batch,
                           self.config.batch_size)
        return recipe if recipe < self.config.lr else self.config.lr / 10

    def _diverged(self, epoch: int, step: int, lr: float) -> TrainingDiverged:
        path = self.checkpoint_path()
        where = f"loss became NaN/inf at epoch {epoch + 1}, step {step + 1} (lr {lr:.4g})"
        hint = " or train in fp32" if self.config.amp_dtype else ""
        if not path.is_file():
            return TrainingDiverged(
                f"{where}; training stopped before any checkpoint was written. Start again with "
                f"a lower --lr (e.g. {self._lower_rate():.4g}) or --warmup-epochs{hint}")
        return TrainingDiverged(
            f"{where}; training stopped and the last good checkpoint {path} (after epoch "
            f"{len(self.history)}) is unchanged. Continue from it with a lower rate{hint}: "
            f"resnext-compile train --resume {self.run_dir} --lr {self._lower_rate():.4g}")

    def _train_epoch(self, epoch: int, start_step: int, stop: _StopRequest) -> bool:
        """Train one epoch from `start_step`; False when a stop was requested and saved."""
        config = self.config
        steps = self.sampler.steps_per_epoch
        plan = self.sampler.micro_batches(epoch, start_step)
        jobs = [indices for step_jobs in plan for indices in step_jobs]
        stream = batches(self.data.train, jobs, epoch, config.workers)
        self.progress.start_epoch(epoch + 1, config.epochs, steps, start_step,
                                  images_per_step=config.batch_size)
        self.model.train()
        started = time.perf_counter()
        for step in range(start_step, steps):
            torch.manual_seed(_step_seed(config, self.context.rank, epoch, step))
            lr = self.schedule.lr(epoch, step)
            micro = (next(stream) for _ in range(config.accum_steps))
            reduced = self.train_step(micro, lr, stop.requested)
            if not math.isfinite(float(reduced[0])):
                raise self._diverged(epoch, step, lr)
            self.partial += reduced[:4]
            n = float(reduced[3])
            self.progress.step(epoch + 1, step + 1, float(reduced[0]) / n,
                               100 * float(reduced[1]) / n, lr)
            if float(reduced[4]) > 0 and step + 1 < steps:
                self.train_seconds += time.perf_counter() - started
                self.position = (epoch, step + 1)
                return False
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.train_seconds += time.perf_counter() - started
        return True

    def _finish_epoch(self, epoch: int) -> dict[str, Any]:
        config = self.config
        val = evaluate_model(self.model, self.data.val, config.eval_batch_size, self.device.type,
                             self.context, config.channels_last, config.amp_dtype,
                             config.workers)
        loss_sum, top1, top5, n = (float(v) for v in self.partial)
        steps = self.sampler.steps_per_epoch
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / n,
            "train_top1_error": 100 * top1 / n,
            "train_top5_error": 100 * top5 / n,
            "val_loss": val.loss,
            "val_top1_error": val.top1_error,
            "val_top5_error": val.top5_error,
            "lr": self.schedule.lr(epoch, steps - 1),
            "images_per_s": n / max(self.train_seconds, 1e-9),
            "epoch_time_s": self.train_seconds,
        }
        self.history.append(row)
        self.partial = torch.zeros(4, dtype=torch.float64)
        self.train_seconds = 0.0
        self.position = (epoch + 1, 0)
        return row

    def run(self) -> LoopResult:
        with _StopRequest() as stop:
            epoch, step = self.position
            while epoch < self.config.epochs:
                if not self._train_epoch(epoch, step, stop):
                    self.progress.close()
                    self.save()
                    return LoopResult(self.history, interrupted=True)
                row = self._finish_epoch(epoch)
                self.save()
                self.progress.end_epoch(row, self.config.epochs)
                if stop.requested:
                    return LoopResult(self.history, interrupted=True)
                epoch, step = epoch + 1, 0
        return LoopResult(self.history)


def describe_start(trainer: Trainer) -> list[str]:
    """The lines logged when a run starts (the seed prints its options the same way)."""
    from resnext_compiler.passes.complexity import analyse

    config, spec = trainer.config, trainer.spec
    cost = analyse(trainer.graph)
    precision = config.amp_dtype + " autocast" if config.amp_dtype else "fp32"
    count = torch.get_num_threads()
    plural = "s" if count != 1 else ""
    threads = f" ({count} thread{plural})" if trainer.device.type == "cpu" else ""
    return [
        f"run directory: {trainer.run_dir}",
        f"spec: {spec.name} ({cost.params:,} params, {cost.macs / 1e6:,.1f} MMACs per image)",
        f"data: {trainer.data.description}",
        f"optimizer: SGD, momentum {config.momentum}"
        + (", Nesterov" if config.nesterov else "")
        + f", weight decay {config.weight_decay:g}, label smoothing {config.label_smoothing:g}",
        f"{config.describe_lr()}",
        f"schedule: {config.describe_schedule()}, {config.epochs} epochs x "
        f"{trainer.sampler.steps_per_epoch} steps",
        f"batch: global {config.batch_size} = {config.world_size} process(es) x "
        f"{config.accum_steps} accumulation step(s) x {config.micro_batch} images",
        f"device: {trainer.device}{threads}, {precision}"
        + (", channels_last" if config.channels_last else "")
        + (", torch.compile" if config.compile else ""),
    ]


def train_process(config: TrainConfig, context: DistContext, resume: bool,
                  data: DataSplits | None = None, spec_path: Path | None = None) -> LoopResult:
    """Build, optionally restore, and run one rank's trainer."""
    progress = Progress(enabled=context.is_main)
    threads = torch.get_num_threads()
    try:
        trainer = Trainer(config, context, progress, data, spec_path)
        if resume:
            trainer.restore(load_training_state(trainer.checkpoint_path()))
            epoch, step = trainer.position
            progress.log(f"resuming {trainer.run_dir} at epoch {epoch + 1}"
                         + (f", step {step + 1}" if step else ""))
        for line in describe_start(trainer):
            progress.log(line)
        return trainer.run()
    finally:
        torch.set_num_threads(threads)  # callers in the same process keep their setting
