"""The ONNX backend: IR -> model.onnx, straight from the graph, without torch.

`resnext-compile SPEC --backend onnx -o OUT.onnx [--weights W] [--opset N] [--batch N|dynamic]
[--dtype fp16 | --dtype int8 --calibrate DIR] [--no-fold-bn] [--seed N] [--image-input]`.
The model's input contract (preprocessing and class names) is written into `metadata_props`
(`resnext_compiler.artifact_format`, docs/onnx.md).
Weights come from a safetensors file or checkpoint
(`resnext_compiler.weights`) or a seeded initialisation; BatchNorm is folded into the convs
(`passes.fold_bn`) unless asked not to; the file is streamed to disk (`onnx_writer`), so
ResNeXt-101 64x4d compiles in about a second with little memory. int8 is this float32 model
quantized after calibration on real images (`onnx_quantize`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
from onnx import ModelProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, helper

from resnext_compiler import __version__
from resnext_compiler.artifact_format import (
    KEY_DTYPE,
    KEY_SPEC_HASH,
    KEY_SPEC_NAME,
    contract_metadata,
)
from resnext_compiler.backends.base import (
    DEFAULT_OPSET,
    DTYPES,
    MIN_OPSET,
    CompileOptions,
    SingleFileBackend,
)
from resnext_compiler.backends.onnx_graph import build_graph, weight_specs
from resnext_compiler.backends.onnx_writer import Initializer, write_model
from resnext_compiler.errors import UserError
from resnext_compiler.input_contract import (
    FLOAT_NCHW,
    UINT8_NHWC,
    InputContract,
    default_contract,
    resolve_contract,
)
from resnext_compiler.ir import INPUT, Graph
from resnext_compiler.naming import one_line
from resnext_compiler.onnxruntime_install import import_onnxruntime
from resnext_compiler.passes.complexity import analyse
from resnext_compiler.passes.fold_bn import FOLD_BN
from resnext_compiler.passes.manager import LOWERED_FACTS, PassState, run_passes
from resnext_compiler.spec import Spec
from resnext_compiler.weights import check_weights, model_weights

FLOAT_TYPES = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16}


def max_opset() -> int:
    """The newest opset the installed onnx package knows."""
    from onnx import defs

    return defs.onnx_opset_version()


def export_onnx(graph: Graph, options: CompileOptions, output: str | Path,
                description: str = "", weights: Mapping[str, np.ndarray] | None = None,
                contract: InputContract | None = None) -> Path:
    """Write `graph` as an ONNX model to `output` (atomically) and return the path.

    Weights come from `weights` (numpy arrays keyed by parameter name, e.g. a training run's
    state dict) when given, else from `options.weights` (a file) or `options.seed`.
    `contract` (the model's input contract) goes into metadata_props; with
    `options.image_input` the graph takes uint8 NHWC images and applies it inside.
    """
    opset = options.opset if options.opset is not None else DEFAULT_OPSET
    if not MIN_OPSET <= opset <= max_opset():
        raise UserError(f"--opset must be between {MIN_OPSET} and {max_opset()}, got {opset}")
    if options.dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {options.dtype!r}")
    if options.batch is not None and options.batch < 1:
        raise UserError(f"--batch must be a positive integer, got {options.batch}")
    if options.dtype == "int8":
        # onnxruntime is an extra (cpu or gpu), not a dependency: check it before the import
        import_onnxruntime("--dtype int8 (calibration)")
        from resnext_compiler.backends.onnx_quantize import export_int8

        return export_int8(graph, options, output, description, weights, contract)
    float_type = FLOAT_TYPES[options.dtype]
    contract = artifact_contract(graph, options, contract)
    if weights is not None:
        check_weights(graph, weights)
        source = "in-memory state dict"
    elif options.weights is not None:
        weights, source = model_weights(graph, options.weights), options.weights.name
    else:
        weights = model_weights(graph, None, options.seed)
        source = f"initialised, seed {options.seed}"
    if options.fold_bn:  # the graph arrives as compiled: shaped, its branches as lowered
        state = run_passes(PassState(graph, weights, LOWERED_FACTS | {"shaped", "weights"}),
                           [FOLD_BN])
        graph, weights = state.graph, state.weights
    model = _model_proto(graph, opset, float_type, options, description, source, contract)
    initializers = [Initializer(s.name, s.shape, s.elem_type)
                    for s in weight_specs(graph, float_type)]
    return write_model(output, model, initializers, weights.__getitem__)


def artifact_contract(graph: Graph, options: CompileOptions,
                      contract: InputContract | None) -> InputContract | None:
    """The contract an artifact records: `contract` (or the default for the graph's input when
    the graph must normalise images itself), with the input format the options choose."""
    if contract is None and not options.image_input:
        return None
    if contract is None:
        contract = default_contract(*graph.shape_of(INPUT).as_list())
    return replace(contract, input_format=UINT8_NHWC if options.image_input else FLOAT_NCHW)


def _model_proto(graph: Graph, opset: int, float_type: int, options: CompileOptions,
                 description: str, weights_source: str,
                 contract: InputContract | None) -> ModelProto:
    model = ModelProto(
        ir_version=helper.find_min_ir_version_for([OperatorSetIdProto(domain="", version=opset)]),
        producer_name="resnext-compile",
        producer_version=__version__,
        model_version=1,
        doc_string=one_line(description, 1000),
        opset_import=[helper.make_opsetid("", opset)],
    )
    image_input = contract if options.image_input else None
    model.graph.CopyFrom(build_graph(graph, float_type, options.batch, image_input))
    metadata = {
        KEY_SPEC_NAME: graph.metadata.get("spec_name", graph.name),
        KEY_SPEC_HASH: graph.metadata.get("spec_hash", ""),
        "compiler_version": graph.metadata.get("compiler_version", __version__),
        "weights": weights_source,
        KEY_DTYPE: options.dtype,
        "fold_bn": str(options.fold_bn).lower(),
        **(contract_metadata(contract) if contract is not None else {}),
        # float32 outputs of every node for one sample: `serve` budgets memory with it
        "activation_bytes": str(analyse(graph).activation_bytes),
    }
    model.metadata_props.extend(StringStringEntryProto(key=k, value=v) for k, v in metadata.items())
    return model


class OnnxBackend(SingleFileBackend):
    """`--backend onnx`: one self-contained .onnx file."""

    name = "onnx"
    description = "ONNX model (input 'input' [N,C,H,W], output 'logits'), no torch needed"
    dtypes = DTYPES
    suffix = ".onnx"

    def emit(self, graph: Graph, spec: Spec, options: CompileOptions, output: Path) -> list[Path]:
        output = self.output_file(spec, output)
        return [export_onnx(graph, options, output, spec.description,
                            contract=resolve_contract(spec))]
