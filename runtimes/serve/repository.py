"""Finding the ONNX models to serve: one `.onnx` file or a Triton model repository.

A Triton repository is `REPO/<name>/config.pbtxt` + `REPO/<name>/<version>/model.onnx`
(the layout the triton backend writes, stated in `resnext_compiler.artifact_format`); as
Triton's default version policy does, the highest numeric version is served. Every file a
repository names is read through `named_files`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from resnext_compiler.artifact_format import (
    CONFIG_FILE,
    FIRST_VERSION,
    MODEL_FILE,
    is_model_folder,
    newest_model_file,
)
from resnext_compiler.errors import UserError, sanitise, shown
from resnext_compiler.named_files import (
    LABELS,
    ONNX_MODEL,
    TRITON_CONFIG,
    contained,
    named_file,
    named_folder,
    read_named_text,
)

MAX_MODELS = 256  # model folders in one repository, counted before any model loads


@dataclass(frozen=True)
class ModelSource:
    """Where one servable model lives."""

    name: str
    version: str
    onnx_path: Path
    config_max_batch: int | None = None  # Triton config.pbtxt's max_batch_size, if any
    name_from_metadata: bool = False  # a bare .onnx file: prefer its spec_name metadata
    labels_path: Path | None = None  # Triton: the output's label_filename in the model folder
    folder: Path | None = None  # Triton: the model folder, which its label_filename stays under


def find_models(path: Path) -> list[ModelSource]:
    """The models under `path`: an ONNX file, a Triton model directory, or a repository.

    A repository is bounded before any model loads: at most `MAX_MODELS` model folders, each
    one's files (config.pbtxt, label_filename, version folders) under the repository (see
    `named_files`), config.pbtxt of at most 1 MiB, and no two models with one name.
    """
    if not path.exists():
        raise UserError(f"model not found: {shown(path)}")
    if not path.is_dir():  # one file: regular (a FIFO is refused, not waited on), <= 2 GiB
        named_file(path, ONNX_MODEL, None)
        return [ModelSource(name=path.stem, version="1", onnx_path=path,
                            name_from_metadata=True)]
    root = path.resolve()
    if is_model_folder(path):
        return [_triton_model(path, root)]
    model_dirs = []
    for child in sorted(path.iterdir()):
        if not is_model_folder(child):
            continue
        model_dirs.append(child)
        if len(model_dirs) > MAX_MODELS:
            raise UserError(f"{shown(path)}: more than {MAX_MODELS} models (folders with a "
                            f"{CONFIG_FILE}); serve a repository of fewer models")
    if not model_dirs:
        raise UserError(f"{shown(path)} is neither an ONNX file nor a Triton model repository "
                        f"(expected REPO/<name>/{CONFIG_FILE} and "
                        f"REPO/<name>/{FIRST_VERSION}/{MODEL_FILE})")
    found = [_triton_model(child, root) for child in model_dirs]
    first: dict[str, Path] = {}
    for model_dir, source in zip(model_dirs, found, strict=True):
        if source.name in first:
            raise UserError(f"{shown(path)}: two models are named {sanitise(source.name)!r} "
                            f"({shown(first[source.name] / CONFIG_FILE)} and "
                            f"{shown(model_dir / CONFIG_FILE)}); model names must be unique")
        first[source.name] = model_dir
    return found


def _triton_model(model_dir: Path, root: Path) -> ModelSource:
    config_path = model_dir / CONFIG_FILE
    folder = named_folder(model_dir, root)
    config = read_named_text(config_path, TRITON_CONFIG, root)
    platform = re.search(r'^\s*(?:platform|backend)\s*:\s*"([^"]+)"', config, re.MULTILINE)
    if platform and platform.group(1) not in ("onnxruntime_onnx", "onnxruntime"):
        raise UserError(f"{shown(config_path)}: platform {sanitise(platform.group(1))!r} is not "
                        "ONNX; this server runs onnxruntime_onnx models only")
    name = re.search(r'^\s*name\s*:\s*"([^"]+)"', config, re.MULTILINE)
    max_batch = re.search(r"^\s*max_batch_size\s*:\s*([0-9]{1,9})\s*$", config, re.MULTILINE)
    label_file = re.search(r'^\s*label_filename\s*:\s*"([^"/\\]+)"', config, re.MULTILINE)
    version, onnx_path = newest_model_file(model_dir, root)
    labels_path = None
    if label_file:
        labels_path = contained(model_dir / label_file.group(1), folder,
                                f"{config_path}: label_filename", LABELS)
    return ModelSource(
        name=name.group(1) if name else model_dir.name,
        version=str(version),
        onnx_path=onnx_path,
        config_max_batch=int(max_batch.group(1)) if max_batch and int(max_batch.group(1)) else None,
        labels_path=labels_path,
        folder=folder,
    )
