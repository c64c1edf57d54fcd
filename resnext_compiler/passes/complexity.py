"""Analytic complexity from the IR alone (pycls style): parameters, MACs, activations.

MACs are multiply-accumulates of conv and linear layers for one sample, the number
torchvision and the seed's table call "GFLOPs" (ResNet-50: 4.1). Activation memory is the
float32 size of each node's output for one sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from resnext_compiler.ir import INPUT, Graph
from resnext_compiler.ops import TensorShape


@dataclass(frozen=True)
class NodeCost:
    name: str
    op: str
    stage: str
    block: str
    output_shape: TensorShape
    params: int
    macs: int
    activation_bytes: int


@dataclass(frozen=True)
class StageCost:
    name: str
    blocks: int
    output_shape: TensorShape
    params: int
    macs: int
    activation_bytes: int


@dataclass(frozen=True)
class Complexity:
    params: int
    buffers: int
    macs: int
    activation_bytes: int
    param_bytes: int
    stages: list[StageCost] = field(default_factory=list)
    nodes: list[NodeCost] = field(default_factory=list)


def analyse(graph: Graph) -> Complexity:
    """Per-node and per-stage costs of a shaped graph (run `infer_shapes` first)."""
    nodes: list[NodeCost] = []
    for node in graph.nodes:
        inputs = [graph.input_shape if n == INPUT else graph.shapes[n] for n in node.inputs]
        output = graph.shapes[node.name]
        params = sum(p.numel for p in node.param_specs() if p.trainable)
        nodes.append(
            NodeCost(
                node.name,
                node.op.kind,
                node.stage,
                node.block,
                output,
                params,
                node.op.macs(inputs, output),
                output.numel * 4,
            )
        )
    stages = []
    for stage in graph.stages():
        members = [c for c in nodes if c.stage == stage]
        stages.append(
            StageCost(
                name=stage,
                blocks=len(graph.blocks(stage)) if stage.startswith("layer") else 0,
                output_shape=members[-1].output_shape,
                params=sum(c.params for c in members),
                macs=sum(c.macs for c in members),
                activation_bytes=sum(c.activation_bytes for c in members),
            )
        )
    all_params = graph.params()
    return Complexity(
        params=sum(p.numel for p in all_params if p.trainable),
        buffers=sum(p.numel for p in all_params if not p.trainable),
        macs=sum(c.macs for c in nodes),
        activation_bytes=sum(c.activation_bytes for c in nodes),
        param_bytes=4 * sum(p.numel for p in all_params if p.trainable),
        stages=stages,
        nodes=nodes,
    )
