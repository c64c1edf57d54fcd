"""The backend interface and registry (entry-point group `resnext_compiler.backends`).

A backend turns a shaped IR graph into files. Built-in backends are registered in
pyproject.toml like any third-party one, so a new backend is one file plus one entry point.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

from resnext_compiler.errors import UserError
from resnext_compiler.ir import Graph
from resnext_compiler.spec import Spec

ENTRY_POINT_GROUP = "resnext_compiler.backends"


@dataclass(frozen=True)
class CompileOptions:
    """Everything `resnext-compile SPEC` accepts; each backend reads the fields it needs."""

    weights: Path | None = None
    opset: int | None = None  # None: the backend's default
    batch: int | None = None  # None: symbolic batch dimension
    dtype: str = "fp32"  # fp32 | fp16
    fold_bn: bool = True
    expand: bool = False  # dot: draw every node instead of collapsed blocks
    max_batch: int = 32  # triton: max_batch_size
    seed: int = 0  # deterministic initialisation when no weights are given
    image_input: bool = False  # onnx/triton: uint8 NHWC input, normalised inside the graph


class Backend(Protocol):
    """`emit` writes the artifact(s) for `graph` under `output` and returns the paths written."""

    name: str
    description: str

    def default_output(self, spec: Spec) -> Path: ...

    def emit(
        self, graph: Graph, spec: Spec, options: CompileOptions, output: Path
    ) -> list[Path]: ...


def resolve_output(output: Path, default: Path) -> Path:
    """`-o DIR` means `DIR/<default file name>`; any other path is used as given."""
    return output / default if output.is_dir() else output


def available_backends() -> dict[str, object]:
    """Entry points by name (not loaded: loading may import heavy libraries)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_backend(name: str) -> Backend:
    eps = available_backends()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none installed"
        raise UserError(f"unknown backend {name!r} (available: {known})")
    backend_cls = eps[name].load()  # type: ignore[attr-defined]
    return backend_cls()
