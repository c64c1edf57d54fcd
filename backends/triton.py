"""The Triton backend: a model repository that Triton Inference Server loads unchanged.

The layout (`resnext_compiler.artifact_format`, which `serve` reads with):

    REPO/<name>/config.pbtxt      platform onnxruntime_onnx, max_batch_size, dynamic batching
    REPO/<name>/1/model.onnx      the ONNX backend's model with a dynamic batch dimension
    REPO/<name>/labels.txt        class names, one per line (the output's label_filename)

With a dynamic batch (the default) the config lists input/output dims without the batch
dimension and `max_batch_size` is `--max-batch`, as Triton's model configuration requires for
batching models. With `--batch N` the model is fixed-size: `max_batch_size: 0` and full dims.
"""

from __future__ import annotations

from pathlib import Path

from resnext_compiler.artifact_format import (
    CONFIG_FILE,
    KEY_CLASS_NAMES,
    KEY_SPEC_HASH,
    KEY_SPEC_NAME,
    LABELS_FILE,
    contract_metadata,
    model_file,
    sample_dims,
)
from resnext_compiler.artifacts import write_text_atomic
from resnext_compiler.backends.base import DTYPES, CompileOptions
from resnext_compiler.backends.onnx import artifact_contract, export_onnx
from resnext_compiler.backends.onnx_graph import OUTPUT
from resnext_compiler.errors import UserError
from resnext_compiler.input_contract import (
    FLOAT_NCHW,
    UINT8_NHWC,
    InputContract,
    labels_text,
    resolve_contract,
)
from resnext_compiler.ir import INPUT, Graph
from resnext_compiler.naming import file_stem
from resnext_compiler.spec import Spec

# The tensors clients send and receive; an int8 model takes and returns float32.
TRITON_TYPES = {"fp32": "TYPE_FP32", "fp16": "TYPE_FP16", "int8": "TYPE_FP32"}
MAX_QUEUE_DELAY_US = 100


def preferred_batch_sizes(max_batch: int) -> list[int]:
    """Powers of two up to `max_batch` (and `max_batch` itself), largest few only."""
    sizes = sorted({2**i for i in range(max_batch.bit_length()) if 2**i <= max_batch} | {max_batch})
    return [s for s in sizes if s > 1][-3:]


def config_pbtxt(name: str, graph: Graph, options: CompileOptions,
                 contract: InputContract | None = None) -> str:
    """Triton's ModelConfig in protobuf text format.

    With class names in `contract`, the output names `LABELS_FILE` (Triton's classification
    extension); the contract's preprocessing values are `parameters`.
    """
    data_type = TRITON_TYPES[options.dtype]
    if options.image_input:
        input_type, triton_format, layout = "TYPE_UINT8", "FORMAT_NHWC", UINT8_NHWC
    else:
        input_type, triton_format, layout = data_type, "FORMAT_NCHW", FLOAT_NCHW
    sample = sample_dims(*graph.shape_of(INPUT).as_list(), layout)
    classes = graph.output_shape.channels
    if options.batch is None:
        max_batch, input_dims, output_dims = options.max_batch, sample, [classes]
    else:
        max_batch = 0
        input_dims, output_dims = [options.batch, *sample], [options.batch, classes]
    labelled = contract is not None and contract.labels is not None
    lines = [
        f"name: {quote(name)}",
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch}",
        "input [",
        "  {",
        f'    name: "{INPUT}"',
        f"    data_type: {input_type}",
        f"    format: {triton_format}",
        f"    dims: {_list(input_dims)}",
        "  }",
        "]",
        "output [",
        "  {",
        f'    name: "{OUTPUT}"',
        f"    data_type: {data_type}",
        f"    dims: {_list(output_dims)}",
        *([f"    label_filename: {quote(LABELS_FILE)}"] if labelled else []),
        "  }",
        "]",
    ]
    if max_batch > 0:
        preferred = preferred_batch_sizes(max_batch)
        lines += ["dynamic_batching {"]
        if preferred:
            lines += [f"  preferred_batch_size: {_list(preferred)}"]
        lines += [f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}", "}"]
    # KIND_AUTO: one instance on each GPU if there is one, else on the CPU. int8 models run on
    # the CPU: their speed comes from onnxruntime's CPU integer kernels (QLinearConv).
    kind = "KIND_CPU" if options.dtype == "int8" else "KIND_AUTO"
    lines += ["instance_group [", "  {", "    count: 1", f"    kind: {kind}", "  }", "]"]
    parameters = {KEY_SPEC_NAME: graph.metadata.get("spec_name", graph.name),
                  KEY_SPEC_HASH: graph.metadata.get("spec_hash", "")}
    if contract is not None:  # the class names live in the labels file
        parameters.update((k, v) for k, v in contract_metadata(contract).items()
                          if k != KEY_CLASS_NAMES)
    items = list(parameters.items())
    lines += ["parameters ["]
    for position, (key, value) in enumerate(items):
        lines += _parameter(key, value, last=position == len(items) - 1)
    lines += ["]"]
    return "\n".join(lines) + "\n"


def _list(values: list[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def _parameter(key: str, value: str, last: bool) -> list[str]:
    return ["  {", f"    key: {quote(key)}",
            f"    value: {{ string_value: {quote(value)} }}", "  }" + ("" if last else ",")]


def quote(text: str) -> str:
    """A protobuf text-format string literal (non-ASCII as escaped UTF-8 bytes)."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


class TritonBackend:
    """`--backend triton -o REPO`: REPO/<name>/config.pbtxt and REPO/<name>/1/model.onnx."""

    name = "triton"
    description = "Triton Inference Server model repository (onnxruntime_onnx platform)"
    dtypes = DTYPES
    reads_max_batch = True

    def default_output(self, spec: Spec) -> Path:
        return Path("model_repository")

    def emit(self, graph: Graph, spec: Spec, options: CompileOptions, output: Path) -> list[Path]:
        if output.exists() and not output.is_dir():
            raise UserError(f"--output for the triton backend is a repository directory; "
                            f"{output} is a file")
        if options.max_batch < 1:
            raise UserError(f"--max-batch must be at least 1, got {options.max_batch}")
        name = file_stem(spec.name)
        model_dir = output / name
        contract = artifact_contract(graph, options, resolve_contract(spec))
        # The model and labels first, so a config never points at a missing file.
        model = export_onnx(graph, options, model_file(model_dir), spec.description,
                            contract=contract)
        written = [model]
        if contract is not None and contract.labels is not None:
            written.append(write_text_atomic(model_dir / LABELS_FILE,
                                             labels_text(contract.labels)))
        config = write_text_atomic(model_dir / CONFIG_FILE,
                                   config_pbtxt(name, graph, options, contract))
        return [config, *written]
