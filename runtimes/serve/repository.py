"""Finding the ONNX models to serve: one `.onnx` file or a Triton model repository.

A Triton repository is `REPO/<name>/config.pbtxt` + `REPO/<name>/<version>/model.onnx`
(the layout the triton backend writes); as Triton's default version policy does, the highest
numeric version is served.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from resnext_compiler.errors import UserError
from resnext_compiler.input_contract import version_number


@dataclass(frozen=True)
class ModelSource:
    """Where one servable model lives."""

    name: str
    version: str
    onnx_path: Path
    config_max_batch: int | None = None  # Triton config.pbtxt's max_batch_size, if any
    name_from_metadata: bool = False  # a bare .onnx file: prefer its spec_name metadata
    labels_path: Path | None = None  # Triton: the output's label_filename in the model folder


def find_models(path: Path) -> list[ModelSource]:
    """The models under `path`: an ONNX file, a Triton model directory, or a repository."""
    if not path.exists():
        raise UserError(f"model not found: {path}")
    if path.is_file():
        return [ModelSource(name=path.stem, version="1", onnx_path=path,
                            name_from_metadata=True)]
    if (path / "config.pbtxt").is_file():
        return [_triton_model(path)]
    found = [_triton_model(child) for child in sorted(path.iterdir())
             if child.is_dir() and (child / "config.pbtxt").is_file()]
    if not found:
        raise UserError(f"{path} is neither an ONNX file nor a Triton model repository "
                        "(expected REPO/<name>/config.pbtxt and REPO/<name>/1/model.onnx)")
    return found


def _triton_model(model_dir: Path) -> ModelSource:
    config = (model_dir / "config.pbtxt").read_text(errors="replace")
    platform = re.search(r'^\s*(?:platform|backend)\s*:\s*"([^"]+)"', config, re.MULTILINE)
    if platform and platform.group(1) not in ("onnxruntime_onnx", "onnxruntime"):
        raise UserError(f"{model_dir}/config.pbtxt: platform {platform.group(1)!r} is not "
                        "ONNX; this server runs onnxruntime_onnx models only")
    name = re.search(r'^\s*name\s*:\s*"([^"]+)"', config, re.MULTILINE)
    max_batch = re.search(r"^\s*max_batch_size\s*:\s*([0-9]{1,9})\b", config, re.MULTILINE)
    label_file = re.search(r'^\s*label_filename\s*:\s*"([^"/\\]+)"', config, re.MULTILINE)
    versions = sorted((int(child.name), child) for child in model_dir.iterdir()
                      if version_number(child.name) is not None
                      and (child / "model.onnx").is_file())
    if not versions:
        raise UserError(f"{model_dir}: no version directory with model.onnx (e.g. "
                        f"{model_dir}/1/model.onnx)")
    version, version_dir = versions[-1]
    return ModelSource(
        name=name.group(1) if name else model_dir.name,
        version=str(version),
        onnx_path=version_dir / "model.onnx",
        config_max_batch=int(max_batch.group(1)) if max_batch and int(max_batch.group(1)) else None,
        labels_path=model_dir / label_file.group(1) if label_file else None,
    )
