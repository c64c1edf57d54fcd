"""The intermediate graph: a DAG of typed nodes with named, shaped values.

Each node has exactly one output value, named after the node. Node names are the
PyTorch module paths (`layer1.0.conv2`), so a node's parameters are named
`layer1.0.conv2.weight` exactly as in torchvision's state dicts. The graph input value is
named `input`.

Graphs are plain data; passes return new graphs (`dataclasses.replace`). Besides its nodes a
graph carries one `BlockRecord` per residual block: what the block *is* (type, form, C x d,
stride, ...), written by lowering and kept (or updated) by every pass, so consumers read the
structure instead of guessing it back from node names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from resnext_compiler.ops import Op, ParamSpec, TensorShape

INPUT = "input"


@dataclass(frozen=True)
class Node:
    """One operator application.

    `stage` and `block` group nodes for reports and pictures (`layer2`, `layer2.3`); `origin`
    is the spec field path that caused the node, so later errors point at a spec line.
    """

    name: str
    op: Op
    inputs: tuple[str, ...]
    stage: str = ""
    block: str = ""
    origin: str = ""

    def param_specs(self) -> list[ParamSpec]:
        return self.op.params()


@dataclass(frozen=True)
class Param:
    """A named tensor of the model: a parameter (`trainable`) or a buffer."""

    name: str
    shape: tuple[int, ...]
    trainable: bool
    dtype: str
    node: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class BlockRecord:
    """What one residual block is (Xie et al. 2017, Table 1's `[..., C=32]` entries).

    `path_width` is d, the width of one of the C paths (a basic block: its conv width, C=1).
    `shortcut` is `identity`, `subsample` (shortcut A, strided), `zero-pad` (shortcut A,
    widening), `projection` or `avg-pool + projection` (ResNet-D). `cardinality_origin` and
    `stride_origin` are the spec field paths that set C and the stride, for located errors.
    `options` holds the block type's own options beyond C, d and the form (a selective-kernel
    block's path dilations), as (name, value) pairs.
    """

    prefix: str  # module path of the block, e.g. "layer2.0"
    stage: str
    type: str  # a registered block type: "bottleneck", "basic", "selective_kernel", ...
    form: str  # "A" | "B" | "C" (Fig. 3)
    cardinality: int
    path_width: int
    in_channels: int
    out_channels: int
    stride: int
    preact: bool
    squeeze_excitation: bool
    shortcut: str
    origin: str = ""
    cardinality_origin: str = ""
    stride_origin: str = ""
    options: tuple[tuple[str, object], ...] = ()

    def option(self, name: str) -> object:
        """The value of one of the block type's own options."""
        return dict(self.options)[name]

    @property
    def group_width(self) -> int:
        """Channels of the grouped 3x3 conv: C x d."""
        return self.cardinality * self.path_width

    @property
    def cxd(self) -> str:
        """The paper's `C x d` notation (`32x4d`)."""
        return f"{self.cardinality}x{self.path_width}d"


@dataclass(frozen=True)
class Graph:
    """A whole network. `shapes` maps value names to shapes once `infer_shapes` has run."""

    name: str
    input_shape: TensorShape
    nodes: tuple[Node, ...]
    output: str
    shapes: dict[str, TensorShape] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    block_records: tuple[BlockRecord, ...] = ()

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def block_record(self, prefix: str) -> BlockRecord | None:
        """The record of block `prefix` (`layer2.0`), or None for the stem, head or unknown."""
        for record in self.block_records:
            if record.prefix == prefix:
                return record
        return None

    def params(self, include_buffers: bool = True) -> list[Param]:
        out = []
        for node in self.nodes:
            for spec in node.param_specs():
                if spec.trainable or include_buffers:
                    out.append(
                        Param(
                            f"{node.name}.{spec.suffix}",
                            spec.shape,
                            spec.trainable,
                            spec.dtype,
                            node.name,
                        )
                    )
        return out

    def shape_of(self, value: str) -> TensorShape:
        if value == INPUT:
            return self.input_shape
        return self.shapes[value]

    @property
    def output_shape(self) -> TensorShape:
        return self.shapes[self.output]

    def stages(self) -> list[str]:
        """Stage names in execution order (`stem`, `layer1`, ..., `head`)."""
        seen: list[str] = []
        for node in self.nodes:
            if node.stage and node.stage not in seen:
                seen.append(node.stage)
        return seen

    def blocks(self, stage: str) -> list[str]:
        seen: list[str] = []
        for node in self.nodes:
            if node.stage == stage and node.block and node.block not in seen:
                seen.append(node.block)
        return seen


class GraphBuilder:
    """Appends nodes in execution order; lowering code reads like the paper's figures."""

    def __init__(self, name: str, input_shape: TensorShape):
        self.name = name
        self.input_shape = input_shape
        self.nodes: list[Node] = []
        self._names: set[str] = set()
        self.stage = ""
        self.block = ""
        self.origin = ""
        self.records: list[BlockRecord] = []

    def add(self, name: str, op: Op, *inputs: str, origin: str | None = None) -> str:
        if name in self._names or name == INPUT:
            raise ValueError(f"duplicate node name {name!r}")
        self._names.add(name)
        self.nodes.append(
            Node(
                name,
                op,
                tuple(inputs),
                self.stage,
                self.block,
                self.origin if origin is None else origin,
            )
        )
        return name

    def build(self, output: str, metadata: dict[str, str] | None = None) -> Graph:
        return Graph(
            self.name,
            self.input_shape,
            tuple(self.nodes),
            output,
            metadata=dict(metadata or {}),
            block_records=tuple(self.records),
        )
