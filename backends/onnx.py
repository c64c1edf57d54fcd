"""The ONNX backend: IR -> model.onnx, straight from the graph, without torch.

`resnext-compile SPEC --backend onnx -o OUT.onnx [--weights W] [--opset N] [--batch N|dynamic]
[--dtype fp16] [--no-fold-bn] [--seed N]`. Weights come from a safetensors file or checkpoint
(`resnext_compiler.weights`) or a seeded initialisation; BatchNorm is folded into the convs
(`passes.fold_bn`) unless asked not to; the file is streamed to disk (`onnx_writer`), so
ResNeXt-101 64x4d compiles in about a second with little memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from onnx import ModelProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, helper

from resnext_compiler import __version__
from resnext_compiler.backend import CompileOptions
from resnext_compiler.backends.onnx_graph import build_graph, weight_specs
from resnext_compiler.backends.onnx_writer import Initializer, write_model
from resnext_compiler.errors import UserError
from resnext_compiler.ir import Graph
from resnext_compiler.naming import file_stem, one_line
from resnext_compiler.passes.fold_bn import fold_batchnorm
from resnext_compiler.spec import Spec
from resnext_compiler.weights import check_weights, model_weights

# Opset 18 runs on every onnxruntime this project supports (>= 1.18) and on Triton's
# onnxruntime backend; the operators used here have not changed since opset 15.
DEFAULT_OPSET = 18
MIN_OPSET = 13  # Slice/Pad with tensor arguments, Sum/Add broadcasting as used here
FLOAT_TYPES = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16}


def max_opset() -> int:
    """The newest opset the installed onnx package knows."""
    from onnx import defs

    return defs.onnx_opset_version()


def export_onnx(graph: Graph, options: CompileOptions, output: str | Path,
                description: str = "", weights: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write `graph` as an ONNX model to `output` (atomically) and return the path.

    Weights come from `weights` (numpy arrays keyed by parameter name, e.g. a training run's
    state dict) when given, else from `options.weights` (a file) or `options.seed`.
    """
    opset = options.opset if options.opset is not None else DEFAULT_OPSET
    if not MIN_OPSET <= opset <= max_opset():
        raise UserError(f"--opset must be between {MIN_OPSET} and {max_opset()}, got {opset}")
    if options.dtype not in FLOAT_TYPES:
        raise UserError(f"--dtype must be fp32 or fp16, got {options.dtype!r}")
    if options.batch is not None and options.batch < 1:
        raise UserError(f"--batch must be a positive integer, got {options.batch}")
    float_type = FLOAT_TYPES[options.dtype]
    if weights is not None:
        check_weights(graph, weights)
        source = "in-memory state dict"
    elif options.weights is not None:
        weights, source = model_weights(graph, options.weights), options.weights.name
    else:
        weights = model_weights(graph, None, options.seed)
        source = f"initialised, seed {options.seed}"
    if options.fold_bn:
        graph, weights = fold_batchnorm(graph, weights)
    model = _model_proto(graph, opset, float_type, options, description, source)
    initializers = [Initializer(s.name, s.shape, s.elem_type)
                    for s in weight_specs(graph, float_type)]
    return write_model(output, model, initializers, weights.__getitem__)


def _model_proto(graph: Graph, opset: int, float_type: int, options: CompileOptions,
                 description: str, weights_source: str) -> ModelProto:
    model = ModelProto(
        ir_version=helper.find_min_ir_version_for([OperatorSetIdProto(domain="", version=opset)]),
        producer_name="resnext-compile",
        producer_version=__version__,
        model_version=1,
        doc_string=one_line(description, 1000),
        opset_import=[helper.make_opsetid("", opset)],
    )
    model.graph.CopyFrom(build_graph(graph, float_type, options.batch))
    metadata = {
        "spec_name": graph.metadata.get("spec_name", graph.name),
        "spec_hash": graph.metadata.get("spec_hash", ""),
        "compiler_version": graph.metadata.get("compiler_version", __version__),
        "weights": weights_source,
        "dtype": options.dtype,
        "fold_bn": str(options.fold_bn).lower(),
    }
    model.metadata_props.extend(StringStringEntryProto(key=k, value=v) for k, v in metadata.items())
    return model


class OnnxBackend:
    """`--backend onnx`: one self-contained .onnx file."""

    name = "onnx"
    description = "ONNX model (input 'input' [N,C,H,W], output 'logits'), no torch needed"

    def default_output(self, spec: Spec) -> Path:
        return Path(f"{file_stem(spec.name)}.onnx")

    def emit(self, graph: Graph, spec: Spec, options: CompileOptions, output: Path) -> list[Path]:
        if output.is_dir():
            output = output / self.default_output(spec)
        return [export_onnx(graph, options, output, spec.description)]
