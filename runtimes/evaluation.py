"""`evaluate MODEL.onnx|REPO --data DIR`: a compiled artifact measured with its own contract.

Torch-free: onnxruntime runs the file; images go through `resnext_compiler.image_transform`
with the contract the artifact records (its class names map folders to outputs), so the
numbers are the ones `serve` would give image for image. fp32, fp16 and uint8-input
(`--image-input`) files all work: `model_input` produces what the file's input takes.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnext_compiler.artifact_format import KEY_DTYPE
from resnext_compiler.artifacts import write_text_atomic
from resnext_compiler.errors import UserError
from resnext_compiler.image_transform import load_pixels, model_input
from resnext_compiler.runtimes.image_folders import evaluation_split, scan

TOP_K = 5


@dataclass(frozen=True)
class EvalResult:
    loss: float
    top1_error: float  # percent
    top5_error: float  # percent
    images: int


@dataclass(frozen=True)
class Prediction:
    """One evaluated image: where it came from, its class, and the model's top-1 answer."""

    image: str
    target: int
    predicted: int
    logit: float  # the predicted class's logit


def write_predictions(path: Path, predictions: list[Prediction],
                      classes: list[str] | tuple[str, ...] | None) -> Path:
    """CSV `image,target,predicted,label,logit` (label: the predicted class's name)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "target", "predicted", "label", "logit"])
    for p in predictions:
        label = classes[p.predicted] if classes and p.predicted < len(classes) else ""
        writer.writerow([p.image, p.target, p.predicted, label, repr(p.logit)])
    return write_text_atomic(path, buffer.getvalue())


def top_k_misses(logits: np.ndarray, targets: np.ndarray, k: int = TOP_K) -> tuple[int, int]:
    """(top-1 misses, top-k misses) of one batch of logits (N, classes); k is capped at the
    class count. The one top-k error rule, for training, `evaluate` and artifacts alike.

    A target is in the top k when fewer than k classes rank ahead of it: a larger logit, or an
    equal one at a lower index (a stable sort's order); a NaN target logit is a miss.
    """
    rows = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    k = min(k, rows.shape[1])
    own = np.take_along_axis(rows, targets[:, None], axis=1)
    earlier = np.arange(rows.shape[1]) < targets[:, None]
    ahead = ((rows > own) | ((rows == own) & earlier)).sum(axis=1)
    ahead[np.isnan(own[:, 0])] = rows.shape[1]
    return int((ahead >= 1).sum()), int((ahead >= k).sum())


def error_sums(logits: np.ndarray, targets: np.ndarray) -> tuple[float, int, int]:
    """(cross-entropy sum, top-1 misses, top-k misses) of one batch, in float64."""
    rows = logits.astype(np.float64)
    shifted = rows - rows.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -float(log_probs[np.arange(len(targets)), targets].sum())
    return (loss, *top_k_misses(rows, targets))


def evaluate_artifact(model_path: Path, data_dir: Path, batch_size: int = 64,
                      device: str = "cpu") -> tuple[EvalResult, list[Prediction], str, tuple]:
    """Top-1/top-5 error of an ONNX file or Triton repository on `DIR/val/<class>/` (or
    `DIR/<class>/`). Returns (result, per-image predictions, description, class names)."""
    from resnext_compiler.runtimes.serve.model import LoadedModel
    from resnext_compiler.runtimes.serve.repository import find_models

    sources = find_models(model_path)
    if len(sources) != 1:
        raise UserError(f"{model_path} holds {len(sources)} models; evaluate one model folder")
    model = LoadedModel(sources[0], device, max_batch=batch_size, intra_op_threads=0)
    contract = model.contract
    if contract.colour is None:
        raise UserError(f"{model_path}: a {contract.channels}-channel model takes no images")
    if not data_dir.is_dir():
        raise UserError(f"--data {data_dir}: no such directory")
    split = evaluation_split(data_dir)
    samples, classes = scan(split, list(contract.labels) if contract.labels else None, data_dir)
    outputs = model.outputs[0].shape[-1]
    if outputs > 0 and len(classes) > outputs:
        raise UserError(f"{split}: {len(classes)} class folders but the model has {outputs} "
                        "outputs")
    if outputs > 0 and not contract.labels and len(classes) != outputs:
        # folder i is output i only when both count the same classes; say so before the work
        raise UserError(f"{split}: {len(classes)} class folders but the model has {outputs} "
                        "outputs and records no class names, so folders cannot be matched to "
                        "outputs; compile it with preprocess.labels (or --weights "
                        "torchvision:NAME for ImageNet names), or evaluate a folder of "
                        f"{outputs} classes")
    rows = model.static_batch or model.max_batch
    totals = np.zeros(3)
    predictions: list[Prediction] = []
    for start in range(0, len(samples), rows):
        chunk = samples[start:start + rows]
        pixels = load_pixels([path for path, _ in chunk], contract)
        batch = model_input(pixels, contract, model.input_dtype)
        if model.static_batch and len(chunk) < rows:  # a fixed-batch file: pad the last batch
            padding = np.zeros((rows - len(chunk), *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, padding])
        logits = np.asarray(model.run(batch)[0][:len(chunk)], dtype=np.float64)
        targets = np.array([label for _, label in chunk], dtype=np.int64)
        totals += error_sums(logits, targets)
        best = logits.argmax(axis=1)
        predictions += [Prediction(path, int(t), int(p), float(row[p])) for (path, _), t, p, row
                        in zip(chunk, targets, best, logits, strict=True)]
    n = len(samples)
    result = EvalResult(totals[0] / n, 100 * totals[1] / n, 100 * totals[2] / n, n)
    dtype = model.metadata.get(KEY_DTYPE, model.input.datatype)
    description = (f"{model.name} ({model.path}, {dtype}) on {split}: {n} images, "
                   f"{len(classes)} classes, {contract.colour} {contract.height}x{contract.width}"
                   + ("" if model.contract_recorded else "; no recorded contract: defaults"))
    return result, predictions, description, tuple(contract.labels or classes)
