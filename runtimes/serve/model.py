"""Finding and loading the ONNX models to serve: one `.onnx` file or a Triton model repository.

A Triton repository is `REPO/<name>/config.pbtxt` + `REPO/<name>/<version>/model.onnx`
(the layout the triton backend writes); as Triton's default version policy does, the highest
numeric version is served. The onnxruntime session uses the CUDA execution provider when it is
present (or asked for), otherwise the CPU one; asking for CUDA without a working CUDA provider
is a `UserError`, never a silent fallback to CPU.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnext_compiler.errors import UserError
from resnext_compiler.input_contract import (
    FLOAT_NCHW,
    KEY_PREFIX,
    InputContract,
    contract_from_metadata,
    default_contract,
    onnx_input_layout,
)
from resnext_compiler.runtimes.serve.datatypes import ORT_TO_V2, V2_TO_NUMPY

log = logging.getLogger("resnext_compiler.serve")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ModelSource:
    """Where one servable model lives."""

    name: str
    version: str
    onnx_path: Path
    config_max_batch: int | None = None  # Triton config.pbtxt's max_batch_size, if any
    name_from_metadata: bool = False  # a bare .onnx file: prefer its spec_name metadata
    labels_path: Path | None = None  # Triton: the output's label_filename in the model folder


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output as the Open Inference Protocol describes it (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


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
    max_batch = re.search(r"^\s*max_batch_size\s*:\s*(\d+)", config, re.MULTILINE)
    label_file = re.search(r'^\s*label_filename\s*:\s*"([^"/\\]+)"', config, re.MULTILINE)
    versions = sorted((int(child.name), child) for child in model_dir.iterdir()
                      if child.name.isdigit() and (child / "model.onnx").is_file())
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


def choose_providers(device: str) -> list[str]:
    """onnxruntime execution providers for `--device` (CUDA first when present or asked for)."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    available = ort.get_available_providers()
    if device == "cuda" and CUDA not in available:
        raise UserError("--device cuda: this onnxruntime has no CUDA execution provider "
                        f"(available: {', '.join(available)}); install onnxruntime-gpu "
                        "(pip install 'resnext-compile[gpu]') or use --device cpu")
    if device == "cpu" or CUDA not in available:
        return [CPU]
    return [CUDA, CPU]


class LoadedModel:
    """One onnxruntime session with its single batched input and its outputs."""

    def __init__(self, source: ModelSource, device: str = "auto", max_batch: int = 32,
                 intra_op_threads: int = 0):
        import onnxruntime as ort

        self.name, self.version, self.path = source.name, source.version, source.onnx_path
        options = ort.SessionOptions()
        # idle onnxruntime threads spin by default, taking cores from the event loop that
        # parses the next requests; a server is better off letting them sleep
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=choose_providers(device))
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"cannot load ONNX model {self.path}: {exc}") from None
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider != CUDA:
            raise UserError(f"--device cuda: onnxruntime could not start the CUDA execution "
                            f"provider for {self.path} (it fell back to {self.provider}); check "
                            "the CUDA/cuDNN libraries or use --device cpu")
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise UserError(f"{self.path}: expected one input, found {len(inputs)}")
        self.input = _tensor_info(inputs[0], self.path)
        if len(self.input.shape) != 4 or any(dim < 1 for dim in self.input.shape[1:]):
            raise UserError(f"{self.path}: input {self.input.name!r} needs 4 dimensions, static "
                            f"after the batch, got {list(self.input.shape)}")
        self.outputs = [_tensor_info(out, self.path) for out in self.session.get_outputs()]
        self.static_batch = self.input.shape[0] if self.input.shape[0] > 0 else None
        limits = [max_batch] + ([source.config_max_batch] if source.config_max_batch else [])
        self.max_batch = self.static_batch or min(limits)
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        spec_name = self.metadata.get("spec_name", "")
        if source.name_from_metadata and re.fullmatch(r"[A-Za-z0-9_.-]+", spec_name):
            self.name = spec_name  # the ONNX backend records the spec's name here
        self.contract, self.contract_recorded = _contract(self.metadata, self.input.shape,
                                                          self.path)
        self.run(np.zeros((self.static_batch or 1, *self.input.shape[1:]), self.input_dtype))
        log.info("loaded model %s (version %s) from %s on %s; input %s %s, max batch %d",
                 self.name, self.version, self.path, self.provider, self.input.name,
                 list(self.input.shape), self.max_batch)

    @property
    def input_dtype(self) -> np.dtype:
        return V2_TO_NUMPY[self.input.datatype]

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """All outputs for one batch (called from the batcher's worker thread)."""
        return self.session.run(None, {self.input.name: batch})


def _contract(metadata: dict[str, str], shape: tuple[int, ...],
              path: Path) -> tuple[InputContract, bool]:
    """(the model's input contract, whether the file records one) -- else the defaults."""
    fmt = metadata.get(KEY_PREFIX + "input_format", FLOAT_NCHW)
    try:
        channels, height, width = onnx_input_layout(list(shape), fmt)
        recorded = contract_from_metadata(metadata, channels, height, width)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    if recorded is not None and KEY_PREFIX + "resize" in metadata:
        return recorded, True
    return recorded or default_contract(channels, height, width), False


def _tensor_info(arg, path: Path) -> TensorInfo:  # noqa: ANN001 - onnxruntime NodeArg
    datatype = ORT_TO_V2.get(arg.type)
    if datatype is None:
        raise UserError(f"{path}: tensor {arg.name!r} has unsupported type {arg.type}")
    shape = tuple(dim if isinstance(dim, int) and dim > 0 else -1 for dim in arg.shape)
    return TensorInfo(name=arg.name, datatype=datatype, shape=shape)
