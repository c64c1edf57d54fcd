"""Every spec lowers to exactly the graph it lowered to before the block registry existed.

`graph_hashes.json` holds a sha256 of each graph's canonical form (nodes with their op
attributes, inputs, stage/block/origin, shapes, block records, parameters), recorded from the
compiler before block types became registered objects. An attribute at its field default is
left out of the canonical form, so adding an operator field with a neutral default (a conv's
dilation 1) keeps the graph the same graph.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from conftest import SPECS

from resnext_compiler.pipeline import compile_spec
from resnext_compiler.spec import load_spec, parse_spec, with_form

GOLDEN = Path(__file__).with_name("graph_hashes.json")

# Variants the zoo does not cover: forms A and B, pre-activation, shortcuts A and C, ResNet-D.
VARIANTS = {
    "cifar_preact_shortcut_a": """\
name: v1
input: {channels: 3, height: 32, width: 32}
stem: cifar
block: {type: basic, preact: true}
shortcut: A
stages: [2, 2, 2]
head: {num_classes: 10}
""",
    "bottleneck_preact_se_c": """\
name: v2
input: {channels: 3, height: 64, width: 64}
stem: deep
block: {cardinality: 4, base_width: 8, preact: true, se_ratio: 0.25, zero_init_last_bn: true}
shortcut: C
avg_down: true
stages: [{depth: 2, width: 16}, {depth: 2, width: 32, stride: 2, group_width: 64}]
head: {num_classes: 7, dropout: 0.2}
""",
}


def _default(field: dataclasses.Field) -> object:
    if field.default is not dataclasses.MISSING:
        return field.default
    return dataclasses.MISSING


def _attrs(op: object) -> dict[str, object]:
    return {f.name: getattr(op, f.name) for f in dataclasses.fields(op)
            if getattr(op, f.name) != _default(f)}


def graph_digest(graph) -> str:
    form = {
        "name": graph.name,
        "input": str(graph.input_shape),
        "output": graph.output,
        "nodes": [[n.name, n.op.kind, _attrs(n.op), list(n.inputs), n.stage, n.block, n.origin,
                   str(graph.shapes[n.name])] for n in graph.nodes],
        "records": [[r.prefix, r.stage, r.type, r.form, r.cardinality, r.path_width,
                     r.in_channels, r.out_channels, r.stride, r.preact, r.squeeze_excitation,
                     r.shortcut, r.origin, r.cardinality_origin, r.stride_origin]
                    for r in graph.block_records],
        "params": [[p.name, list(p.shape), p.trainable, p.dtype] for p in graph.params()],
    }
    return hashlib.sha256(json.dumps(form, sort_keys=True).encode()).hexdigest()


def _graphs() -> dict[str, object]:
    graphs = {}
    for path in sorted(SPECS.glob("*.yaml")):
        spec = load_spec(path)
        graphs[path.stem] = compile_spec(spec)
        if path.stem == "resnext29_8x64d":
            for form in ("A", "B"):
                graphs[f"{path.stem}_form_{form}"] = compile_spec(with_form(spec, form))
    for name, text in VARIANTS.items():
        graphs[name] = compile_spec(parse_spec(text))
    return graphs


def test_every_recorded_spec_lowers_to_the_same_graph():
    golden = json.loads(GOLDEN.read_text())
    graphs = _graphs()
    changed = [name for name, digest in golden.items() if graph_digest(graphs[name]) != digest]
    assert not changed, f"these specs now lower to a different graph: {changed}"


@pytest.mark.parametrize("name", ["resnext50_32x4d"])
def test_the_digest_sees_a_changed_attribute(name):
    graph = compile_spec(load_spec(SPECS / f"{name}.yaml"))
    node = graph.nodes[0]
    changed = dataclasses.replace(
        graph, nodes=(dataclasses.replace(node, op=dataclasses.replace(node.op, stride=1)),
                      *graph.nodes[1:]))
    assert graph_digest(changed) != graph_digest(graph)


if __name__ == "__main__":  # re-record (only when a graph is meant to change)
    GOLDEN.write_text(json.dumps({k: graph_digest(g) for k, g in _graphs().items()},
                                 indent=1, sort_keys=True) + "\n")
