"""Calibrated static int8 quantization of the ONNX backend's model (`--dtype int8`).

The float32 model (BatchNorm folded) goes through onnxruntime's quantization tool:
`quant_pre_process` (onnx shape inference and graph clean-up), then `quantize_static` in
the QDQ format (QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses into
QLinearConv, QLinearAdd, QGemm). The settings below were chosen by measurement on this
project's machine (numbers in docs/onnx.md, "int8"):

- activations uint8 (asymmetric, per tensor), weights int8 (symmetric, per output channel),
  full 8-bit range: on CPUs with AVX-512 VNNI or AVX-VNNI this selects onnxruntime's u8s8
  kernels, 1.6-2.0x float32 at batch 8 for ResNeXt-50 32x4d; int8 activations (s8s8) ran at
  float32 speed, and `reduce_range` (7-bit weights, meant for CPUs without VNNI) kept only
  a third of the gain;
- MinMax calibration: as accurate as Entropy or Percentile on the measured models, and the
  only onnxruntime calibrator whose memory does not grow with the number of images (the
  histogram calibrators keep every intermediate tensor of every image until the end).

Calibration images are any image files under a folder (searched recursively, in sorted
order), read through the model's own input contract (`resnext_compiler.image_transform`),
the same transform that `evaluate` and `serve` apply. Nothing here imports torch.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from resnext_compiler.artifacts import atomic_writer
from resnext_compiler.backends.base import DEFAULT_CALIBRATION_IMAGES
from resnext_compiler.errors import ResnextError, UserError
from resnext_compiler.image_transform import IMAGE_SUFFIXES
from resnext_compiler.named_files import walk_files

# The most images a compile reads (the default count is DEFAULT_CALIBRATION_IMAGES); the cap
# bounds decode and calibration time and the uint8 pixels held in memory.
MAX_CALIBRATION_IMAGES = 1024
MAX_CALIBRATION_BYTES = 512 * 2**20  # decoded uint8 pixels held for calibration
# Files looked at while searching the folder, images or not: a huge tree costs a bounded walk.
MAX_FILES_SCANNED = 100_000
# Images per calibration run. onnxruntime's calibration model (every activation also feeds a
# ReduceMin/ReduceMax, graph optimisations off) keeps most activations of a run alive at once:
# for ResNeXt-50 the session peaks at 2.4 GB with 8 images per run and 0.6 GB with one, and
# one at a time is no slower (docs/onnx.md, "int8").
CALIBRATION_BATCH = 1

CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
CALIBRATION_METHOD = "minmax"
ACTIVATION_TYPE = "uint8"
WEIGHT_TYPE = "int8"
# Operators that do arithmetic. Once onnxruntime has fused a QDQ model, one of these that
# reads a DequantizeLinear's output (or the float input) runs in float.
FLOAT_COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "Add", "Sum", "Mul", "Sigmoid", "Relu",
                     "BatchNormalization", "GlobalAveragePool", "AveragePool", "MaxPool",
                     "ReduceMean", "Concat", "FusedConv", "FusedGemm", "NhwcMaxPool")


@dataclass(frozen=True)
class CalibrationSet:
    """The images that calibrate a model: where they came from and which files."""

    folder: Path
    images: tuple[Path, ...]


def find_calibration_images(folder: Path, count: int = DEFAULT_CALIBRATION_IMAGES
                            ) -> CalibrationSet:
    """The first `count` image files under `folder` in sorted order (sub-folders included).

    Fewer images than asked is fine (all of them calibrate); none, or a folder that cannot
    be read, is a user error: a model is never calibrated on made-up data.
    """
    if not 1 <= count <= MAX_CALIBRATION_IMAGES:
        raise UserError(f"--calibration-images must be between 1 and {MAX_CALIBRATION_IMAGES}, "
                        f"got {count}")
    folder = Path(folder)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise UserError(f"--calibrate {folder}: {what}; give a folder of calibration images")
    found: list[Path] = []
    for path in walk_files(folder, folder, f"--calibrate {folder}", IMAGE_SUFFIXES,
                           MAX_FILES_SCANNED):
        found.append(path)
        if len(found) == count:
            return CalibrationSet(folder, tuple(found))
    if not found:
        raise UserError(f"--calibrate {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in "
                        "the folder or its sub-folders")
    return CalibrationSet(folder, tuple(found))


def calibration_pixels(calibration: CalibrationSet, contract) -> np.ndarray:  # noqa: ANN001
    """uint8 [N, H, W, C]: every calibration image through the evaluation transform.

    All images are decoded before any quantization work, so an unreadable image or one the
    contract cannot take stops the compile at once, naming the file.
    """
    from resnext_compiler.image_transform import open_image, resize_and_crop

    per_image = contract.height * contract.width * contract.channels
    if per_image * len(calibration.images) > MAX_CALIBRATION_BYTES:
        most = max(1, MAX_CALIBRATION_BYTES // per_image)
        raise UserError(f"{len(calibration.images)} calibration images of "
                        f"{contract.height}x{contract.width} would hold more than "
                        f"{MAX_CALIBRATION_BYTES // 2**20} MiB of pixels; use at most {most} "
                        "(--calibration-images)")
    pixels = np.empty((len(calibration.images), contract.height, contract.width,
                       contract.channels), np.uint8)
    for index, path in enumerate(calibration.images):
        pixels[index] = resize_and_crop(open_image(path, contract), contract)
    return pixels


class CalibrationBatches(CalibrationDataReader):
    """Decoded pixels as the model's input, `batch` images at a time, normalised on demand.

    A model with a static batch size gets batches of exactly that size: the last one is
    filled up with images from the start of the set, which leaves MinMax ranges unchanged.
    """

    def __init__(self, pixels: np.ndarray, contract, input_name: str,  # noqa: ANN001
                 batch: int | None = None, static: bool = False):
        self.pixels, self.contract, self.input_name = pixels, contract, input_name
        self.batch, self.static = batch or CALIBRATION_BATCH, static
        self.start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        from resnext_compiler.image_transform import model_input

        if self.start >= len(self.pixels):
            return None
        indices = np.arange(self.start, min(self.start + self.batch, len(self.pixels)))
        if self.static and len(indices) < self.batch:
            indices = np.resize(np.concatenate([indices, np.arange(len(self.pixels))]),
                                self.batch)
        self.start += self.batch
        return {self.input_name: model_input(self.pixels[indices], self.contract)}

    def rewind(self) -> None:
        self.start = 0


def export_int8(graph, options, output: str | Path, description: str = "",  # noqa: ANN001
                weights=None, contract=None) -> Path:  # noqa: ANN001
    """`--dtype int8`: the float32 model (BatchNorm folded as asked), quantized at `output`.

    The calibration folder is searched before anything is compiled, so a missing or empty
    folder costs nothing; the float32 model is a temporary file beside `output`.
    """
    from resnext_compiler.backends.onnx import export_onnx

    if options.calibrate is None:
        raise UserError("--dtype int8 needs --calibrate DIR (a folder of calibration images)")
    calibration = find_calibration_images(options.calibrate, options.calibration_images)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fp32-", dir=output.parent) as work:
        float_model = export_onnx(graph, replace(options, dtype="fp32"),
                                  Path(work) / "model.onnx", description, weights, contract)
        return quantize_int8(float_model, output, calibration)


def quantize_int8(float_model: Path, output: Path, calibration: CalibrationSet,
                  method: str = CALIBRATION_METHOD) -> Path:
    """Quantize the float32 ONNX file `float_model` to int8 at `output` (atomically).

    `method` (minmax | entropy | percentile) is a parameter for the measurements behind the
    default (benchmarks/int8_calibration.py); the CLI always uses CALIBRATION_METHOD.
    The input contract is read from `float_model`'s metadata (the default contract for its
    input shape when it records none); the output keeps every metadata entry of the float
    model, with `dtype` int8 and the calibration recorded.
    """
    from resnext_compiler.input_contract import default_contract, read_contract

    float_model = Path(float_model)
    header = onnx.load(str(float_model), load_external_data=False)
    contract = read_contract(float_model) or _default_contract(header, default_contract)
    if contract.colour is None:
        raise UserError(f"a model with {contract.channels} input channels takes no images, so "
                        "it cannot be calibrated on an image folder")
    pixels = calibration_pixels(calibration, contract)
    batch_dim = header.graph.input[0].type.tensor_type.shape.dim[0]
    reader = (CalibrationBatches(pixels, contract, header.graph.input[0].name,
                                 batch_dim.dim_value, static=True)
              if batch_dim.HasField("dim_value") else
              CalibrationBatches(pixels, contract, header.graph.input[0].name))
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=Path(output).parent) as work:
        prepared = Path(work) / "prepared.onnx"
        quantized = Path(work) / "quantized.onnx"
        try:
            # The graph declares every value's shape already (value_info), so onnxruntime's
            # symbolic shape inference has nothing to add; its module imports torch whenever
            # torch is installed, which the ONNX path never does.
            quant_pre_process(str(float_model), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared), str(quantized), reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=False,
                calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
                calibration_providers=["CPUExecutionProvider"],
            )
        except UserError:  # an image that the contract cannot take, named
            raise
        except Exception as exc:  # onnxruntime raises plain RuntimeError/ValueError/Fail
            raise ResnextError(f"int8 quantization failed: {type(exc).__name__}: {exc}") from exc
        model = onnx.load(str(quantized))
        entries = {entry.key: entry.value for entry in header.metadata_props}
        entries.update(calibration_metadata(calibration, len(pixels), method))
        del model.metadata_props[:]
        model.metadata_props.extend(onnx.StringStringEntryProto(key=k, value=v)
                                    for k, v in entries.items())
        model.producer_name, model.producer_version = header.producer_name, header.producer_version
        # onnxruntime's pre-processing declares every domain it knows; keep the ones used.
        used = {node.domain for node in model.graph.node} | {""}
        kept = [entry for entry in model.opset_import if entry.domain in used]
        del model.opset_import[:]
        model.opset_import.extend(kept)
        with atomic_writer(output) as handle:
            handle.write(model.SerializeToString())
    return Path(output)


def calibration_metadata(calibration: CalibrationSet, images: int,
                         method: str = CALIBRATION_METHOD) -> dict[str, str]:
    """What an int8 file records about its quantization (docs/onnx.md, metadata)."""
    return {
        "dtype": "int8",
        "quantization": f"static QDQ, activations {ACTIVATION_TYPE} per tensor, weights "
                        f"{WEIGHT_TYPE} per channel",
        "calibration_method": method,
        "calibration_images": str(images),
        "calibration_folder": calibration.folder.name,
    }


def _default_contract(model: onnx.ModelProto, default_contract):  # noqa: ANN001, ANN202
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return default_contract(dims[1], dims[2], dims[3])


def runtime_float_nodes(path: Path) -> list[str]:
    """`op_type name` of the compute nodes that onnxruntime's CPU provider runs in float in
    the int8 model at `path`, after it fused the QDQ pairs into integer kernels."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.intra_op_num_threads = 1
    with tempfile.TemporaryDirectory(prefix=".int8-") as work:
        options.optimized_model_filepath = str(Path(work) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    dequantized = {out for node in optimized.graph.node if node.op_type == "DequantizeLinear"
                   for out in node.output}
    dequantized |= {value.name for value in optimized.graph.input}
    return [f"{node.op_type} {node.name}" for node in optimized.graph.node
            if node.op_type in FLOAT_COMPUTE_OPS and dequantized.intersection(node.input)]
