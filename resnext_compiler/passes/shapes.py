"""Shape inference: fill `Graph.shapes` from the input shape and each operator's rule."""

from __future__ import annotations

from dataclasses import replace

from resnext_compiler.ir import INPUT, Graph
from resnext_compiler.ops import ShapeError, TensorShape
from resnext_compiler.passes.manager import Pass


class ShapeProblem(ValueError):
    def __init__(self, node: str, message: str):
        self.node = node
        super().__init__(f"{node}: {message}")


def infer_shapes(graph: Graph) -> Graph:
    """A copy of `graph` with every value shaped; raises ShapeProblem at the first failure."""
    shapes: dict[str, TensorShape] = {}
    for node in graph.nodes:
        inputs = [graph.input_shape if name == INPUT else shapes[name] for name in node.inputs]
        try:
            shapes[node.name] = node.op.infer(inputs)
        except ShapeError as exc:
            raise ShapeProblem(node.name, str(exc)) from None
    return replace(graph, shapes=shapes)


SHAPES = Pass("infer_shapes", lambda graph, weights: (infer_shapes(graph), weights),
              ensures=frozenset({"shaped"}))
