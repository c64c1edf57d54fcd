"""The pass manager: passes declare what they require and ensure; order is checked first."""

from __future__ import annotations

import pytest
from conftest import SPECS

from resnext_compiler.lower import lower
from resnext_compiler.passes.fold_bn import FOLD_BN
from resnext_compiler.passes.forms import form_pass
from resnext_compiler.passes.manager import PassOrderError, PassState, run_passes
from resnext_compiler.passes.shapes import SHAPES
from resnext_compiler.pipeline import compile_model
from resnext_compiler.spec import load_spec, with_form
from resnext_compiler.weights import InitialWeights


def test_a_pass_whose_requirement_is_unmet_is_refused_before_anything_runs():
    graph = lower(load_spec(SPECS / "resnext50_32x4d.yaml"))
    with pytest.raises(PassOrderError, match="'fold_batchnorm' requires weights"):
        run_passes(PassState(graph), [SHAPES, FOLD_BN])


def test_folding_batchnorm_invalidates_the_branches_the_form_rewrite_reads():
    model = compile_model(load_spec(SPECS / "resnext50_32x4d.yaml"))
    state = PassState(model.graph, InitialWeights(model.graph), model.facts | {"weights"})
    with pytest.raises(PassOrderError, match="requires lowered_branches"):
        run_passes(state, [FOLD_BN, form_pass("A")])
    folded = run_passes(state, [form_pass("A"), FOLD_BN])
    assert {"bn_folded", "form_A"} <= folded.facts


def test_the_compiled_model_rewrites_forms_without_compiling_again():
    spec = load_spec(SPECS / "resnext50_32x4d.yaml")
    model = compile_model(spec)
    rewritten = model.with_form("B")
    lowered = compile_model(with_form(spec, "B")).graph
    assert rewritten.graph.nodes == lowered.nodes
    assert rewritten.graph.block_records == lowered.block_records
    assert rewritten.cost.params == model.cost.params == model.estimate.params
