"""The DOT backend: collapsed blocks with their cardinality, --expand, optional rendering."""

from __future__ import annotations

import re
import shutil

import pytest
from conftest import SPECS

from resnext_compiler.backends.dot import describe_block, to_dot
from resnext_compiler.pipeline import compile_spec
from resnext_compiler.spec import load_spec, parse_spec, with_form


def graph_of(name: str, form: str | None = None):
    spec = load_spec(SPECS / f"{name}.yaml")
    return compile_spec(with_form(spec, form) if form else spec)


def block_labels(dot: str) -> dict[str, str]:
    """Node id -> first label line, for the collapsed picture's block boxes."""
    return {m.group(1): m.group(2).split("\\n")[0]
            for m in re.finditer(r'^\s+"(layer[\d.]+)" \[label="([^"]*)"', dot, re.M)}


def test_collapsed_picture_shows_each_block_with_cardinality_and_stride():
    dot = to_dot(graph_of("resnext50_32x4d"))
    labels = block_labels(dot)
    assert len(labels) == 3 + 4 + 6 + 3  # one box per block (Table 1: [3, 4, 6, 3])
    assert labels["layer2.0"] == "layer2.0  bottleneck C=32 d=8 stride 2"
    assert labels["layer1.1"] == "layer1.1  bottleneck C=32 d=4 stride 1"
    assert labels["layer4.2"] == "layer4.2  bottleneck C=32 d=32 stride 1"
    for stage, blocks, shape in (("layer1", 3, "256x56x56"), ("layer4", 3, "2048x7x7")):
        assert f'subgraph "cluster_{stage}"' in dot
        assert f"{stage}: {blocks} blocks, output {shape}" in dot
    assert '"layer1.2" -> "layer2.0";' in dot and '"head" -> "logits";' in dot
    assert "conv1" not in dot.replace("stem", "")  # no individual layers


def test_cardinality_is_read_from_paths_in_forms_a_and_b():
    for form in ("A", "B"):
        labels = block_labels(to_dot(graph_of("resnext29_8x64d", form)))
        assert labels["layer3.0"] == f"layer3.0  bottleneck C=8 d=256 stride 2 (form {form})"


def test_basic_blocks_and_shortcut_kinds_are_named():
    graph = graph_of("resnet18")
    labels = block_labels(to_dot(graph))
    assert labels["layer2.0"] == "layer2.0  basic w=128 stride 2"
    assert describe_block(graph.block_record("layer2.0")).endswith("\nprojection shortcut")
    assert "\n" not in describe_block(graph.block_record("layer2.1"))
    se = graph_of("seresnext50_32x4d")
    assert "squeeze-excitation" in describe_block(se.block_record("layer1.1"))
    resnet_d = graph_of("resnext50d_32x4d")
    assert describe_block(resnet_d.block_record("layer3.0")).endswith(
        "avg-pool + projection shortcut")


def test_expanded_picture_has_every_node_and_edge():
    graph = compile_spec(parse_spec(
        "name: t\nstem: cifar\ninput: {height: 8, width: 8}\n"
        "block: {cardinality: 2, base_width: 32, preact: true}\nstages: [2]\n"))
    dot = to_dot(graph, expand=True)
    for node in graph.nodes:
        assert f'"{node.name}" [label="{node.name}\\n' in dot
        for src in node.inputs:
            assert f'"{src}" -> "{node.name}";' in dot
    assert 'subgraph "cluster_layer1.0"' in dot
    assert "conv 3x3 g2 64->64" in dot
    edges = dot.count(" -> ")
    assert edges == sum(len(n.inputs) for n in graph.nodes) + 1  # + the edge to logits


def test_cli_writes_dot_only_without_graphviz(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = run_cli(SPECS / "resnet18.yaml", "--backend", "dot", "-o", tmp_path / "r.dot")
    assert result.code == 0, result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.dot"]
    assert (tmp_path / "r.dot").read_text().startswith('digraph "resnet18" {')
    result = run_cli(SPECS / "resnet18.yaml", "--backend", "dot", "-o", tmp_path / "r.svg")
    assert result.code == 2 and "needs Graphviz" in result.err


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_cli_renders_svg_and_png_with_graphviz(tmp_path, run_cli):
    result = run_cli(SPECS / "resnext50_32x4d.yaml", "--backend", "dot", "-o", tmp_path / "r.dot")
    assert result.code == 0, result
    assert (tmp_path / "r.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    assert "bottleneck C=32 d=4 stride 1" in (tmp_path / "r.svg").read_text()
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
