"""IR graph -> ONNX GraphProto (nodes, inputs, outputs, shapes), without the big weights.

Every IR node becomes ONNX node(s) of the same name whose output value has the same name,
so `layer3.5.conv2` in Netron is the IR's and torchvision's `layer3.5.conv2`. The graph input
is `input` [N, C, H, W]; the last value is renamed `logits` [N, num_classes]. Parameters are
referenced by their state-dict names (`layer1.0.conv1.weight`); `weight_specs` lists them so
the streaming writer can append them as initializers. Small int64 constants (Slice and Pad
arguments) live inside the returned GraphProto.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import GraphProto, NodeProto, TensorProto, ValueInfoProto, helper, numpy_helper

from resnext_compiler import ops
from resnext_compiler.artifact_format import sample_dims
from resnext_compiler.input_contract import UINT8_NHWC, InputContract
from resnext_compiler.ir import INPUT, Graph, Node

OUTPUT = "logits"
BATCH_SYMBOL = "N"
_INT64_MAX = np.iinfo(np.int64).max
_SKIPPED_BUFFERS = (ops.BN_STEP_COUNTER,)  # training-only: never read at inference


@dataclass(frozen=True)
class WeightSpec:
    """One initializer the writer appends: its name, dims and ONNX element type."""

    name: str
    shape: tuple[int, ...]
    elem_type: int


def weight_specs(graph: Graph, float_type: int) -> list[WeightSpec]:
    """Float parameters and buffers that ONNX nodes read, in graph order."""
    return [WeightSpec(p.name, p.shape, float_type) for p in graph.params()
            if not p.name.endswith(_SKIPPED_BUFFERS)]


def _emit_image_input(emitter: _Emitter, contract: InputContract) -> None:
    """uint8 NHWC -> float NCHW: Cast, Transpose, Mul by the multiplier, Add the offset."""
    multiplier, offset = contract.affine()  # the external transform's own two vectors
    shape = [1, contract.channels, 1, 1]
    emitter.constants += [numpy_helper.from_array(multiplier.reshape(shape), "input.multiplier"),
                          numpy_helper.from_array(offset.reshape(shape), "input.offset")]
    emitter.nodes += [
        helper.make_node("Cast", [INPUT], ["input.float"], name="input.cast",
                         to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["input.float"], ["input.nchw"], name="input.transpose",
                         perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["input.nchw", "input.multiplier"], ["input.scaled"],
                         name="input.scale"),
        helper.make_node("Add", ["input.scaled", "input.offset"], ["input.normalised"],
                         name="input.normalise"),
    ]
    normalised = "input.normalised"
    if emitter.float_type != TensorProto.FLOAT:
        emitter.nodes.append(helper.make_node("Cast", [normalised], ["input.model"],
                                              name="input.cast_model", to=emitter.float_type))
        normalised = "input.model"
    emitter.alias[INPUT] = normalised
    emitter.rank[normalised] = 4


class _Emitter:
    def __init__(self, graph: Graph, float_type: int, batch: int | None):
        self.graph = graph
        self.float_type = float_type
        self.batch: int | str = batch if batch is not None else BATCH_SYMBOL
        self.nodes: list[NodeProto] = []
        self.constants: list[TensorProto] = []
        self.alias: dict[str, str] = {}  # IR values that ONNX does not materialise (dropout)
        self.rank: dict[str, int] = {INPUT: 4}
        self.value_info: list[ValueInfoProto] = []

    def value(self, name: str) -> str:
        name = self.alias.get(name, name)
        return OUTPUT if name == self.graph.output else name

    def constant(self, name: str, values: list[int]) -> str:
        self.constants.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    def add(self, op_type: str, name: str, inputs: list[str], output: str, **attrs: object) -> None:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))

    def emit(self, node: Node) -> None:
        op, name = node.op, node.name
        xs = [self.value(i) for i in node.inputs]
        out = self.value(name)
        rank = self.rank[self.alias.get(node.inputs[0], node.inputs[0])]
        if isinstance(op, ops.Dropout):  # identity at inference
            self.alias[name] = self.alias.get(node.inputs[0], node.inputs[0])
            if name == self.graph.output:
                self.add("Identity", name, xs, OUTPUT)
            return
        if isinstance(op, ops.Conv):
            params = [f"{name}.weight"] + ([f"{name}.bias"] if op.bias else [])
            k, p = op.kernel_size, op.padding
            self.add("Conv", name, xs + params, out, kernel_shape=[k, k], strides=[op.stride] * 2,
                     pads=[p] * 4, group=op.groups, dilations=[op.dilation] * 2)
        elif isinstance(op, ops.BatchNorm):
            params = [f"{name}.{s}" for s in ("weight", "bias", "running_mean", "running_var")]
            self.add("BatchNormalization", name, xs + params, out, epsilon=op.eps)
        elif isinstance(op, (ops.ReLU, ops.Sigmoid)):
            self.add("Relu" if isinstance(op, ops.ReLU) else "Sigmoid", name, xs, out)
        elif isinstance(op, ops.MaxPool):
            self.add("MaxPool", name, xs, out, kernel_shape=[op.kernel_size] * 2,
                     strides=[op.stride] * 2, pads=[op.padding] * 4)
        elif isinstance(op, ops.AvgPool):
            self.add("AveragePool", name, xs, out, kernel_shape=[op.kernel_size] * 2,
                     strides=[op.stride] * 2, pads=[op.padding] * 4, ceil_mode=int(op.ceil_mode),
                     count_include_pad=int(op.count_include_pad))
        elif isinstance(op, ops.GlobalAvgPool):
            self.add("GlobalAveragePool", name, xs, out)
        elif isinstance(op, ops.Flatten):
            self.add("Flatten", name, xs, out, axis=1)
            rank = 2
        elif isinstance(op, ops.Linear):
            if rank != 2:
                self.add("Flatten", f"{name}.flatten", xs, f"{name}.flatten", axis=1)
                xs = [f"{name}.flatten"]
            params = [f"{name}.weight"] + ([f"{name}.bias"] if op.bias else [])
            self.add("Gemm", name, xs + params, out, transB=1)
            rank = 2
        elif isinstance(op, ops.Add):
            self.add("Add" if len(xs) == 2 else "Sum", name, xs, out)
        elif isinstance(op, ops.Mul):
            self.add("Mul", name, xs, out)
        elif isinstance(op, ops.Concat):
            self.add("Concat", name, xs, out, axis=1)
        elif isinstance(op, ops.PathSoftmax):  # [N, M*C, H, W] -> [N, M, C, H, W], softmax, back
            shape = self.graph.shape_of(name)
            split = self.constant(f"{name}.split_shape",
                                  [0, op.paths, shape.channels // op.paths, shape.height,
                                   shape.width])
            joined = self.constant(f"{name}.joined_shape", [0, *shape.as_list()])
            self.add("Reshape", f"{name}.split", [*xs, split], f"{name}.split")
            self.add("Softmax", f"{name}.softmax", [f"{name}.split"], f"{name}.softmax", axis=1)
            self.add("Reshape", name, [f"{name}.softmax", joined], out)
        elif isinstance(op, ops.Slice):
            args = [self.constant(f"{name}.{key}", value) for key, value in
                    (("starts", [op.start]), ("ends", [op.stop]), ("axes", [1]))]
            self.add("Slice", name, xs + args, out)
        elif isinstance(op, ops.Subsample):  # x[:, :, ::s, ::s]
            args = [self.constant(f"{name}.{key}", value) for key, value in
                    (("starts", [0, 0]), ("ends", [_INT64_MAX] * 2), ("axes", [2, 3]),
                     ("steps", [op.stride] * 2))]
            self.add("Slice", name, xs + args, out)
        elif isinstance(op, ops.PadChannels):  # zero channels after the input's
            pads = self.constant(f"{name}.pads", [0, 0, 0, 0, 0, op.extra, 0, 0])
            self.add("Pad", name, [*xs, pads], out, mode="constant")
        else:
            raise NotImplementedError(f"the ONNX backend has no lowering for op {op.kind!r}")
        self.rank[name] = rank
        if out != OUTPUT:
            self.value_info.append(self.tensor_info(out, name, rank))

    def tensor_info(self, value: str, ir_value: str, rank: int) -> ValueInfoProto:
        shape = self.graph.shape_of(ir_value)
        dims = [self.batch, *shape.as_list()] if rank == 4 else [self.batch, shape.channels]
        return helper.make_tensor_value_info(value, self.float_type, dims)


def build_graph(graph: Graph, float_type: int = TensorProto.FLOAT,
                batch: int | None = None,
                image_input: InputContract | None = None) -> GraphProto:
    """The GraphProto of `graph`; its float weights are left for the writer to append.

    `image_input`: the graph takes uint8 images [N, H, W, C] (NHWC, as decoders produce them)
    and normalises them inside, with the contract's per-channel affine.
    """
    emitter = _Emitter(graph, float_type, batch)
    if image_input is not None:
        _emit_image_input(emitter, image_input)
    for node in graph.nodes:
        emitter.emit(node)
    if image_input is None:
        inputs = [emitter.tensor_info(INPUT, INPUT, 4)]
    else:
        sample = sample_dims(*graph.shape_of(INPUT).as_list(), UINT8_NHWC)
        inputs = [helper.make_tensor_value_info(INPUT, TensorProto.UINT8,
                                                [emitter.batch, *sample])]
    output_rank = emitter.rank[emitter.alias.get(graph.output, graph.output)]
    outputs = [emitter.tensor_info(OUTPUT, graph.output, output_rank)]
    return helper.make_graph(emitter.nodes, graph.name, inputs, outputs,
                             initializer=emitter.constants, value_info=emitter.value_info)
