"""The input contract: what a model expects of an image, and the names of its classes.

Decided once (spec `preprocess:`, defaults per data set, resolved by the training run) and
carried by every artifact: ONNX `metadata_props` and the Triton repository (config parameters
+ labels file), written and read by `resnext_compiler.artifact_format` (docs/onnx.md), and
the generated torch source. The evaluation transform that applies it is
`resnext_compiler.image_transform`.

    colour    grey (1 channel) | rgb (3 channels); other channel counts take no images
    resize    crop: the image is scaled to cover height/crop_fraction x width/crop_fraction
              (aspect kept) and the centre height x width is taken (torchvision's
              Resize(256) + CenterCrop(224) at 0.875); direct: scaled to height x width
    normalise (pixel / 255 - mean) / std with scale "0-1"; (pixel - mean) / std with "0-255"
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from resnext_compiler.dataset_types import IMAGENET_MEAN, IMAGENET_STD, dataset_type
from resnext_compiler.errors import UserError

if TYPE_CHECKING:  # spec.py imports this module (parse_labels)
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


def check_label_count(labels: tuple[str, ...] | list[str] | None, outputs: int,
                      what: str) -> None:
    """UserError unless there is one class name per model output (`outputs` -1: unknown)."""
    if labels is not None and outputs > 0 and len(labels) != outputs:
        raise UserError(f"{what}: {len(labels)} labels for a model with {outputs} classes")
