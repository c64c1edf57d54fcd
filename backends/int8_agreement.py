"""int8 measured against float32: the agreement report, and which nodes to keep in float.

Both files run in onnxruntime on the CPU, side by side on held-out images (never the ones that
calibrated the ranges). The report is what an int8 file records about itself (docs/onnx.md,
"The agreement report"): top-1 agreement with float32, the mean cosine of the two logit
vectors, and, when the images sit in class folders whose names the model knows, the top-1
error of both. When agreement is too low, `worst_tensors` asks onnxruntime's QDQ debugging
tools (`qdq_loss_debug`) which activations quantization damages most. Nothing here imports
torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from resnext_compiler.artifact_format import INT8_PREFIX, KEY_DTYPE
from resnext_compiler.artifacts import work_folder

# Bytes of float activations the QDQ debugging run may hold: it keeps every intermediate
# tensor of every image, and the ranking copies one tensor's values at a time.
DEBUG_ACTIVATION_BYTES = 1 << 30
MAX_DEBUG_IMAGES = 8
# onnx op types whose nodes carry the network's arithmetic (the nodes a fallback keeps in float)
CLASSIFIER_OPS = ("Gemm", "MatMul")
# Activations the quantizer folds into the node before them (the clamp of the QuantizeLinear)
FOLDED_ACTIVATIONS = ("Relu", "Clip")



@dataclass(frozen=True)
class Agreement:
    """int8 against float32 on `images` held-out images."""

    images: int
    top1_agreement: float  # percent of images whose top-1 class is the same
    logit_cosine: float  # mean over images
    float32_top1_error: float | None = None  # percent; None without known class folders
    int8_top1_error: float | None = None

    def to_metadata(self) -> dict[str, str]:
        data = {
            "held_out_images": str(self.images),
            "top1_agreement": f"{self.top1_agreement:.2f}",
            "logit_cosine": f"{self.logit_cosine:.5f}",
        }
        if self.float32_top1_error is not None and self.int8_top1_error is not None:
            data["top1_error_float32"] = f"{self.float32_top1_error:.2f}"
            data["top1_error_int8"] = f"{self.int8_top1_error:.2f}"
        return {INT8_PREFIX + key: value for key, value in data.items()}

    def summary(self) -> str:
        text = (
            f"top-1 agreement {self.top1_agreement:.2f}%, logit cosine "
            f"{self.logit_cosine:.4f} on {self.images} held-out images"
        )
        if self.float32_top1_error is not None:
            text += (
                f"; top-1 error float32 {self.float32_top1_error:.2f}%, int8 "
                f"{self.int8_top1_error:.2f}%"
            )
        return text


def compare_logits(
    reference: np.ndarray, quantized: np.ndarray, targets: np.ndarray | None = None
) -> Agreement:
    """The agreement of two [N, classes] logit arrays (targets: class indices, or None)."""
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(quantized, axis=1)
    cosine = np.sum(reference * quantized, axis=1) / np.maximum(norms, np.finfo(np.float32).tiny)
    agreement = Agreement(
        images=len(reference),
        top1_agreement=100.0 * float(np.mean(reference.argmax(1) == quantized.argmax(1))),
        logit_cosine=float(np.mean(cosine)),
    )
    if targets is None:
        return agreement
    return Agreement(
        agreement.images,
        agreement.top1_agreement,
        agreement.logit_cosine,
        100.0 * float(np.mean(reference.argmax(1) != targets)),
        100.0 * float(np.mean(quantized.argmax(1) != targets)),
    )


def folder_targets(
    images: Iterable[Path], root: Path, class_names: tuple[str, ...] | None
) -> np.ndarray | None:
    """Class indices of images in class folders (ROOT/<class>/...) named as the model's
    classes; None when the model names no classes or an image is outside such a folder."""
    if not class_names:
        return None
    index = {name: i for i, name in enumerate(class_names)}
    targets = []
    for image in images:
        parts = Path(image).relative_to(root).parts
        if len(parts) < 2 or parts[0] not in index:
            return None
        targets.append(index[parts[0]])
    return np.asarray(targets)


def run_logits(model: Path, reader, count: int) -> np.ndarray:  # noqa: ANN001
    """The first output of `model` for every batch of `reader` (a CalibrationDataReader,
    rewound first) in onnxruntime on the CPU: the first `count` rows (a static-batch model's
    last batch is padded)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    reader.rewind()
    outputs = [session.run(None, feed)[0] for feed in reader]
    return np.concatenate(outputs)[:count].astype(np.float64)


def stem_and_classifier(model: onnx.ModelProto) -> list[str]:
    """Names of the first convolution and the last classifier node (Gemm/MatMul)."""
    convs = [node.name for node in model.graph.node if node.op_type == "Conv"]
    heads = [node.name for node in model.graph.node if node.op_type in CLASSIFIER_OPS]
    return convs[:1] + heads[-1:]


def nodes_around(model: onnx.ModelProto, tensor: str) -> list[str]:
    """The nodes that compute `tensor` and read it: keeping them in float takes the tensor out
    of int8. A Relu's input node is included, since the quantizer folds a Relu into the
    convolution (or add) before it."""
    producers = {output: node for node in model.graph.node for output in node.output}
    names = [node.name for node in model.graph.node if tensor in node.input]
    node = producers.get(tensor)
    while node is not None:
        names.append(node.name)
        node = producers.get(node.input[0]) if node.op_type in FOLDED_ACTIVATIONS else None
    return names


def activation_bytes_per_image(model: onnx.ModelProto) -> int:
    """Float bytes of every declared intermediate value for one image (batch dim as 1)."""
    total = 0
    for value in model.graph.value_info:
        dims = value.type.tensor_type.shape.dim
        total += 4 * int(
            np.prod(
                [d.dim_value if d.HasField("dim_value") and i else 1 for i, d in enumerate(dims)]
            )
        )
    return total


def debug_image_count(model: onnx.ModelProto, held_out: int) -> int:
    """Images the QDQ debugging run may use within DEBUG_ACTIVATION_BYTES (at least one)."""
    per_image = max(1, activation_bytes_per_image(model))
    return max(1, min(held_out, MAX_DEBUG_IMAGES, DEBUG_ACTIVATION_BYTES // per_image))


def worst_tensors(float_model: Path, qdq_model: Path, reader) -> list[tuple[str, float]]:  # noqa: ANN001
    """(activation, median per-channel signal-to-quantization-noise ratio in dB) of every
    activation that `qdq_model` quantizes, worst first, on `reader`'s images.

    onnxruntime's QDQ debugging tools collect the float32 model's activations
    (`modify_model_output_intermediate_tensors`, `collect_activations`); each is quantized
    with the scale and zero point that `qdq_model` gives it and compared with itself by
    their signal-to-noise ratio, channel by channel. That isolates the damage of the
    tensor's own 8-bit range: one outlier channel widens the range until the others fall
    into a few levels, which their median ratio shows and a whole-tensor ratio (dominated by
    the outlier) hides. Channels that are zero on every image carry nothing and are skipped.
    Computed in float, so the ranking is the same on every CPU.
    """
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        modify_model_output_intermediate_tensors,
    )

    qdq = onnx.load(str(qdq_model))
    ranges = quantization_ranges(qdq)
    shapes = channel_shapes(onnx.load(str(float_model), load_external_data=False))
    with work_folder(Path(qdq_model).parent, "int8-debug") as work:
        augmented = str(Path(work) / "float.onnx")
        modify_model_output_intermediate_tensors(str(float_model), augmented)
        reader.rewind()
        activations = collect_activations(augmented, reader)
    ranked = []
    for tensor, quantization in ranges.items():
        if tensor in activations and tensor in shapes:
            # collect_activations flattens each batch of [N, C, ...]
            values = np.concatenate(
                [batch.reshape(-1, *shapes[tensor]) for batch in activations[tensor]]
            )
            ranked.append(
                (
                    tensor,
                    median_channel_ratio(
                        values, *quantization, compute_signal_to_quantization_noice_ratio
                    ),
                )
            )
    return sorted(ranked, key=lambda item: item[1])


def channel_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """value -> (channels, values per channel per image) of every declared value of rank >= 2
    with static sizes after the batch."""
    shapes = {}
    for value in model.graph.value_info:
        dims = value.type.tensor_type.shape.dim
        if len(dims) >= 2 and all(d.HasField("dim_value") for d in dims[1:]):
            sizes = [d.dim_value for d in dims[1:]]
            shapes[value.name] = (sizes[0], int(np.prod(sizes[1:])))
    return shapes


def quantization_ranges(qdq: onnx.ModelProto) -> dict[str, tuple[float, int, int, int]]:
    """activation -> (scale, zero point, lowest, highest integer) of its QuantizeLinear."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in qdq.graph.initializer}
    ranges = {}
    for node in qdq.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[1] not in initializers:
            continue
        scale = numpy_helper.to_array(initializers[node.input[1]])
        zero_point = numpy_helper.to_array(initializers[node.input[2]])
        if scale.size != 1:  # per-channel: a weight, not an activation
            continue
        info = np.iinfo(zero_point.dtype)
        ranges[node.input[0]] = (float(scale), int(zero_point), info.min, info.max)
    return ranges


def median_channel_ratio(
    values: np.ndarray, scale: float, zero_point: int, low: int, high: int, ratio
) -> float:  # noqa: ANN001
    """Median over the live channels of values [N, C, S] of ratio(x_c, x_c quantized and
    dequantized with scale, zero point and integer range)."""
    ratios = []
    for channel in range(values.shape[1]):
        signal = values[:, channel].ravel()
        if not np.any(signal):
            continue
        quantized = np.clip(np.round(signal / scale) + zero_point, low, high)
        ratios.append(ratio(signal, ((quantized - zero_point) * scale).astype(signal.dtype)))
    return float(np.median(ratios)) if ratios else float("inf")


def read_int8_report(metadata: dict[str, str]) -> dict[str, object] | None:
    """An int8 file's measurements (the `int8.*` metadata), parsed; None for other files."""
    if metadata.get(KEY_DTYPE) != "int8" or INT8_PREFIX + "top1_agreement" not in metadata:
        return None
    report: dict[str, object] = {}
    for key, value in metadata.items():
        if key.startswith(INT8_PREFIX):
            name = key.removeprefix(INT8_PREFIX)
            report[name] = json.loads(value) if name in ("kept_float", "attempts") else value
    return report


def describe_int8_report(report: dict[str, object]) -> list[str]:
    """Human-readable lines of `read_int8_report` (for `inspect` and the compile's output)."""
    lines = [
        f"int8 vs float32: top-1 agreement {report['top1_agreement']}% (threshold "
        f"{report.get('min_agreement', '?')}%), logit cosine {report['logit_cosine']}, "
        f"on {report['held_out_images']} held-out images ({report.get('held_out', '?')})"
    ]
    if "top1_error_float32" in report:
        lines.append(
            f"top-1 error: float32 {report['top1_error_float32']}%, int8 "
            f"{report['top1_error_int8']}%"
        )
    kept = report.get("kept_float") or []
    lines.append(f"kept in float: {', '.join(kept) if kept else 'nothing'}")  # type: ignore[arg-type]
    attempts = report.get("attempts") or []
    if len(attempts) > 1:  # type: ignore[arg-type]
        lines.append(
            "attempts: "
            + "; ".join(
                f"{a['kept_float']} node(s) in float -> {a['top1_agreement']}%" for a in attempts
            )
        )  # type: ignore[union-attr]
    if report.get("check") != "passed":
        lines.append(f"check: {report.get('check')}")
    return lines
