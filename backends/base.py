"""The backend interface: `Backend`, the options it reads, and where it writes.

A backend turns a shaped IR graph into files. `registry.py` finds backends by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from resnext_compiler.limits import DEFAULT_MAX_BATCH
from resnext_compiler.naming import file_stem

if TYPE_CHECKING:  # the CLI reads this module's defaults without loading the compiler
    from resnext_compiler.ir import Graph
    from resnext_compiler.spec import Spec

# int8: images that calibrate the activation ranges when --calibration-images is not given
# (docs/onnx.md, "int8", has the measurements behind the number).
DEFAULT_CALIBRATION_IMAGES = 64
# int8: the least top-1 agreement with float32 (percent, on held-out images) a compile writes
# without --accept-int8-loss, and how many quantizations it tries to reach it (docs/onnx.md).
DEFAULT_MIN_AGREEMENT = 97.0
MAX_ATTEMPTS = 4
# Opset 18 runs on every onnxruntime this project supports (>= 1.18) and on Triton's
# onnxruntime backend; the operators used here have not changed since opset 15. The newest
# accepted is what the installed onnx package knows (`onnx.max_opset()`).
DEFAULT_OPSET = 18
MIN_OPSET = 13  # Slice/Pad with tensor arguments, Sum/Add broadcasting as used here
# Every --dtype a compile accepts; a backend lists the ones it writes in `dtypes` (fp32 only
# when it lists none).
DTYPES = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class CompileOptions:
    """Everything `resnext-compile SPEC` accepts; each backend reads the fields it needs."""

    weights: Path | None = None
    opset: int | None = None  # None: the backend's default
    batch: int | None = None  # None: symbolic batch dimension
    dtype: str = "fp32"  # one of DTYPES
    calibrate: Path | None = None  # int8: folder of calibration images
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES  # int8: how many images to use
    validate: Path | None = None  # int8: held-out images (default: half of --calibrate's)
    int8_min_agreement: float = DEFAULT_MIN_AGREEMENT  # int8: percent top-1 agreement
    accept_int8_loss: bool = False  # int8: write the best attempt even below the threshold
    fold_bn: bool = True
    expand: bool = False  # dot: draw every node instead of collapsed blocks
    max_batch: int = DEFAULT_MAX_BATCH  # triton: max_batch_size
    seed: int = 0  # deterministic initialisation when no weights are given
    image_input: bool = False  # onnx/triton: uint8 NHWC input, normalised inside the graph


class Backend(Protocol):
    """`emit` writes the artifact(s) for `graph` under `output` and returns the paths written.

    `description` is `--backend`'s help for it; optional class attributes: `dtypes` (the
    --dtype values it writes, default fp32 only) and `reads_max_batch` (its artifact batches
    up to `--max-batch` when the batch is dynamic, so the cost budget is checked at it).
    """

    name: str
    description: str

    def default_output(self, spec: Spec) -> Path: ...

    def emit(
        self, graph: Graph, spec: Spec, options: CompileOptions, output: Path
    ) -> list[Path]: ...


def resolve_output(output: Path, default: Path) -> Path:
    """`-o DIR` means `DIR/<default file name>`; any other path is used as given."""
    return output / default if output.is_dir() else output


class SingleFileBackend:
    """A backend that writes one file, by default `<spec name><suffix>`."""

    suffix: ClassVar[str] = ""

    def default_output(self, spec: Spec) -> Path:
        return Path(f"{file_stem(spec.name)}{self.suffix}")

    def output_file(self, spec: Spec, output: Path) -> Path:
        """Where `-o output` puts the file (inside it when it is a directory)."""
        return resolve_output(output, self.default_output(spec))
