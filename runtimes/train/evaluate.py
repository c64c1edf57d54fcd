"""Single-crop top-1 / top-5 error, the metric of the paper's tables (Xie et al. 2017, Table 3-5).

Images go through the model's evaluation transform (its `InputContract`: for ImageNet-style
folders the 224-of-256 centre crop, in proportion for other sizes; CIFAR and digits as they
are), the same one `serve` and `evaluate MODEL.onnx` apply.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F

from resnext_compiler.runtimes.evaluation import EvalResult, Prediction
from resnext_compiler.runtimes.train.distributed import DistContext
from resnext_compiler.runtimes.train.images import ImageSet
from resnext_compiler.runtimes.train.loader import batches
from resnext_compiler.runtimes.train.metrics import batch_sums
from resnext_compiler.runtimes.train.sampler import shard


def autocast(device: str, amp_dtype: str | None) -> contextlib.AbstractContextManager:
    if amp_dtype is None:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp_dtype == "bf16" else torch.float16
    return torch.autocast(device_type=device, dtype=dtype)


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, images: ImageSet, batch_size: int = 256,
                   device: str = "cpu", context: DistContext | None = None,
                   channels_last: bool = False, amp_dtype: str | None = None,
                   workers: int = 0,
                   predictions: list[tuple[int, float]] | None = None) -> EvalResult:
    """Error of `model` on every image of `images` (sharded over ranks, sums all-reduced).

    `predictions` (one process only) receives each image's (top-1 class, its logit), in order.
    """
    context = context or DistContext()
    was_training = model.training
    model.eval()
    indices = shard(len(images), context.world_size, context.rank)
    jobs = list(indices.split(batch_size))
    totals = torch.zeros(4, dtype=torch.float64)  # loss sum, top-1 misses, top-5 misses, n
    for x, y in batches(images, jobs, epoch=0, workers=workers):
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(x)
        logits = logits.float()
        if predictions is not None:
            best = logits.max(dim=1)
            predictions.extend(zip(best.indices.tolist(), best.values.tolist(), strict=True))
        loss = F.cross_entropy(logits, y, reduction="sum")
        totals += batch_sums(loss, logits, y)
    totals = context.all_reduce_sum(totals)
    model.train(was_training)
    n = max(1.0, float(totals[3]))
    return EvalResult(float(totals[0]) / n, 100 * float(totals[1]) / n,
                      100 * float(totals[2]) / n, int(totals[3]))


def evaluate_weights(spec_path: Path, weights: Path, dataset: str | None, data_dir: str | None,
                     batch_size: int = 256, device: str = "cpu", workers: int = 2,
                     ) -> tuple[EvalResult, list[Prediction], str, tuple[str, ...]]:
    """Load SPEC with WEIGHTS and measure it on the validation split of the data set.

    Returns (result, per-image predictions, description, class names).
    """
    from resnext_compiler.backends.torch_module import build_module, load_weights
    from resnext_compiler.pipeline import compile_spec
    from resnext_compiler.runtimes.train.datasets import open_dataset
    from resnext_compiler.spec import load_spec
    from resnext_compiler.weights import model_weights

    spec = load_spec(spec_path)
    chosen = dataset or spec.train.dataset
    data = open_dataset(spec, chosen, data_dir, augment="none", with_train=False)
    graph = compile_spec(spec)
    model = build_module(graph, seed=None)
    load_weights(model, model_weights(graph, weights))  # reads, converts forms, checks
    model.to(device)
    answers: list[tuple[int, float]] = []
    result = evaluate_model(model, data.val, batch_size, device, workers=workers,
                            predictions=answers)
    samples = getattr(data.val, "samples", None)  # image folders: (path, label) pairs
    names = [path for path, _ in samples] if samples else [str(i) for i in range(len(answers))]
    targets = [label for _, label in samples] if samples else data.val.labels.tolist()
    predictions = [Prediction(name, target, index, logit) for name, target, (index, logit)
                   in zip(names, targets, answers, strict=True)]
    return result, predictions, data.description, tuple(data.contract.labels or ())
