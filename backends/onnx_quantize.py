"""Calibrated static int8 quantization of the ONNX backend's model (`--dtype int8`).

The float32 model (BatchNorm folded) goes through onnxruntime's quantization tool:
`quant_pre_process` (onnx shape inference and graph clean-up), then `quantize_static` in
the QDQ format (QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses into
QLinearConv, QLinearAdd, QGemm). The settings below were chosen by measurement on this
project's machine (numbers in docs/onnx.md, "int8"):

- activations uint8 (asymmetric, per tensor), weights int8 (symmetric, per output channel)
  in the **7-bit range -64..64** (`reduce_range`): onnxruntime's fast x86 kernels multiply
  uint8 by int8 (u8s8). Without VNNI (AVX2, AVX-512 without VNNI) they add each pair of
  products into a saturating int16 (`vpmaddubsw`): 2 x 255 x 127 = 64,770 overflows 32,767,
  while 2 x 255 x 64 = 32,640 cannot. With 7-bit weights every CPU (VNNI, AVX2, ARM, GPU
  builds) computes the same exact integer products, so an agreement measured on the compiling
  CPU holds on the one that runs the file. On this project's VNNI machine 7-bit weights ran
  as fast as 8-bit ones (1.85x vs 1.86x float32, ResNeXt-50 batch 8); int8 activations
  (s8s8) ran at float32 speed;
- MinMax calibration: as accurate as Entropy or Percentile on the measured models, and the
  only onnxruntime calibrator whose memory does not grow with the number of images (the
  histogram calibrators keep every intermediate tensor of every image until the end).

Calibration images are any image files under a folder (searched recursively, in sorted
order), read through the model's own input contract (`resnext_compiler.image_transform`),
the same transform that `evaluate` and `serve` apply. Every compile is measured against
float32 on held-out images (`int8_agreement`); below the threshold it keeps nodes in float and
quantizes again, and it never writes a file that fails its own check unless told to.
Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Iterator
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

from resnext_compiler.artifact_format import INT8_PREFIX, KEY_DTYPE, contract_or_default
from resnext_compiler.artifacts import atomic_writer, work_folder
from resnext_compiler.backends.base import (
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_MIN_AGREEMENT,
    MAX_ATTEMPTS,
)
from resnext_compiler.backends.int8_agreement import (
    Agreement,
    compare_logits,
    debug_image_count,
    folder_targets,
    nodes_around,
    run_logits,
    stem_and_classifier,
    worst_tensors,
)
from resnext_compiler.errors import ResnextError, UserError
from resnext_compiler.image_transform import IMAGE_SUFFIXES
from resnext_compiler.input_contract import InputContract, default_contract
from resnext_compiler.ir import INPUT
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
# 7-bit weights: no u8s8 kernel can saturate, on any CPU (module docstring).
WEIGHT_REDUCE_RANGE = True
# Held out of the --calibrate folder to measure int8 against float32 (every other image).
MIN_HELD_OUT_IMAGES = 4
# Activations whose surrounding nodes one fallback round keeps in float, worst first.
FALLBACK_TENSORS_PER_ROUND = 2


@dataclass(frozen=True)
class CalibrationSet:
    """The images that calibrate a model: where they came from and which files."""

    folder: Path
    images: tuple[Path, ...]


def find_calibration_images(folder: Path, count: int = DEFAULT_CALIBRATION_IMAGES,
                            flag: str = "--calibrate") -> CalibrationSet:
    """The first `count` image files under `folder` in sorted order (sub-folders included).

    Fewer images than asked is fine (all of them calibrate); none, or a folder that cannot
    be read, is a user error: a model is never calibrated on made-up data.
    """
    check_calibration_count(count)
    folder = Path(folder)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise UserError(f"{flag} {folder}: {what}; give a folder of images")
    found: list[Path] = []
    for path in walk_files(folder, folder, f"{flag} {folder}", IMAGE_SUFFIXES,
                           MAX_FILES_SCANNED):
        found.append(path)
        if len(found) == count:
            return CalibrationSet(folder, tuple(found))
    if not found:
        raise UserError(f"{flag} {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in "
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


@dataclass(frozen=True)
class Int8Check:
    """How an int8 compile is measured and what it may write (docs/onnx.md, "int8")."""

    min_agreement: float = DEFAULT_MIN_AGREEMENT  # percent top-1 agreement with float32
    accept_loss: bool = False  # write the best attempt even below min_agreement
    max_attempts: int = MAX_ATTEMPTS
    validate: Path | None = None  # held-out images from this folder instead of --calibrate


@dataclass(frozen=True)
class HeldOut:
    """Images that measure int8 against float32 and never calibrate: their pixels, their
    class indices when known, and where they came from (recorded in the file)."""

    pixels: np.ndarray
    targets: np.ndarray | None
    source: str


def check_calibration_count(count: int) -> None:
    if not 1 <= count <= MAX_CALIBRATION_IMAGES:
        raise UserError(f"--calibration-images must be between 1 and {MAX_CALIBRATION_IMAGES}, "
                        f"got {count}")


def split_calibration(folder: Path, count: int, validate: Path | None
                      ) -> tuple[CalibrationSet, CalibrationSet]:
    """(calibration images, held-out images), both searched before any work.

    The first MAX_CALIBRATION_IMAGES image files of a folder in sorted order are looked at,
    and images are taken evenly spaced among them, so class folders are all represented.
    Without `validate`, 2 x `count` images of `folder` alternate: the 1st, 3rd, ... calibrate,
    the 2nd, 4th, ... are held out. With it, `count` images of each folder.
    """
    check_calibration_count(count)
    if validate is not None:
        return (evenly_spaced(find_calibration_images(folder, MAX_CALIBRATION_IMAGES), count),
                evenly_spaced(find_calibration_images(validate, MAX_CALIBRATION_IMAGES,
                                                      "--validate"), count))
    found = evenly_spaced(find_calibration_images(folder, MAX_CALIBRATION_IMAGES), 2 * count)
    calibration = CalibrationSet(found.folder, found.images[0::2])
    held_out = CalibrationSet(found.folder, found.images[1::2])
    if len(held_out.images) < MIN_HELD_OUT_IMAGES:
        raise UserError(
            f"--calibrate {folder}: {len(found.images)} image(s); an int8 compile holds out "
            f"every other image to measure int8 against float32 and needs at least "
            f"{MIN_HELD_OUT_IMAGES} held out ({2 * MIN_HELD_OUT_IMAGES} images in all), or "
            "held-out images in --validate DIR")
    return calibration, held_out


def evenly_spaced(found: CalibrationSet, count: int) -> CalibrationSet:
    """`count` of the images (all when there are fewer), evenly spaced in their order."""
    if len(found.images) <= count:
        return found
    indices = np.linspace(0, len(found.images) - 1, count).round().astype(int)
    return CalibrationSet(found.folder, tuple(found.images[i] for i in indices))


def export_int8(graph, options, output: str | Path, description: str = "",  # noqa: ANN001
                weights=None, contract=None) -> Path:  # noqa: ANN001
    """`--dtype int8`: the float32 model (BatchNorm folded as asked), quantized at `output`.

    The calibration and held-out images are searched before anything is compiled, so a
    missing or empty folder costs nothing; the float32 model is a temporary file beside
    `output`. SIGTERM stops it like Ctrl-C: no temporary folder and no output is left; the
    folders of a compile that was killed outright are removed by the next one there.
    The images are read through the contract the float32 model records (the default for
    the graph's input when it records none), passed along rather than read back.
    """
    from resnext_compiler.backends.onnx import artifact_contract, export_onnx

    if options.calibrate is None:
        raise UserError("--dtype int8 needs --calibrate DIR (a folder of calibration images)")
    check = Int8Check(min_agreement=options.int8_min_agreement,
                      accept_loss=options.accept_int8_loss, max_attempts=MAX_ATTEMPTS,
                      validate=options.validate)
    calibration, held_out = split_calibration(options.calibrate, options.calibration_images,
                                              check.validate)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    float_options = replace(options, dtype="fp32")
    contract = artifact_contract(graph, float_options, contract)
    with _sigterm_as_interrupt(), \
            work_folder(output.parent, "fp32") as work:
        float_model = export_onnx(graph, float_options, Path(work) / "model.onnx", description,
                                  weights, contract)
        images_contract = contract or default_contract(*graph.shape_of(INPUT).as_list())
        return quantize_int8(float_model, output, calibration, held_out=held_out, check=check,
                             contract=images_contract)


def quantize_int8(float_model: Path, output: Path, calibration: CalibrationSet,
                  method: str = CALIBRATION_METHOD, held_out: CalibrationSet | None = None,
                  check: Int8Check | None = None,
                  contract: InputContract | None = None) -> Path:
    """Quantize the float32 ONNX file `float_model` to int8 at `output` (atomically).

    With `held_out` images, every attempt is measured against float32 on them; below
    `check.min_agreement` the nodes that break agreement are kept in float (the stem and the
    classifier first, then the nodes around the activations that quantization damages most)
    and the model is quantized again, at most `check.max_attempts` times in all. The best
    attempt is written if it meets the threshold (or `check.accept_loss`); otherwise a
    UserError names what was tried. Without `held_out` (the calibration-method benchmark)
    the first attempt is written unmeasured.

    `method` (minmax | entropy | percentile) is a parameter for the measurements behind the
    default (benchmarks/int8_calibration.py); the CLI always uses CALIBRATION_METHOD.
    `contract` is the input contract the images are read through; without it, the one
    `float_model` records (the default contract for its input layout when it records
    none). The output keeps every metadata entry of the float model, with `dtype` int8, the
    calibration and the measurements recorded.
    """
    from resnext_compiler.onnx_cost import read_structure

    check = check or Int8Check()
    float_model = Path(float_model)
    header = onnx.load(str(float_model), load_external_data=False)
    contract = contract or contract_or_default(read_structure(float_model))
    if contract.colour is None:
        raise UserError(f"a model with {contract.channels} input channels takes no images, so "
                        "it cannot be calibrated on an image folder")
    images = calibration.images + (held_out.images if held_out else ())
    pixels = calibration_pixels(CalibrationSet(calibration.folder, images), contract)
    calibration_part = pixels[:len(calibration.images)]
    measure = None if held_out is None else HeldOut(
        pixels[len(calibration.images):],
        folder_targets(held_out.images, held_out.folder, contract.labels),
        ("every other image of the --calibrate folder" if held_out.folder == calibration.folder
         else f"--validate folder {held_out.folder.name}"))
    reader = _reader(header, contract, calibration_part)
    with work_folder(Path(output).parent, "int8") as work:
        prepared = Path(work) / "prepared.onnx"
        # The graph declares every value's shape already (value_info), so onnxruntime's
        # symbolic shape inference has nothing to add; its module imports torch whenever
        # torch is installed, which the ONNX path never does.
        _onnxruntime_step(quant_pre_process, str(float_model), str(prepared),
                          skip_symbolic_shape=True)
        attempts = _attempts(prepared, float_model, Path(work), reader, method, measure,
                             check, header, contract)
        best = max(attempts, key=lambda attempt: attempt.agreement.top1_agreement
                   if attempt.agreement else 0.0)
        passed = best.agreement is None or best.agreement.top1_agreement >= check.min_agreement
        if not passed and not check.accept_loss:
            raise UserError(_refusal(attempts, check))
        model = onnx.load(str(best.path))
        entries = {entry.key: entry.value for entry in header.metadata_props}
        entries.update(calibration_metadata(calibration, len(calibration.images), method))
        if measure is not None:
            entries.update(measurement_metadata(attempts, best, measure, check, passed))
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


@dataclass(frozen=True)
class Attempt:
    """One quantization: the nodes it kept in float, its file, its measurement."""

    kept_float: tuple[str, ...]
    path: Path
    agreement: Agreement | None


def _attempts(prepared: Path, float_model: Path, work: Path, reader: CalibrationBatches,
              method: str, measure: HeldOut | None, check: Int8Check, header: onnx.ModelProto,
              contract) -> list[Attempt]:  # noqa: ANN001
    """Quantize, measure, keep more in float, until agreement holds or attempts run out."""
    prepared_model = onnx.load(str(prepared), load_external_data=False)
    kept: tuple[str, ...] = ()
    attempts: list[Attempt] = []
    held = reference = None
    if measure is not None:
        held = _reader(header, contract, measure.pixels)
        reference = run_logits(float_model, held, len(measure.pixels))
    while True:
        path = work / f"attempt-{len(attempts) + 1}.onnx"
        quantize_qdq(prepared, path, reader, kept, method, work / "ranges.json")
        if measure is None:
            return [Attempt(kept, path, None)]
        agreement = compare_logits(reference, run_logits(path, held, len(measure.pixels)),
                                   measure.targets)
        attempts.append(Attempt(kept, path, agreement))
        if agreement.top1_agreement >= check.min_agreement or len(attempts) >= check.max_attempts:
            return attempts
        more = _next_float_nodes(prepared_model, prepared, path, kept, len(attempts), measure,
                                 header, contract)
        if not more:
            return attempts
        kept = kept + tuple(more)


def quantize_qdq(prepared: Path, output: Path, reader: CalibrationBatches,
                 keep_float: tuple[str, ...] = (), method: str = CALIBRATION_METHOD,
                 ranges: Path | None = None) -> None:
    """One quantization with the portable settings (module docstring) of the model that
    `quant_pre_process` wrote at `prepared`, the nodes named in `keep_float` left in float.
    `ranges` caches the calibrated ranges: the first call with it calibrates and writes it,
    later ones read it instead of calibrating again."""
    reader.rewind()
    _onnxruntime_step(
        quantize_static, str(prepared), str(output), reader,
        calibration_cache_path=None if ranges is None else str(ranges),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=WEIGHT_REDUCE_RANGE,
        nodes_to_exclude=list(keep_float),
        calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
        calibration_providers=["CPUExecutionProvider"],
    )


def _next_float_nodes(prepared_model: onnx.ModelProto, prepared: Path, failed: Path,
                      kept: tuple[str, ...], round_: int, measure: HeldOut,
                      header: onnx.ModelProto, contract) -> list[str]:  # noqa: ANN001
    """Nodes to keep in float next: the stem and the classifier first, then the nodes around
    the FALLBACK_TENSORS_PER_ROUND activations that quantization damaged most in `failed`."""
    if round_ == 1:
        first = [name for name in stem_and_classifier(prepared_model) if name not in kept]
        if first:
            return first
    count = debug_image_count(prepared_model, len(measure.pixels))
    ranked = worst_tensors(prepared, failed, _reader(header, contract, measure.pixels[:count]))
    chosen: list[str] = []
    taken = 0
    for tensor, _ in ranked:
        new = [name for name in nodes_around(prepared_model, tensor)
               if name and name not in kept and name not in chosen]
        if new:
            chosen += new
            taken += 1
            if taken == FALLBACK_TENSORS_PER_ROUND:
                break
    return chosen


def _reader(header: onnx.ModelProto, contract, pixels: np.ndarray  # noqa: ANN001
            ) -> CalibrationBatches:
    """`pixels` as batches of the model's input (a static batch size is kept)."""
    batch_dim = header.graph.input[0].type.tensor_type.shape.dim[0]
    if batch_dim.HasField("dim_value"):
        return CalibrationBatches(pixels, contract, header.graph.input[0].name,
                                  batch_dim.dim_value, static=True)
    return CalibrationBatches(pixels, contract, header.graph.input[0].name)


def _onnxruntime_step(step, *args: object, **kwargs: object) -> None:  # noqa: ANN001
    try:
        step(*args, **kwargs)
    except (UserError, KeyboardInterrupt):  # an image the contract cannot take, named; Ctrl-C
        raise
    except Exception as exc:  # onnxruntime raises plain RuntimeError/ValueError/Fail
        raise ResnextError(f"int8 quantization failed: {type(exc).__name__}: {exc}") from exc


def _refusal(attempts: list[Attempt], check: Int8Check) -> str:
    tried = "; ".join(f"{len(a.kept_float)} node(s) in float: {a.agreement.summary()}"
                      for a in attempts if a.agreement)
    best = max(a.agreement.top1_agreement for a in attempts if a.agreement)
    return (f"int8 top-1 agreement with float32 stays below --int8-min-agreement "
            f"{check.min_agreement:g}% after {len(attempts)} attempt(s) (best {best:.2f}%): "
            f"{tried}. Nothing was written; lower the threshold, calibrate on more images "
            "like the ones the model will see, or write the best attempt anyway with "
            "--accept-int8-loss")


def measurement_metadata(attempts: list[Attempt], best: Attempt, measure: HeldOut,
                         check: Int8Check, passed: bool) -> dict[str, str]:
    """What an int8 file records about its measurement (docs/onnx.md, "The agreement
    report"): the written attempt's agreement, the nodes it keeps in float, every attempt."""
    entries = best.agreement.to_metadata()
    entries.update({
        INT8_PREFIX + "held_out": measure.source,
        INT8_PREFIX + "min_agreement": f"{check.min_agreement:g}",
        INT8_PREFIX + "kept_float": json.dumps(list(best.kept_float)),
        INT8_PREFIX + "attempts": json.dumps([
            {"kept_float": len(a.kept_float), "top1_agreement": f"{a.agreement.top1_agreement:.2f}"}
            for a in attempts]),
        INT8_PREFIX + "check": "passed" if passed else "below the threshold, written with "
                                                       "--accept-int8-loss",
    })
    return entries


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (in the main thread) so temporary folders unwind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame) -> None:  # noqa: ANN001
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def calibration_metadata(calibration: CalibrationSet, images: int,
                         method: str = CALIBRATION_METHOD) -> dict[str, str]:
    """What an int8 file records about its quantization (docs/onnx.md, metadata)."""
    return {
        KEY_DTYPE: "int8",
        "quantization": f"static QDQ, activations {ACTIVATION_TYPE} per tensor, weights "
                        f"{WEIGHT_TYPE} per channel, 7-bit range -64..64",
        INT8_PREFIX + "portable": "exact integer products on every CPU: 7-bit weights "
                                  "cannot saturate u8s8 kernels without VNNI (AVX2)",
        "calibration_method": method,
        "calibration_images": str(images),
        "calibration_folder": calibration.folder.name,
    }
