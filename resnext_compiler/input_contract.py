"""The input contract: what a model expects of an image, and the names of its classes.

Decided once (spec `preprocess:`, defaults per data set, resolved by the training run) and
carried by every artifact: ONNX `metadata_props` (keys below, documented in docs/onnx.md),
the Triton repository (config parameters + labels file), the generated torch source. The
evaluation transform that applies it is `resnext_compiler.image_transform`.

    colour    grey (1 channel) | rgb (3 channels); other channel counts take no images
    resize    crop: the image is scaled to cover height/crop_fraction x width/crop_fraction
              (aspect kept) and the centre height x width is taken (torchvision's
              Resize(256) + CenterCrop(224) at 0.875); direct: scaled to height x width
    normalise (pixel / 255 - mean) / std with scale "0-1"; (pixel - mean) / std with "0-255"
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from resnext_compiler.dataset_types import IMAGENET_MEAN, IMAGENET_STD, dataset_type
from resnext_compiler.errors import UserError, sanitise
from resnext_compiler.named_files import ONNX_MODEL, named_file

if TYPE_CHECKING:  # spec.py imports this module (parse_labels)
    from resnext_compiler.onnx_cost import OnnxStructure
    from resnext_compiler.spec import Spec

IMAGENET_CROP_FRACTION = 0.875  # 224 of 256 (Krizhevsky et al. 2012; torchvision, timm)
SMALL_INPUT = 64  # ImageNet-style folders at or below this size resize directly
COLOUR_MODES = {1: "grey", 3: "rgb"}
RESIZE_RULES = ("crop", "direct")
SCALES = ("0-1", "0-255")
FLOAT_NCHW, UINT8_NHWC = "float32_nchw", "uint8_nhwc"
INPUT_FORMATS = (FLOAT_NCHW, UINT8_NHWC)


# Ranges of the contract's numbers, wherever they come from (a spec or a model file): a crop
# fraction of 5e-324 would ask for an infinite resize, a std of 1e-300 for infinite inputs.
MIN_CROP_FRACTION = 0.01
MIN_STD = 1e-6
MAX_NORMALISATION = 1e6
# Metadata values are parsed once, when a model is opened, within these bounds.
MAX_METADATA_VALUE_CHARS = 16 * 1024 * 1024  # a class_names list of a million names fits
MAX_METADATA_DEPTH = 2  # a list of numbers or names
MAX_LABELS = 1 << 20  # = limits.MAX_CLASSES

# ONNX metadata_props / Triton parameter keys (docs/onnx.md).
KEY_PREFIX = "preprocess."
KEY_LABELS = "class_names"


@dataclass(frozen=True)
class InputContract:
    """Everything needed to turn an image file into the model's input, and to name outputs."""

    channels: int
    height: int
    width: int
    resize: str = "crop"
    crop_fraction: float = IMAGENET_CROP_FRACTION
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    scale: str = "0-1"
    labels: tuple[str, ...] | None = None
    input_format: str = FLOAT_NCHW  # uint8_nhwc: normalisation happens inside the graph

    def __post_init__(self) -> None:
        problems = []
        if self.resize not in RESIZE_RULES:
            problems.append(f"resize must be one of {RESIZE_RULES}, got {self.resize!r}")
        if not MIN_CROP_FRACTION <= self.crop_fraction <= 1:
            problems.append(f"crop fraction must be in [{MIN_CROP_FRACTION}, 1], got "
                            f"{self.crop_fraction!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            problems.append(f"{len(self.mean)} mean and {len(self.std)} std values for "
                            f"{self.channels} channel(s)")
        if any(not MIN_STD <= s <= MAX_NORMALISATION for s in self.std):
            problems.append(f"std values must be in [{MIN_STD:g}, {MAX_NORMALISATION:g}]")
        if any(not abs(m) <= MAX_NORMALISATION for m in self.mean):
            problems.append(f"mean values must be finite, at most {MAX_NORMALISATION:g} in size")
        if self.scale not in SCALES:
            problems.append(f"scale must be one of {SCALES}, got {self.scale!r}")
        if self.input_format not in INPUT_FORMATS:
            problems.append(f"input format must be one of {INPUT_FORMATS}")
        if min(self.channels, self.height, self.width) < 1:
            problems.append("channels, height and width must be positive")
        if problems:
            raise UserError("invalid input contract: " + "; ".join(problems))

    @property
    def colour(self) -> str | None:
        """grey | rgb, or None when the channel count is not an image's."""
        return COLOUR_MODES.get(self.channels)

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (multiplier, offset): input = pixel * multiplier + offset for 0-255 pixels.

        The one normalisation formula: the external transform, training batches and the
        in-graph preprocessing all use these two vectors.
        """
        units = 255.0 if self.scale == "0-1" else 1.0
        mean = np.asarray(self.mean, dtype=np.float64)
        std = np.asarray(self.std, dtype=np.float64)
        return ((1.0 / (units * std)).astype(np.float32), (-mean / std).astype(np.float32))

    def with_labels(self, labels: tuple[str, ...] | list[str] | None) -> InputContract:
        return replace(self, labels=tuple(labels) if labels is not None else None)

    def to_metadata(self) -> dict[str, str]:
        """String key/values for ONNX metadata_props and Triton parameters."""
        data = {
            "colour": self.colour or "none",
            "height": str(self.height),
            "width": str(self.width),
            "resize": self.resize,
            "crop_fraction": repr(float(self.crop_fraction)),
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "scale": self.scale,
            "input_format": self.input_format,
        }
        out = {KEY_PREFIX + key: value for key, value in data.items()}
        if self.labels is not None:
            out[KEY_LABELS] = json.dumps(list(self.labels), ensure_ascii=False)
        return out

    def describe(self) -> list[str]:
        """Human-readable lines (for `inspect MODEL.onnx` and serve's start-up log)."""
        if self.resize == "crop":
            side = (round(self.height / self.crop_fraction), round(self.width / self.crop_fraction))
            rule = (f"scale to cover {side[0]}x{side[1]} (crop fraction {self.crop_fraction:g}), "
                    f"centre crop {self.height}x{self.width}")
        else:
            rule = f"resize to {self.height}x{self.width}"
        formula = "pixel / 255" if self.scale == "0-1" else "pixel"
        fmt = ("uint8 [N, H, W, C], normalised inside the graph" if
               self.input_format == UINT8_NHWC else "float32 [N, C, H, W], normalised")
        names = "none" if self.labels is None else (
            f"{len(self.labels)}: " + ", ".join(self.labels[:10])
            + (", ..." if len(self.labels) > 10 else ""))
        return [
            f"image      {self.colour or 'not an image'} ({self.channels} channel(s)), "
            f"{self.height}x{self.width}",
            f"resize     {rule}",
            f"normalise  ({formula} - mean) / std, mean {_floats(self.mean)}, "
            f"std {_floats(self.std)}",
            f"input      {fmt}",
            f"classes    {names}",
        ]


def _floats(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def dataset_stats(dataset: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std), 0-1 units, for a data set (ImageNet's for an unknown one)."""
    known = dataset_type(dataset)
    mean, std = (known.mean, known.std) if known is not None else (IMAGENET_MEAN, IMAGENET_STD)
    if len(mean) == channels:
        return mean, std
    # A grey-scale view of a colour recipe (or the reverse): average / repeat the values.
    grey_mean, grey_std = sum(mean) / len(mean), sum(std) / len(std)
    return (grey_mean,) * channels, (grey_std,) * channels


def default_contract(channels: int, height: int, width: int,
                     dataset: str = "imagenet") -> InputContract:
    """The documented default for a data set: ImageNet-style folders above 64 px crop 0.875,
    everything else resizes directly; mean/std are the data set's published values."""
    mean, std = dataset_stats(dataset, channels)
    known = dataset_type(dataset)
    crops = known is not None and known.image_folders and min(height, width) > SMALL_INPUT
    return InputContract(channels, height, width, "crop" if crops else "direct",
                         IMAGENET_CROP_FRACTION if crops else 1.0, mean, std)


def resolve_contract(spec: Spec, dataset: str | None = None,
                     labels: list[str] | tuple[str, ...] | None = None) -> InputContract:
    """The spec's contract: its `preprocess:` values over the defaults of `dataset` (default:
    the spec's train.dataset). `labels` (a data set's class names) fill in missing names."""
    dataset = dataset or spec.train.dataset
    base = default_contract(spec.input.channels, spec.input.height, spec.input.width, dataset)
    pre = spec.preprocess
    if pre is None:  # class names may still be known (pretrained weights by name)
        return base.with_labels(spec.labels if spec.labels is not None else labels)
    resize = pre.resize or base.resize
    fraction = pre.crop_fraction if pre.crop_fraction is not None else (
        base.crop_fraction if resize == base.resize else
        IMAGENET_CROP_FRACTION if resize == "crop" else 1.0)
    if pre.mean is not None or pre.std is not None or pre.scale != "0-1":
        units = 1.0 if pre.scale == "0-1" else 255.0
        mean = tuple(pre.mean) if pre.mean is not None else tuple(m * units for m in base.mean)
        std = tuple(pre.std) if pre.std is not None else tuple(s * units for s in base.std)
    else:
        mean, std = base.mean, base.std
    names = spec.labels if spec.labels is not None else labels
    return replace(base, resize=resize, crop_fraction=fraction, mean=mean, std=std,
                   scale=pre.scale).with_labels(names)


def preprocess_section(contract: InputContract, labels_file: str | None = None) -> dict:
    """The contract as a spec `preprocess:` mapping (what a run directory's spec.yaml holds)."""
    section: dict = {"resize": contract.resize, "crop_fraction": contract.crop_fraction,
                     "mean": list(contract.mean), "std": list(contract.std),
                     "scale": contract.scale}
    if labels_file is not None:
        section["labels"] = labels_file
    elif contract.labels is not None:
        section["labels"] = list(contract.labels)
    return section


def labels_text(labels: tuple[str, ...] | list[str]) -> str:
    """A labels file: one class name per line, line i naming output i (Triton's format)."""
    return "".join(f"{name}\n" for name in labels)


def parse_labels(text: str) -> tuple[str, ...]:
    """The names in a labels file (the inverse of `labels_text`; blank lines at the end and
    surrounding spaces are ignored)."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return tuple(line.strip() for line in lines)


def contract_from_metadata(metadata: dict[str, str], channels: int, height: int,
                           width: int) -> InputContract | None:
    """The contract recorded in ONNX metadata / Triton parameters, or None when absent.

    `channels`, `height`, `width` are the model input's (the graph is the authority on them).
    A recorded contract that cannot be read is an error, never a silent default.
    """
    if KEY_PREFIX + "resize" not in metadata:
        labels = _labels_value(metadata)
        return None if labels is None else default_contract(channels, height, width
                                                            ).with_labels(labels)

    def get(key: str) -> str:
        if KEY_PREFIX + key not in metadata:
            raise UserError(f"model metadata has {KEY_PREFIX}resize but no {KEY_PREFIX}{key}")
        return metadata[KEY_PREFIX + key]

    mean = _numbers(get("mean"), KEY_PREFIX + "mean")
    std = _numbers(get("std"), KEY_PREFIX + "std")
    fraction = _numbers(f"[{get('crop_fraction')}]", KEY_PREFIX + "crop_fraction")[0]
    return InputContract(channels, height, width, get("resize"), fraction, mean, std,
                         get("scale"), _labels_value(metadata),
                         metadata.get(KEY_PREFIX + "input_format", FLOAT_NCHW))


def metadata_json(text: str, key: str) -> object:
    """A metadata value parsed as JSON within the bounds above, or UserError naming `key`
    (deep nesting, 5000-digit integers and NaN/Infinity are refused, not met later)."""
    def refuse(why: str) -> UserError:
        return UserError(f"model metadata {key}: {why}")

    if len(text) > MAX_METADATA_VALUE_CHARS:
        raise refuse(f"{len(text):,} characters, more than {MAX_METADATA_VALUE_CHARS:,}")
    if json_depth(text) > MAX_METADATA_DEPTH:  # before parsing: json.loads recurses per level
        raise refuse(f"nested more than {MAX_METADATA_DEPTH} deep")

    def no_constant(name: str) -> float:
        raise refuse(f"{name} is not a number")

    try:
        return json.loads(text, parse_constant=no_constant, parse_int=_bounded_int)
    except UserError:
        raise
    except (ValueError, RecursionError) as exc:
        raise refuse(f"not JSON ({str(exc)[:100]})") from None


def json_depth(text: str) -> int:
    """How deep the arrays and objects of JSON `text` nest (brackets inside strings aside)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 18:
        raise ValueError(f"integer of {len(text)} digits")
    return int(text)


def _numbers(text: str, key: str) -> tuple[float, ...]:
    values = metadata_json(text, key)
    if (not isinstance(values, list) or not values
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        raise UserError(f"model metadata {key}: expected a JSON list of numbers")
    return tuple(float(v) for v in values)


def _labels_value(metadata: dict[str, str]) -> tuple[str, ...] | None:
    if KEY_LABELS not in metadata:
        return None
    names = metadata_json(metadata[KEY_LABELS], KEY_LABELS)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"model metadata: {KEY_LABELS} must be a JSON list of strings")
    if len(names) > MAX_LABELS:
        raise UserError(f"model metadata: {KEY_LABELS} has {len(names):,} names, more than "
                        f"{MAX_LABELS:,}")
    return tuple(names)


def check_label_count(labels: tuple[str, ...] | list[str] | None, outputs: int,
                      what: str) -> None:
    """UserError unless there is one class name per model output (`outputs` -1: unknown)."""
    if labels is not None and outputs > 0 and len(labels) != outputs:
        raise UserError(f"{what}: {len(labels)} labels for a model with {outputs} classes")


def onnx_input_layout(shape: list[int | None], input_format: str) -> tuple[int, int, int]:
    """(channels, height, width) of one sample from the ONNX input shape."""
    if len(shape) != 4 or any(not isinstance(d, int) or d < 1 for d in shape[1:]):
        raise UserError(f"the model input must be 4-D with static sizes after the batch, got "
                        f"{shape}")
    if input_format == UINT8_NHWC:
        return shape[3], shape[1], shape[2]
    return shape[1], shape[2], shape[3]


def read_contract(path: str | Path) -> InputContract | None:
    """The contract of an ONNX file, a Triton model directory or a one-model repository.

    None when the model records no preprocessing (callers fall back to `default_contract`).
    """
    from resnext_compiler.onnx_cost import read_structure

    return contract_of(read_structure(find_onnx_file(Path(path))))


def contract_of(structure: OnnxStructure) -> InputContract | None:
    """The contract an ONNX model read by `onnx_cost.read_structure` records (see
    `read_contract`)."""
    metadata = structure.metadata
    graph_input = structure.inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in graph_input.type.tensor_type.shape.dim]
    fmt = metadata.get(KEY_PREFIX + "input_format", FLOAT_NCHW)
    output = structure.model.graph.output[0].type.tensor_type.shape.dim
    width = output[-1].dim_value if output and output[-1].dim_value > 0 else -1
    try:
        channels, height, width_in = onnx_input_layout(dims, fmt)
        contract = contract_from_metadata(metadata, channels, height, width_in)
        check_label_count(contract.labels if contract else None, width,
                          f"metadata {KEY_LABELS}")
        return contract
    except UserError as exc:
        raise UserError(f"{structure.path}: {exc}") from None


def version_number(name: str) -> int | None:
    """A Triton version folder's number: ASCII digits only (`'²'.isdigit()` is True)."""
    if not name or len(name) > 18 or not (name.isascii() and name.isdigit()):
        return None
    return int(name)


def find_onnx_file(path: Path) -> Path:
    """`path` itself, or the newest REPO[/<model>]/<version>/model.onnx under it."""
    if not path.is_dir():  # one file: regular (a FIFO is refused, not waited on), <= 2 GiB
        named_file(path, ONNX_MODEL, None)
        return path  # as the user typed it, for messages
    model_dirs = [path] if (path / "config.pbtxt").is_file() else sorted(
        child for child in path.iterdir() if (child / "config.pbtxt").is_file())
    if len(model_dirs) != 1:
        raise UserError(f"{path}: expected one ONNX file or one Triton model "
                        f"(found {len(model_dirs)} models)")
    return newest_model_file(model_dirs[0], path.resolve())[1]


def newest_model_file(model_dir: Path, root: Path) -> tuple[int, Path]:
    """(version, its model.onnx) for the highest numeric version folder of a Triton model
    folder, as Triton's default version policy serves. The file is one the repository names:
    a regular file under `root` of at most 2 GiB (`named_files`), not a FIFO or a link out."""
    versions = sorted((number, child) for child in model_dir.iterdir()
                      if (number := version_number(child.name)) is not None
                      and (child / "model.onnx").exists())
    if not versions:
        shown = sanitise(str(model_dir))
        raise UserError(f"{shown}: no version directory with model.onnx (e.g. "
                        f"{shown}/1/model.onnx)")
    version, folder = versions[-1]
    where = f"{model_dir / 'config.pbtxt'}: version {version}"
    return version, named_file(folder / "model.onnx", ONNX_MODEL, root, where)
