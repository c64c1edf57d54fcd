"""One source per fact: the IR's block records, the width rule and the branch emitter.

Every view of a network (DOT, generated source, `inspect`, the form rewrite) reads what a block
is from `Graph.block_records`, which lowering writes from the one width rule and every pass keeps.
"""

from __future__ import annotations

import pytest
from conftest import SPECS

from resnext_compiler.backends.dot import to_dot
from resnext_compiler.backends.torch_source import render_source
from resnext_compiler.blocks import bottleneck, grouped
from resnext_compiler.passes.complexity import analyse
from resnext_compiler.passes.fold_bn import fold_batchnorm
from resnext_compiler.passes.forms import rewrite_forms
from resnext_compiler.pipeline import compile_spec
from resnext_compiler.report import report_dict, report_table
from resnext_compiler.spec import load_spec, parse_spec, with_form
from resnext_compiler.weights import InitialWeights

TINY = """
name: tiny_records
input: {channels: 3, height: 16, width: 16}
stem: cifar
block: {cardinality: 4, base_width: 8, se_ratio: 0.25}
shortcut: C
stages: [{depth: 2, width: 16}, {depth: 1, width: 32}]
head: {num_classes: 5}
"""


def test_lowering_records_every_block():
    graph = compile_spec(parse_spec(TINY))
    records = {r.prefix: r for r in graph.block_records}
    assert list(records) == ["layer1.0", "layer1.1", "layer2.0"]
    first, strided = records["layer1.0"], records["layer2.0"]
    assert (first.type, first.form, first.cardinality, first.path_width, first.stride) == (
        "bottleneck", "C", 4, 2, 1)  # d = floor(16 * 8 / 64) = 2
    assert (strided.cardinality, strided.path_width, strided.stride) == (4, 4, 2)
    assert (strided.in_channels, strided.out_channels, strided.group_width) == (64, 128, 16)
    assert first.squeeze_excitation and not first.preact
    assert {r.shortcut for r in records.values()} == {"projection"}
    assert first.stride_origin == "stages[0].stride"
    assert first.cardinality_origin == "block.cardinality"


@pytest.mark.parametrize("form", ["A", "B", "C"])
def test_dot_and_torch_source_show_c_x_d_in_every_form(form):
    spec = load_spec(SPECS / "resnext50_32x4d.yaml")
    graph = compile_spec(with_form(spec, form))
    dot = to_dot(graph)
    assert '"layer2.0" [label="layer2.0  bottleneck C=32 d=8 stride 2' in dot
    assert '"layer4.2" [label="layer4.2  bottleneck C=32 d=32 stride 1' in dot
    source = render_source(graph, spec)
    assert f"# layer2.0: bottleneck C=32 d=8 (form {form}), stride 2" in source
    assert f"# layer1.1: bottleneck C=32 d=4 (form {form}), stride 1" in source


@pytest.mark.parametrize("form", ["A", "B"])
def test_passes_keep_the_records(form):
    spec = parse_spec(TINY)
    lowered = compile_spec(with_form(spec, form))
    rewritten = rewrite_forms(compile_spec(spec), form)
    assert rewritten.block_records == lowered.block_records
    folded, _ = fold_batchnorm(lowered, InitialWeights(lowered))
    assert folded.block_records == lowered.block_records


def test_report_reads_c_x_d_from_the_graph_after_a_form_rewrite():
    spec = parse_spec(TINY)
    graph = rewrite_forms(compile_spec(spec), "A")
    report = report_dict(spec, graph, analyse(graph))
    layer2 = next(s for s in report["stages"] if s["name"] == "layer2")
    assert (layer2["form"], layer2["cardinality"], layer2["path_width"]) == ("A", 4, 4)
    assert "4 x 4d" in report_table(spec, graph, analyse(graph))


def test_the_width_rule_has_one_home(monkeypatch):
    """Change the rule in blocks/grouped.py and every view follows: no consumer copies it."""
    spec = parse_spec(TINY)
    monkeypatch.setattr(grouped, "bottleneck_path_width", lambda width, base: width // 4)
    graph = compile_spec(spec)
    layer2 = graph.block_record("layer2.0")
    assert layer2.path_width == 8  # 32 // 4, not floor(32 * 8 / 64) = 4
    assert graph.shape_of("layer2.0.conv2").channels == 4 * 8
    assert "bottleneck C=4 d=8 stride 2" in to_dot(graph)
    assert "# layer2.0: bottleneck C=4 d=8 (form C)" in render_source(graph, spec)
    assert "4 x 8d" in report_table(spec, graph, analyse(graph))
    rewritten = rewrite_forms(graph, "B")
    assert rewritten.shape_of("layer2.0.paths.3.conv2").channels == 8


def test_lowering_and_the_form_rewrite_share_one_branch_emitter(monkeypatch):
    """Both build a branch through `blocks.bottleneck`'s path emitter; a second copy of the
    bottleneck in the rewrite would not pass through it."""
    calls: list[str] = []
    emit_path = bottleneck._path

    def counting(b, x, q, block, width, groups):
        calls.append(q)
        return emit_path(b, x, q, block, width, groups)

    monkeypatch.setattr(bottleneck, "_path", counting)
    graph = compile_spec(parse_spec(TINY))
    # twice: the cost budget lowers its reduced spec (here the same two-block stages) first
    assert calls == ["layer1.0", "layer1.1", "layer2.0"] * 2
    calls.clear()
    rewritten = rewrite_forms(graph, "A")
    assert "layer2.0.paths.3" in calls  # the new branches come from the emitter
    params = {p.name: p.shape for p in rewritten.params()}
    assert params["layer2.0.paths.3.conv3.weight"] == (128, 4, 1, 1)
    assert analyse(rewritten).params == analyse(graph).params


def test_the_form_rewrite_refuses_a_graph_whose_branches_a_pass_changed():
    graph = compile_spec(parse_spec(TINY))
    folded, _ = fold_batchnorm(graph, InitialWeights(graph))
    with pytest.raises(ValueError, match="layer1.0: the graph no longer holds the branch"):
        rewrite_forms(folded, "A")
