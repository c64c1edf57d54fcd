"""Fold inference-mode BatchNorm into the convolution before it (IR + weights -> IR + weights).

In eval mode BN is the per-channel affine map y = gamma * (x - mean) / sqrt(var + eps) + beta
(Ioffe & Szegedy 2015, Alg. 1). After a conv with weight W and bias b it composes into one conv:

    s  = gamma / sqrt(var + eps)
    W' = W * s        (per output channel)
    b' = beta + (b - mean) * s

A BN is folded when its only input is a conv whose output nothing else reads. Pre-activation
BNs (which follow an addition) and the BN after form A's sum are kept. The pass is pure: the
graph is rebuilt and the weights come back as a lazy mapping that folds a conv when its tensor
is asked for, so an exporter can still stream one tensor at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace

import numpy as np

from resnext_compiler import ops
from resnext_compiler.ir import Graph, Node
from resnext_compiler.passes.manager import Pass, Weights


def foldable_batchnorms(graph: Graph) -> dict[str, str]:
    """BN node name -> the conv node it folds into."""
    readers: dict[str, int] = {}
    for node in graph.nodes:
        for name in node.inputs:
            readers[name] = readers.get(name, 0) + 1
    convs = {node.name for node in graph.nodes if isinstance(node.op, ops.Conv)}
    return {
        node.name: node.inputs[0]
        for node in graph.nodes
        if isinstance(node.op, ops.BatchNorm)
        and node.inputs[0] in convs
        and readers[node.inputs[0]] == 1
        and node.inputs[0] != graph.output
    }


def fold_batchnorm(graph: Graph, weights: Mapping[str, np.ndarray]
                   ) -> tuple[Graph, Mapping[str, np.ndarray]]:
    """The graph without foldable BNs (their convs gain a bias) and the matching weights."""
    folds = foldable_batchnorms(graph)
    if not folds:
        return graph, weights
    bn_of_conv = {conv: bn for bn, conv in folds.items()}
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.name in folds:
            continue
        inputs = tuple(folds.get(name, name) for name in node.inputs)
        op = node.op
        if node.name in bn_of_conv:
            op = replace(op, bias=True)
        nodes.append(replace(node, op=op, inputs=inputs))
    shapes = {name: shape for name, shape in graph.shapes.items() if name not in folds}
    folded = replace(graph, nodes=tuple(nodes), output=folds.get(graph.output, graph.output),
                     shapes=shapes)
    eps = {bn: graph.node(bn).op.eps for bn in folds}
    return folded, FoldedWeights(folded, weights, bn_of_conv, eps)


def _fold_pass(graph: Graph, weights: Weights) -> tuple[Graph, Weights]:
    assert weights is not None  # required by the pass declaration
    return fold_batchnorm(graph, weights)


# Folding needs the weights (it rewrites them) and changes the branches lowering wrote.
FOLD_BN = Pass("fold_batchnorm", _fold_pass, requires=frozenset({"shaped", "weights"}),
               ensures=frozenset({"bn_folded"}), invalidates=frozenset({"lowered_branches"}))


class FoldedWeights(Mapping[str, np.ndarray]):
    """Weights of the folded graph, computed from the original ones when asked for."""

    def __init__(self, graph: Graph, weights: Mapping[str, np.ndarray],
                 bn_of_conv: dict[str, str], eps: dict[str, float]):
        self._weights = weights
        self._bn_of_conv = bn_of_conv
        self._eps = eps
        self._shapes = {p.name: p.shape for p in graph.params()}

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._shapes:
            raise KeyError(name)
        conv, _, suffix = name.rpartition(".")
        bn = self._bn_of_conv.get(conv)
        if bn is None:
            return self._weights[name]
        scale, shift = self._affine(bn)
        if suffix == "weight":
            weight = np.asarray(self._weights[name], np.float32)
            per_channel = scale.astype(np.float32).reshape(-1, *([1] * (weight.ndim - 1)))
            if getattr(self._weights, "fresh_arrays", False) and weight.flags.writeable:
                weight *= per_channel  # a new array nobody else holds: scale it in place
                return weight
            return weight * per_channel
        bias_name = f"{conv}.bias"
        if bias_name in self._weights:  # a conv that already had a bias
            return (shift + np.asarray(self._weights[bias_name], np.float64) * scale
                    ).astype(np.float32)
        return shift.astype(np.float32)

    def _affine(self, bn: str) -> tuple[np.ndarray, np.ndarray]:
        """(s, beta - mean * s) in float64, so folding adds no rounding of its own."""
        w = self._weights
        gamma = np.asarray(w[f"{bn}.weight"], np.float64)
        beta = np.asarray(w[f"{bn}.bias"], np.float64)
        mean = np.asarray(w[f"{bn}.running_mean"], np.float64)
        var = np.asarray(w[f"{bn}.running_var"], np.float64)
        scale = gamma / np.sqrt(var + self._eps[bn])
        return scale, beta - mean * scale
