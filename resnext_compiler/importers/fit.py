"""Fit imported tensors to a graph: every name and shape checked, nothing loaded half-way.

On any mismatch the import stops with the first mismatching keys and their shapes, unless
`allow_partial` is given; then only the tensors that fit are written and the rest are listed.
BatchNorm's `num_batches_tracked` (absent from Torch7 and old PyTorch checkpoints; inference
never reads it) is filled with 0 when the source lacks it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from resnext_compiler.errors import UserError
from resnext_compiler.ir import Graph
from resnext_compiler.weights import (
    OPTIONAL_SUFFIXES,
    compare_weights,
    fill_step_counters,
    graph_shapes,
    weight_shape,
    weight_shapes,
)


@dataclass
class ImportResult:
    """Tensors keyed by IR names (float32 parameters, int64 counters) and what did not fit."""

    tensors: dict[str, np.ndarray]
    source_format: str
    graph_name: str
    expected: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shapes: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def problems(self) -> list[str]:
        return self.wrong_shapes + self.missing + self.unexpected

    def summary(self) -> str:
        text = (f"imported {len(self.tensors)} of {self.expected} tensors of {self.graph_name} "
                f"from a {self.source_format}")
        if self.filled:
            text += f"; {len(self.filled)} num_batches_tracked counters set to 0"
        if self.problems:
            text += (f"; skipped {len(self.wrong_shapes)} with wrong shapes, "
                     f"{len(self.missing)} missing, {len(self.unexpected)} unexpected")
        return text


def fit_to_graph(tensors: Mapping[str, np.ndarray], graph: Graph, source_format: str,
                 allow_partial: bool = False, source_name: str = "weights") -> ImportResult:
    """Check `tensors` against `graph.params()`; raise UserError listing mismatches.

    Names and shapes are compared first (a lazy mapping reads nothing for it); only tensors
    that fit are then read."""
    params = graph.params()
    filled = [p.name for p in params
              if p.name.endswith(OPTIONAL_SUFFIXES) and p.name not in tensors]
    tensors = fill_step_counters(tensors, graph)
    report = compare_weights(graph_shapes(graph), weight_shapes(tensors), graph.name)
    if report.problems and not allow_partial:
        raise UserError(
            f"{source_name} does not fit {graph.name}: {report.counts()} tensors:\n"
            f"{report.listing()}\nnothing was written; pass --allow-partial to import only the "
            f"tensors that fit")
    result = ImportResult({}, source_format, graph.name, len(params), report.missing,
                          report.unexpected, report.wrong_shapes, filled, dict(graph.metadata))
    for param in params:
        if param.name not in tensors or weight_shape(tensors, param.name) != param.shape:
            continue
        value = tensors[param.name]
        dtype = np.int64 if param.dtype == "int64" else np.float32
        # np.require keeps 0-d counters 0-d (np.ascontiguousarray would make them 1-d).
        result.tensors[param.name] = np.require(np.asarray(value, dtype=dtype), requirements="C")
    if len(result.tensors) == len(result.filled):
        raise UserError(f"no tensor of {source_name} fits {graph.name}; is it the right spec?")
    return result


def save_safetensors(path: str | Path, result: ImportResult,
                     metadata: dict[str, str] | None = None) -> Path:
    """Write the tensors atomically (temp file + rename) with provenance metadata."""
    from safetensors.numpy import save

    from resnext_compiler.artifacts import write_bytes_atomic

    info = {**result.metadata, "source_format": result.source_format, **(metadata or {})}
    return write_bytes_atomic(path, save(result.tensors, metadata=info))
