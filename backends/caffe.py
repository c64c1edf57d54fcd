"""The Caffe backend: IR -> deploy `.prototxt` + `.caffemodel`, without Caffe and without torch.

`resnext-compile SPEC --backend caffe -o DIR [--weights W] [--batch N] [--seed N]` writes
`DIR/<name>.prototxt` (the deploy net) and `DIR/<name>.caffemodel` (the same layers with their
blobs), readable by Caffe (BVLC 1.0 and later) and by OpenCV's dnn module. Mapping, one IR op
at a time (docs/caffe.md):

- conv -> Convolution (`group` for grouped convs), blobs [weight (out, in/group, k, k)];
- batchnorm -> BatchNorm (`use_global_stats`, eps; blobs [mean, var, scale factor 1]) followed by
  a Scale layer `<name>/scale` with a bias (blobs [gamma, beta]);
- relu -> ReLU, in place where nothing else reads its input; sigmoid -> Sigmoid;
- add -> Eltwise SUM; concat -> Concat; slice -> Slice (unused pieces go to a Silence layer);
- maxpool / avgpool / subsample -> Pooling. Caffe rounds pooled sizes up where PyTorch rounds
  down; when that gives a larger map, Slice layers `<name>/crop_h`, `<name>/crop_w` cut the
  extra last row/column (the leading windows are the same in both). BVLC's later
  `round_mode` field is not used: Caffe 1.0 lacks it and OpenCV does not read it (its schema
  has `ceil_mode` as field 13 instead);
- global_avgpool -> Pooling AVE global_pooling; linear -> InnerProduct;
- mul (squeeze-excitation) -> Flatten of the gate, then Scale with two bottoms, axis 0
  (Eltwise PROD when both values have the same shape);
- pad_channels (shortcut A) -> Power (scale 0: zeros) and Concat;
- flatten and dropout emit nothing (InnerProduct flattens; dropout is identity at inference).

Blocks are emitted in the spec's own form (A: Eltwise over the paths, B: Concat, C: `group`).
Layer names are the IR's node names (torchvision's module paths), so `import-weights` reads a
caffemodel back into the same tensors. The caffemodel is streamed one blob at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnext_compiler import ops
from resnext_compiler.artifacts import atomic_writer, write_text_atomic
from resnext_compiler.backends.base import CompileOptions
from resnext_compiler.caffe_proto import NET_LAYER, NET_NAME, blob_frame_prefix, message_classes
from resnext_compiler.errors import Diagnostic, SpecError, UserError
from resnext_compiler.ir import INPUT, Graph, Node
from resnext_compiler.naming import file_stem
from resnext_compiler.protobuf_wire import PROTOBUF_LIMIT, frame
from resnext_compiler.spec import Spec, field_diagnostic
from resnext_compiler.weights import model_weights

OUTPUT = "logits"
SCALE_SUFFIX = "/scale"  # the Scale layer that carries a BatchNorm's gamma and beta


@dataclass(frozen=True)
class Blob:
    """One weight blob of a layer: its shape and either the IR parameter it holds or a constant
    (BatchNorm's scale factor)."""

    shape: tuple[int, ...]
    param: str = ""
    constant: float = 0.0

    def values(self, fetch: Callable[[str], np.ndarray]) -> np.ndarray:
        if self.param:
            return fetch(self.param)
        return np.full(self.shape, self.constant, np.float32)

    @property
    def nbytes(self) -> int:
        return 4 * math.prod(self.shape)


@dataclass
class Layer:
    """A Caffe layer: `params` maps a LayerParameter field (`convolution_param`) to its fields."""

    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    blobs: list[Blob] = field(default_factory=list)


def caffe_pooled_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Caffe's pooled size: rounded up, then the last window must start inside the image."""
    pooled = -(-(size + 2 * padding - kernel) // stride) + 1
    if padding and (pooled - 1) * stride >= size + padding:
        pooled -= 1
    return pooled


class _NetBuilder:
    def __init__(self, graph: Graph, spec: Spec, batch: int):
        self.graph, self.spec = graph, spec
        self.layers: list[Layer] = []
        self.problems: list[Diagnostic] = []
        self.blob: dict[str, str] = {INPUT: INPUT}  # IR value -> Caffe blob name
        self.aliases: set[str] = set()  # IR values with no layer of their own (dropout)
        self.readers: dict[str, int] = {}
        self.shapes = {p.name: p.shape for p in graph.params()}
        for node in graph.nodes:
            for value in node.inputs:
                self.readers[value] = self.readers.get(value, 0) + 1
        shape = graph.input_shape
        self.layers.append(Layer("input", "Input", [], [INPUT], {"input_param": {
            "shape": [{"dim": [batch, shape.channels, shape.height, shape.width]}]}}))

    # -- helpers --------------------------------------------------------------------------
    def param(self, name: str) -> Blob:
        return Blob(self.shapes[name], param=name)

    def top(self, node: Node) -> str:
        return OUTPUT if node.name == self.graph.output else node.name

    def in_place(self, node: Node) -> str:
        """Top for an element-wise layer: its bottom when nothing else reads that blob."""
        value = node.inputs[0]
        if (value != INPUT and value not in self.aliases and self.readers.get(value) == 1
                and node.name != self.graph.output):
            return self.blob[value]
        return self.top(node)

    def refuse(self, node: Node, message: str) -> None:
        self.blob[node.name] = node.name  # keep going: every problem is reported at once
        self.problems.append(field_diagnostic(self.spec, node.origin, message) if node.origin
                             else Diagnostic(f"{node.name}: {message}"))

    def add(self, layer: Layer) -> Layer:
        self.layers.append(layer)
        return layer

    def discard(self, blob: str) -> None:
        """A Slice piece nothing reads: a Silence layer keeps it from being a net output."""
        self.add(Layer(f"{blob}/silence", "Silence", [blob], []))

    def crop(self, name: str, bottom: str, top: str, got: tuple[int, int],
             want: tuple[int, int]) -> None:
        """Slice away the extra trailing rows/columns of a Caffe pooling output."""
        for axis, label, have, keep in ((2, "h", got[0], want[0]), (3, "w", got[1], want[1])):
            if have == keep:
                continue
            last = label == "w" or got[1] == want[1]
            out = top if last else f"{name}/crop_h"
            rest = f"{name}/crop_{label}_extra"
            self.add(Layer(f"{name}/crop_{label}", "Slice", [bottom], [out, rest],
                           {"slice_param": {"axis": axis, "slice_point": [keep]}}))
            self.discard(rest)
            bottom = out

    def pooling(self, node: Node, pool: str, kernel: int, stride: int, padding: int) -> None:
        x = self.graph.shape_of(node.inputs[0])
        want = self.graph.shape_of(node.name)
        got = (caffe_pooled_size(x.height, kernel, stride, padding),
               caffe_pooled_size(x.width, kernel, stride, padding))
        top = self.top(node)
        if got[0] < want.height or got[1] < want.width:
            self.refuse(node, f"Caffe pools {x.height}x{x.width} to {got[0]}x{got[1]}, fewer "
                              f"than the {want.height}x{want.width} PyTorch computes")
            return
        cropped = got != (want.height, want.width)
        pooled = f"{node.name}/pool" if cropped else top
        self.add(Layer(node.name, "Pooling", [self.blob[node.inputs[0]]], [pooled],
                       {"pooling_param": {"pool": pool, "kernel_size": kernel, "stride": stride,
                                          "pad": padding}}))
        if cropped:
            self.crop(node.name, pooled, top, got, (want.height, want.width))
        self.blob[node.name] = top

    # -- one IR node ----------------------------------------------------------------------
    def emit(self, node: Node) -> None:
        op, name = node.op, node.name
        bottoms = [self.blob[v] for v in node.inputs]
        if isinstance(op, (ops.Dropout, ops.Flatten)):
            self.blob[name] = bottoms[0]
            self.aliases.add(name)
            if name == self.graph.output:
                self.refuse(node, f"a network ending in {op.kind} has no Caffe output layer")
            return
        top = self.top(node)
        if isinstance(op, ops.Conv) and op.dilation != 1:
            self.refuse(node, f"the Caffe backend writes no dilated convolution (dilation "
                        f"{op.dilation}); compile this network to ONNX instead")
            return
        if isinstance(op, ops.Conv):
            blobs = [self.param(f"{name}.weight")] + ([self.param(f"{name}.bias")]
                                                       if op.bias else [])
            self.add(Layer(name, "Convolution", bottoms, [top], {"convolution_param": {
                "num_output": op.out_channels, "bias_term": op.bias, "pad": [op.padding],
                "kernel_size": [op.kernel_size], "group": op.groups, "stride": [op.stride]}},
                blobs))
        elif isinstance(op, ops.BatchNorm):
            top = self.in_place(node)
            mean, var = self.param(f"{name}.running_mean"), self.param(f"{name}.running_var")
            factor = Blob((1,), constant=1.0)  # Caffe divides mean and var by this
            self.add(Layer(name, "BatchNorm", bottoms, [top], {"batch_norm_param": {
                "use_global_stats": True, "eps": op.eps}}, [mean, var, factor]))
            self.add(Layer(name + SCALE_SUFFIX, "Scale", [top], [top],
                           {"scale_param": {"bias_term": True}},
                           [self.param(f"{name}.weight"), self.param(f"{name}.bias")]))
        elif isinstance(op, ops.ReLU):
            top = self.in_place(node)
            self.add(Layer(name, "ReLU", bottoms, [top]))
        elif isinstance(op, ops.Sigmoid):
            self.add(Layer(name, "Sigmoid", bottoms, [top]))
        elif isinstance(op, ops.MaxPool):
            self.pooling(node, "MAX", op.kernel_size, op.stride, op.padding)
            return
        elif isinstance(op, ops.AvgPool):
            # Caffe's average divides by the window clipped to the padded image: PyTorch's
            # count_include_pad=True, and the same as False when there is no padding.
            if op.padding and not op.count_include_pad:
                self.refuse(node, "Caffe's average pooling counts padded pixels; "
                                  "count_include_pad=False with padding cannot be expressed")
                return
            self.pooling(node, "AVE", op.kernel_size, op.stride, op.padding)
            return
        elif isinstance(op, ops.Subsample):  # x[:, :, ::s, ::s] is a 1x1 max-pool of stride s
            self.pooling(node, "MAX", 1, op.stride, 0)
            return
        elif isinstance(op, ops.GlobalAvgPool):
            self.add(Layer(name, "Pooling", bottoms, [top], {"pooling_param": {
                "pool": "AVE", "global_pooling": True}}))
        elif isinstance(op, ops.Linear):
            blobs = [self.param(f"{name}.weight")] + ([self.param(f"{name}.bias")]
                                                       if op.bias else [])
            self.add(Layer(name, "InnerProduct", bottoms, [top], {"inner_product_param": {
                "num_output": op.out_features, "bias_term": op.bias}}, blobs))
        elif isinstance(op, ops.Add):
            self.add(Layer(name, "Eltwise", bottoms, [top],
                           {"eltwise_param": {"operation": "SUM"}}))
        elif isinstance(op, ops.Concat):
            self.add(Layer(name, "Concat", bottoms, [top], {"concat_param": {"axis": 1}}))
        elif isinstance(op, ops.Mul):
            x, gate = bottoms
            if self.graph.shape_of(node.inputs[1]) == self.graph.shape_of(node.inputs[0]):
                self.add(Layer(name, "Eltwise", bottoms, [top],
                               {"eltwise_param": {"operation": "PROD"}}))
            else:  # a per-channel gate (squeeze-excitation)
                flat = f"{name}/flatten"  # (N, C, 1, 1) -> (N, C): Scale's second bottom
                self.add(Layer(flat, "Flatten", [gate], [flat], {"flatten_param": {"axis": 1}}))
                self.add(Layer(name, "Scale", [x, flat], [top], {"scale_param": {"axis": 0}}))
        elif isinstance(op, ops.Slice):
            channels = self.graph.shape_of(node.inputs[0]).channels
            points = [p for p in (op.start, op.stop) if 0 < p < channels]
            tops = []
            if op.start > 0:
                tops.append(f"{name}/before")
            tops.append(top)
            if op.stop < channels:
                tops.append(f"{name}/after")
            self.add(Layer(name, "Slice", bottoms, tops,
                           {"slice_param": {"axis": 1, "slice_point": points}}))
            for piece in tops:
                if piece != top:
                    self.discard(piece)
        elif isinstance(op, ops.PadChannels):
            channels = self.graph.shape_of(node.inputs[0]).channels
            zeros = f"{name}/zeros"
            self.add(Layer(zeros, "Power", bottoms, [zeros], {"power_param": {
                "power": 1.0, "scale": 0.0, "shift": 0.0}}))
            copies, rest = divmod(op.extra, channels)
            parts = [bottoms[0]] + [zeros] * copies
            if rest:
                part = f"{name}/zeros_part"
                self.add(Layer(part, "Slice", [zeros], [part, f"{part}_extra"],
                               {"slice_param": {"axis": 1, "slice_point": [rest]}}))
                self.discard(f"{part}_extra")
                parts.append(part)
            self.add(Layer(name, "Concat", parts, [top], {"concat_param": {"axis": 1}}))
        else:
            self.refuse(node, f"the Caffe backend has no layer for IR op {op.kind!r}")
            return
        self.blob[name] = top


def build_layers(graph: Graph, spec: Spec, batch: int = 1) -> list[Layer]:
    """The Caffe layers of `graph`; SpecError (located) listing every inexpressible node."""
    builder = _NetBuilder(graph, spec, batch)
    for node in graph.nodes:
        builder.emit(node)
    if builder.problems:
        raise SpecError(builder.problems)
    return builder.layers


def _layer_message(layer: Layer) -> Any:
    message = message_classes()["LayerParameter"](
        name=layer.name, type=layer.type, bottom=layer.bottoms, top=layer.tops)
    for param_field, values in layer.params.items():
        sub = getattr(message, param_field)
        sub.SetInParent()
        for key, value in values.items():
            if key == "shape":  # InputParameter.shape: repeated BlobShape
                for shape in value:
                    sub.shape.add(dim=shape["dim"])
            elif isinstance(value, list):
                getattr(sub, key).extend(value)
            else:
                setattr(sub, key, value)
    return message


def deploy_prototxt(name: str, layers: list[Layer]) -> str:
    """The text NetParameter (no blobs), as Caffe's tools and OpenCV read it."""
    from google.protobuf import text_format

    net = message_classes()["NetParameter"](name=name)
    net.layer.extend(_layer_message(layer) for layer in layers)
    return text_format.MessageToString(net)


def write_caffemodel(path: str | Path, name: str, layers: list[Layer],
                     fetch: Callable[[str], np.ndarray]) -> Path:
    """The binary NetParameter with blobs, written atomically one blob at a time.

    Every length is known from the shapes before any data is read, so each layer is framed,
    then its blobs' values are fetched (`fetch(param name)`) and written one after another.
    """
    name_bytes = name.encode()
    heads = [_layer_message(layer).SerializeToString(deterministic=True) for layer in layers]
    prefixes = [[blob_frame_prefix(b.shape) for b in layer.blobs] for layer in layers]
    lengths = [len(head) + sum(len(p) + b.nbytes for p, b in zip(pre, layer.blobs, strict=True))
               for head, pre, layer in zip(heads, prefixes, layers, strict=True)]
    total = len(frame(NET_NAME, len(name_bytes))) + len(name_bytes) + sum(
        len(frame(NET_LAYER, n)) + n for n in lengths)
    if total > PROTOBUF_LIMIT:
        raise UserError(f"the caffemodel would be {total / 2**30:.2f} GiB, over protobuf's 2 GiB "
                        "limit that Caffe and OpenCV read")
    with atomic_writer(path) as handle:
        handle.write(frame(NET_NAME, len(name_bytes)) + name_bytes)
        for layer, head, pre, length in zip(layers, heads, prefixes, lengths, strict=True):
            handle.write(frame(NET_LAYER, length) + head)
            for prefix, blob in zip(pre, layer.blobs, strict=True):
                data = np.ascontiguousarray(blob.values(fetch), dtype="<f4")
                if data.shape != blob.shape:
                    raise UserError(f"{layer.name}: expected a blob of shape {list(blob.shape)}, "
                                    f"got {list(data.shape)}")
                handle.write(prefix)
                handle.write(memoryview(data).cast("B"))
    return Path(path)


def export_caffe(graph: Graph, spec: Spec, options: CompileOptions, directory: Path,
                 weights: Mapping[str, np.ndarray] | None = None) -> list[Path]:
    """Write `<name>.prototxt` and `<name>.caffemodel` under `directory`; return both paths."""
    if options.dtype != "fp32":
        raise UserError(f"--dtype {options.dtype}: the Caffe backend writes float32 blobs "
                        "(Caffe's BlobProto has no half-precision data)")
    if options.batch is not None and options.batch < 1:
        raise UserError(f"--batch must be a positive integer, got {options.batch}")
    layers = build_layers(graph, spec, options.batch or 1)  # refuses before reading weights
    if weights is None:
        weights = model_weights(graph, options.weights, options.seed)
    stem = file_stem(spec.name)
    model = write_caffemodel(directory / f"{stem}.caffemodel", spec.name, layers,
                             weights.__getitem__)
    prototxt = write_text_atomic(directory / f"{stem}.prototxt", deploy_prototxt(spec.name, layers))
    return [prototxt, model]


class CaffeBackend:
    """`--backend caffe`: a deploy prototxt and a caffemodel in one directory."""

    name = "caffe"
    description = "Caffe deploy net: DIR/<name>.prototxt + DIR/<name>.caffemodel (input 'input')"

    def default_output(self, spec: Spec) -> Path:
        return Path(f"{file_stem(spec.name)}_caffe")

    def emit(self, graph: Graph, spec: Spec, options: CompileOptions, output: Path) -> list[Path]:
        if output.exists() and not output.is_dir():
            raise UserError(f"--output for the Caffe backend is a directory; {output} is a file")
        return export_caffe(graph, spec, options, output)
