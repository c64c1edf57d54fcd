"""Loading an ONNX model to serve into onnxruntime (`repository.py` finds the models).

The onnxruntime session uses the CUDA execution provider when it is present (or asked for),
otherwise the CPU one; asking for CUDA without a working CUDA provider is a `UserError`, never
a silent fallback to CPU.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from resnext_compiler.artifact_format import (
    KEY_SPEC_NAME,
    contract_or_default,
    records_preprocessing,
)
from resnext_compiler.errors import UserError, sanitise
from resnext_compiler.limits import DEVICES
from resnext_compiler.onnx_cost import check_cost, memory_budget, model_cost, read_structure
from resnext_compiler.onnxruntime_install import import_onnxruntime
from resnext_compiler.runtimes.serve.datatypes import ORT_TO_V2, V2_TO_NUMPY, TensorInfo
from resnext_compiler.runtimes.serve.repository import ModelSource
from resnext_compiler.runtimes.serve.warmup import warm_up_in_child

log = logging.getLogger("resnext_compiler.serve")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def choose_providers(device: str) -> list[str]:
    """onnxruntime execution providers for `--device` (CUDA first when present or asked for)."""
    if device not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    available = import_onnxruntime().get_available_providers()
    if device == "cuda" and CUDA not in available:
        raise UserError("--device cuda: this onnxruntime has no CUDA execution provider "
                        f"(available: {', '.join(available)}); install onnxruntime-gpu "
                        "alone (pip uninstall -y onnxruntime && pip install "
                        "'resnext-compile[gpu]') or use --device cpu")
    if device == "cpu" or CUDA not in available:
        return [CPU]
    return [CUDA, CPU]


class LoadedModel:
    """One onnxruntime session with its single batched input and its outputs.

    The file is read and costed (`onnx_cost`) before onnxruntime sees it: a model whose weights
    and activations at its batch exceed the memory budget is refused, located, before a
    session or a warm-up allocates anything; one whose sizes are known only when it runs is
    warmed up first in a memory-limited child (`warmup.py`).
    """

    def __init__(self, source: ModelSource, device: str = "auto", max_batch: int = 32,
                 intra_op_threads: int = 0, max_memory_bytes: int | None = None):
        self.name, self.version, self.path = source.name, source.version, source.onnx_path
        structure = read_structure(self.path, max_memory_bytes)
        self.metadata = structure.metadata
        feeds = structure.inputs
        if len(feeds) != 1:
            raise UserError(f"{self.path}: expected one input, found {len(feeds)}")
        first = feeds[0].type.tensor_type.shape.dim
        self.static_batch = first[0].dim_value if first and first[0].dim_value > 0 else None
        limits = [max_batch] + ([source.config_max_batch] if source.config_max_batch else [])
        self.max_batch = self.static_batch or min(limits)
        budget, origin = memory_budget(max_memory_bytes)
        cost = model_cost(structure, self.max_batch, budget)
        check_cost(cost, self.path, budget, origin, "lower --max-batch or raise --max-memory-gb")
        self.session = _session(self.path, device, intra_op_threads)
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider != CUDA:
            raise UserError(f"--device cuda: onnxruntime could not start the CUDA execution "
                            f"provider for {self.path} (it fell back to {self.provider}); check "
                            "the CUDA/cuDNN libraries or use --device cpu")
        self.input = _tensor_info(self.session.get_inputs()[0], self.path)
        self.outputs = [_tensor_info(out, self.path) for out in self.session.get_outputs()]
        spec_name = self.metadata.get(KEY_SPEC_NAME, "")
        if source.name_from_metadata and re.fullmatch(r"[A-Za-z0-9_.-]+", spec_name):
            self.name = spec_name  # the ONNX backend records the spec's name here
        # the recorded contract (its class names one per output), else the defaults; a model
        # whose input is not a 4-D image batch, static after the batch, is refused here
        self.contract = contract_or_default(structure)
        self.contract_recorded = records_preprocessing(self.metadata)
        warm_up = np.zeros((self.static_batch or 1, *self.input.shape[1:]), self.input_dtype)
        if cost.unknown:
            shape = [self.max_batch, *self.input.shape[1:]]
            warm_up_in_child(self.path, {self.input.name: (shape, self.input_dtype.str)},
                             budget, cost.unknown)
        self.run(warm_up)
        log.info("loaded model %s (version %s) from %s on %s; input %s %s, max batch %d",
                 self.name, self.version, self.path, self.provider, self.input.name,
                 list(self.input.shape), self.max_batch)

    @property
    def input_dtype(self) -> np.dtype:
        return V2_TO_NUMPY[self.input.datatype]

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """All outputs for one batch (called from the batcher's worker thread)."""
        return self.session.run(None, {self.input.name: batch})


def _session(path: Path, device: str, intra_op_threads: int):  # noqa: ANN202 - onnxruntime's
    ort = import_onnxruntime()
    ort.set_default_logger_severity(3)  # onnxruntime's own log: errors only (they raise)
    options = ort.SessionOptions()
    # idle onnxruntime threads spin by default, taking cores from the event loop that
    # parses the next requests; a server is better off letting them sleep
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # onnxruntime's own log carries names from the file; errors reach us as exceptions
    options.log_severity_level = 3
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    try:
        return ort.InferenceSession(str(path), options, providers=choose_providers(device))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot load ONNX model {path}: {sanitise(str(exc))[:500]}") from None


def _tensor_info(arg, path: Path) -> TensorInfo:  # noqa: ANN001 - onnxruntime NodeArg
    datatype = ORT_TO_V2.get(arg.type)
    if datatype is None:
        raise UserError(f"{path}: tensor {arg.name!r} has unsupported type {arg.type}")
    shape = tuple(dim if isinstance(dim, int) and dim > 0 else -1 for dim in arg.shape)
    return TensorInfo(name=arg.name, datatype=datatype, shape=shape)
