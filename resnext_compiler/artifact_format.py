"""The artifact format: how a compiled model lies on disk and what its metadata says.

Every writer (the onnx and triton backends, the int8 quantizer) and every reader (`serve`,
`evaluate`, `inspect`, the int8 quantizer given a file) goes through this module, so the
layout, the metadata keys and the input layout are each stated once.

A Triton model repository (the triton backend writes version 1; readers take the highest
numeric version, as Triton's default version policy serves):

    REPO/<model>/config.pbtxt          platform, batching, input/output dims, parameters
    REPO/<model>/<version>/model.onnx  the ONNX model
    REPO/<model>/labels.txt            class names, one per line (the output's label_filename)

ONNX `metadata_props` and Triton `parameters` (docs/onnx.md): `spec_name`, `spec_hash`,
`dtype`, the input contract under `preprocess.` (its class names under `class_names`, which
Triton keeps in the labels file instead) and an int8 file's measurements under `int8.`.

The model input is float32 [N, C, H, W] or, with in-graph preprocessing, uint8 [N, H, W, C];
`input_layout` is the one reading of (channels, height, width) from its dims, `sample_dims`
the one writing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from resnext_compiler.errors import UserError, sanitise
from resnext_compiler.input_contract import (
    FLOAT_NCHW,
    UINT8_NHWC,
    InputContract,
    check_label_count,
    default_contract,
)
from resnext_compiler.named_files import ONNX_MODEL, named_file

if TYPE_CHECKING:
    from resnext_compiler.onnx_cost import OnnxStructure

# The Triton repository layout.
CONFIG_FILE = "config.pbtxt"
MODEL_FILE = "model.onnx"
LABELS_FILE = "labels.txt"
FIRST_VERSION = 1

# Metadata keys (ONNX metadata_props; Triton parameters).
KEY_SPEC_NAME = "spec_name"
KEY_SPEC_HASH = "spec_hash"
KEY_DTYPE = "dtype"
PREPROCESS_PREFIX = "preprocess."
KEY_RESIZE = PREPROCESS_PREFIX + "resize"  # present exactly when preprocessing is recorded
KEY_INPUT_FORMAT = PREPROCESS_PREFIX + "input_format"
KEY_CLASS_NAMES = "class_names"
INT8_PREFIX = "int8."

# Metadata values are parsed once, when a model is opened, within these bounds.
MAX_METADATA_VALUE_CHARS = 16 * 1024 * 1024  # a class_names list of a million names fits
MAX_METADATA_DEPTH = 2  # a list of numbers or names
MAX_LABELS = 1 << 20  # = limits.MAX_CLASSES


# --- The Triton repository layout ------------------------------------------------------------

def model_file(model_dir: Path, version: int = FIRST_VERSION) -> Path:
    """REPO/<model>/<version>/model.onnx."""
    return model_dir / str(version) / MODEL_FILE


def is_model_folder(path: Path) -> bool:
    """Whether `path` is a Triton model folder (it holds a config.pbtxt)."""
    return (path / CONFIG_FILE).exists()


def model_folders(repository: Path) -> Iterator[Path]:
    """The model folders of a repository, in sorted order."""
    return (child for child in sorted(repository.iterdir()) if is_model_folder(child))


def version_number(name: str) -> int | None:
    """A Triton version folder's number: ASCII digits only (`'²'.isdigit()` is True)."""
    if not name or len(name) > 18 or not (name.isascii() and name.isdigit()):
        return None
    return int(name)


def newest_model_file(model_dir: Path, root: Path) -> tuple[int, Path]:
    """(version, its model.onnx) for the highest numeric version folder of a Triton model
    folder, as Triton's default version policy serves. The file is one the repository names:
    a regular file under `root` of at most 2 GiB (`named_files`), not a FIFO or a link out."""
    versions = sorted((number, child) for child in model_dir.iterdir()
                      if (number := version_number(child.name)) is not None
                      and (child / MODEL_FILE).exists())
    if not versions:
        shown = sanitise(str(model_dir))
        raise UserError(f"{shown}: no version directory with {MODEL_FILE} (e.g. "
                        f"{shown}/{FIRST_VERSION}/{MODEL_FILE})")
    version, folder = versions[-1]
    where = f"{model_dir / CONFIG_FILE}: version {version}"
    return version, named_file(folder / MODEL_FILE, ONNX_MODEL, root, where)


def find_onnx_file(path: Path) -> Path:
    """`path` itself, or the newest REPO[/<model>]/<version>/model.onnx under it."""
    if not path.is_dir():  # one file: regular (a FIFO is refused, not waited on), <= 2 GiB
        named_file(path, ONNX_MODEL, None)
        return path  # as the user typed it, for messages
    model_dirs = [path] if is_model_folder(path) else list(model_folders(path))
    if len(model_dirs) != 1:
        raise UserError(f"{path}: expected one ONNX file or one Triton model "
                        f"(found {len(model_dirs)} models)")
    return newest_model_file(model_dirs[0], path.resolve())[1]


# --- The input contract in metadata ----------------------------------------------------------

def contract_metadata(contract: InputContract) -> dict[str, str]:
    """The contract as string key/values for ONNX metadata_props and Triton parameters."""
    data = {
        "colour": contract.colour or "none",
        "height": str(contract.height),
        "width": str(contract.width),
        "resize": contract.resize,
        "crop_fraction": repr(float(contract.crop_fraction)),
        "mean": json.dumps(list(contract.mean)),
        "std": json.dumps(list(contract.std)),
        "scale": contract.scale,
        "input_format": contract.input_format,
    }
    out = {PREPROCESS_PREFIX + key: value for key, value in data.items()}
    if contract.labels is not None:
        out[KEY_CLASS_NAMES] = json.dumps(list(contract.labels), ensure_ascii=False)
    return out


def records_preprocessing(metadata: dict[str, str]) -> bool:
    """Whether the metadata records a contract's preprocessing (not only class names)."""
    return KEY_RESIZE in metadata


def input_format(metadata: dict[str, str], takes_uint8: bool) -> str:
    """The recorded input format; a file that records none is uint8 NHWC when its input is
    uint8 (raw decoded pixels), float32 NCHW otherwise."""
    return metadata.get(KEY_INPUT_FORMAT, UINT8_NHWC if takes_uint8 else FLOAT_NCHW)


def input_layout(dims: list[int | None], input_format: str) -> tuple[int, int, int]:
    """(channels, height, width) of one sample from the ONNX input dims of `input_format`."""
    if len(dims) != 4 or any(not isinstance(d, int) or d < 1 for d in dims[1:]):
        raise UserError(f"the model input must be 4-D with static sizes after the batch, got "
                        f"{dims}")
    if input_format == UINT8_NHWC:
        return dims[3], dims[1], dims[2]
    return dims[1], dims[2], dims[3]


def sample_dims(channels: int, height: int, width: int, input_format: str) -> list[int]:
    """The model input's dims after the batch for `input_format` (the inverse of
    `input_layout`): what the ONNX graph and Triton's config.pbtxt declare."""
    if input_format == UINT8_NHWC:
        return [height, width, channels]
    return [channels, height, width]


def contract_from_metadata(metadata: dict[str, str], channels: int, height: int, width: int,
                           fmt: str = FLOAT_NCHW) -> InputContract | None:
    """The contract recorded in ONNX metadata / Triton parameters, or None when absent.

    `channels`, `height`, `width` and `fmt` are the model input's (the graph is the
    authority on them). A recorded contract that cannot be read is an error, never a silent
    default.
    """
    if not records_preprocessing(metadata):
        labels = _labels_value(metadata)
        return None if labels is None else replace(
            default_contract(channels, height, width), input_format=fmt).with_labels(labels)

    def get(key: str) -> str:
        if PREPROCESS_PREFIX + key not in metadata:
            raise UserError(f"model metadata has {KEY_RESIZE} but no {PREPROCESS_PREFIX}{key}")
        return metadata[PREPROCESS_PREFIX + key]

    mean = _numbers(get("mean"), PREPROCESS_PREFIX + "mean")
    std = _numbers(get("std"), PREPROCESS_PREFIX + "std")
    fraction = _numbers(f"[{get('crop_fraction')}]", PREPROCESS_PREFIX + "crop_fraction")[0]
    return InputContract(channels, height, width, get("resize"), fraction, mean, std,
                         get("scale"), _labels_value(metadata), fmt)


def _input_layout_of(structure: OnnxStructure) -> tuple[str, tuple[int, int, int]]:
    """(input format, (channels, height, width)) of a model's first input; UserError naming
    the file when the input is not an image batch."""
    from onnx import TensorProto

    tensor = structure.inputs[0].type.tensor_type
    fmt = input_format(structure.metadata, tensor.elem_type == TensorProto.UINT8)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    try:
        return fmt, input_layout(dims, fmt)
    except UserError as exc:
        raise UserError(f"{structure.path}: {exc}") from None


def contract_of(structure: OnnxStructure) -> InputContract | None:
    """The contract an ONNX model read by `onnx_cost.read_structure` records, or None when
    it records neither preprocessing nor class names. Its class names must be one per
    output."""
    fmt, (channels, height, width) = _input_layout_of(structure)
    output = structure.model.graph.output[0].type.tensor_type.shape.dim
    classes = output[-1].dim_value if output and output[-1].dim_value > 0 else -1
    try:
        contract = contract_from_metadata(structure.metadata, channels, height, width, fmt)
        if contract is None:
            return None
        check_label_count(contract.labels, classes, f"metadata {KEY_CLASS_NAMES}")
        return contract
    except UserError as exc:
        raise UserError(f"{structure.path}: {exc}") from None


def contract_or_default(structure: OnnxStructure) -> InputContract:
    """`contract_of(structure)`, or the default contract for the model's input layout (and
    input format) when the file records none."""
    contract = contract_of(structure)
    if contract is not None:
        return contract
    fmt, layout = _input_layout_of(structure)
    return replace(default_contract(*layout), input_format=fmt)


def read_contract(path: str | Path) -> InputContract | None:
    """The contract of an ONNX file, a Triton model directory or a one-model repository.

    None when the model records no preprocessing (callers fall back to `default_contract`).
    """
    from resnext_compiler.onnx_cost import read_structure

    return contract_of(read_structure(find_onnx_file(Path(path))))


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
    if KEY_CLASS_NAMES not in metadata:
        return None
    names = metadata_json(metadata[KEY_CLASS_NAMES], KEY_CLASS_NAMES)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"model metadata: {KEY_CLASS_NAMES} must be a JSON list of strings")
    if len(names) > MAX_LABELS:
        raise UserError(f"model metadata: {KEY_CLASS_NAMES} has {len(names):,} names, more "
                        f"than {MAX_LABELS:,}")
    return tuple(names)
