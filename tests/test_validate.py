"""Structural validation of IR graphs (networkx) and shape inference errors."""

from __future__ import annotations

from dataclasses import replace

import pytest

from resnext_compiler.ir import INPUT, Graph, Node
from resnext_compiler.ops import Add, Conv, ReLU, TensorShape
from resnext_compiler.passes.shapes import ShapeProblem, infer_shapes
from resnext_compiler.pipeline import compile_spec
from resnext_compiler.spec import parse_spec
from resnext_compiler.validate import structural_problems

SHAPE = TensorShape(3, 8, 8)


def graph(*nodes: Node, output: str) -> Graph:
    return Graph("g", SHAPE, tuple(nodes), output)


def test_lowered_zoo_style_graph_has_no_problems():
    g = compile_spec(parse_spec("name: n\nblock: {cardinality: 4}\nstages: [2, 2]\n"))
    assert structural_problems(g) == []


def test_cycle_is_reported():
    g = graph(
        Node("a", ReLU(), ("b",)),
        Node("b", ReLU(), ("a",)),
        Node("c", ReLU(), (INPUT,)),
        output="b",
    )
    messages = [m for _, m in structural_problems(g)]
    assert any("cycle" in m or "before it is computed" in m for m in messages)


def test_dangling_node_does_not_reach_output():
    g = graph(Node("a", ReLU(), (INPUT,)), Node("b", ReLU(), (INPUT,)), output="a")
    assert ("b", "node output is never used (graph must have one output)") in structural_problems(g)


def test_unknown_input_and_arity():
    g = graph(Node("a", Add(), ("zzz",)), output="a")
    problems = structural_problems(g)
    assert ("a", "add takes 2..n inputs, got 1") in problems
    assert ("a", "input 'zzz' is not a node of the graph") in problems


def test_out_of_order_nodes_are_reported():
    g = graph(Node("b", ReLU(), ("a",)), Node("a", ReLU(), (INPUT,)), output="b")
    assert ("b", "uses 'a' before it is computed") in structural_problems(g)


def test_shape_inference_names_the_node():
    g = graph(Node("conv", Conv(4, 8, 3, 1, 1), (INPUT,)), output="conv")
    with pytest.raises(ShapeProblem) as info:
        infer_shapes(g)
    assert info.value.node == "conv" and "expects 4 input channels, got 3" in str(info.value)


def test_add_of_mismatched_shapes_is_a_shape_problem():
    g = graph(
        Node("a", Conv(3, 4, 1), (INPUT,)),
        Node("b", Conv(3, 5, 1), (INPUT,)),
        Node("sum", Add(), ("a", "b")),
        output="sum",
    )
    with pytest.raises(ShapeProblem, match="add needs equal shapes"):
        infer_shapes(g)


def test_passes_are_pure():
    g = compile_spec(
        parse_spec("name: n\nstem: cifar\ninput: {height: 8, width: 8}\nstages: [1]\n")
    )
    bare = replace(g, shapes={})
    again = infer_shapes(bare)
    assert bare.shapes == {} and again.shapes == g.shapes
