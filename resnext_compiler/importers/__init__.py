"""Pretrained weights from elsewhere -> a safetensors file keyed by IR names.

Sources: torchvision and timm state dicts (`.pth`, `.pt`, `.bin`, `.safetensors`; their
ResNet/ResNeXt names are already ours), and the seed's Torch7 models (`.t7`, the fb.resnet
layout of facebookresearch/ResNeXt), and Caffe models (`.caffemodel`) named as `--backend caffe`
writes them. `import_weights` reads, renames, converts block forms
(`passes.forms`) and checks every name and shape against the spec's graph.
"""

from __future__ import annotations

from pathlib import Path

from resnext_compiler.importers.fit import ImportResult, fit_to_graph, save_safetensors
from resnext_compiler.named_files import WEIGHTS, named_file
from resnext_compiler.spec import Spec

__all__ = ["ImportResult", "import_weights", "save_safetensors"]

TORCH7_SUFFIXES = (".t7", ".th7")
CAFFE_SUFFIXES = (".caffemodel",)


def import_weights(source: str | Path, spec: Spec, allow_partial: bool = False) -> ImportResult:
    """Read `source` and fit it to `spec` (in the spec's block form). Raises UserError."""
    from resnext_compiler.pipeline import compile_spec
    from resnext_compiler.weights import fit_form

    path = named_file(source, WEIGHTS, None)  # a FIFO or device is refused, not read
    graph = compile_spec(spec)
    if path.suffix.lower() in TORCH7_SUFFIXES:
        from resnext_compiler.importers.torch7 import read_torch7_model

        tensors, detail = read_torch7_model(path, spec)
        source_format = f"Torch7 ({detail})"
    elif path.suffix.lower() in CAFFE_SUFFIXES:
        from resnext_compiler.importers.caffe import read_caffemodel

        tensors, source_format = read_caffemodel(path, graph)
    else:
        from resnext_compiler.importers.state_dict import read_state_dict

        tensors, source_format = read_state_dict(path)
    tensors = fit_form(tensors, graph, f"weights {path.name}")  # names checked before reading
    return fit_to_graph(tensors, graph, source_format, allow_partial, source_name=path.name)
