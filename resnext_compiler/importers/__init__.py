"""Pretrained weights from elsewhere -> a safetensors file keyed by IR names.

Sources: torchvision and timm state dicts (`.pth`, `.pt`, `.bin`, `.safetensors`; their
ResNet/ResNeXt names are already ours), and the seed's Torch7 models (`.t7`, the fb.resnet
layout of facebookresearch/ResNeXt), and Caffe models (`.caffemodel`) named as `--backend caffe`
writes them. Every reader is `reader(path, graph) -> (tensors, description)` (`read_tensors`
picks one by suffix; `weights.model_weights` reads through it too, so `--weights` takes any of
these files). `import_weights` reads, renames, converts block forms
(`passes.forms`) and checks every name and shape against the spec's graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from resnext_compiler.errors import shown
from resnext_compiler.importers.fit import ImportResult, fit_to_graph, save_safetensors
from resnext_compiler.ir import Graph
from resnext_compiler.named_files import WEIGHTS, named_file
from resnext_compiler.spec import Spec

__all__ = ["ImportResult", "import_weights", "read_tensors", "save_safetensors"]

TORCH7_SUFFIXES = (".t7", ".th7")
CAFFE_SUFFIXES = (".caffemodel",)


def read_tensors(path: Path, graph: Graph) -> tuple[Mapping[str, np.ndarray], str]:
    """IR-named tensors of any importable file, and a short description of its format.

    Every reader has this one signature, `reader(path, graph)`; the suffix picks it.
    """
    suffix = path.suffix.lower()
    if suffix in TORCH7_SUFFIXES:
        from resnext_compiler.importers.torch7 import read_torch7_model

        tensors, detail = read_torch7_model(path, graph)
        return tensors, f"Torch7 ({detail})"
    if suffix in CAFFE_SUFFIXES:
        from resnext_compiler.importers.caffe import read_caffemodel

        return read_caffemodel(path, graph)
    from resnext_compiler.importers.state_dict import read_state_dict

    return read_state_dict(path, graph)


def import_weights(source: str | Path, spec: Spec, allow_partial: bool = False) -> ImportResult:
    """Read `source` and fit it to `spec` (in the spec's block form). Raises UserError."""
    from resnext_compiler.pipeline import compile_spec
    from resnext_compiler.weights import fit_form

    path = named_file(source, WEIGHTS, None)  # a FIFO or device is refused, not read
    graph = compile_spec(spec)
    tensors, source_format = read_tensors(path, graph)
    name = shown(path.name)
    tensors = fit_form(tensors, graph, f"weights {name}")  # names checked before reading
    return fit_to_graph(tensors, graph, source_format, allow_partial, source_name=name)
