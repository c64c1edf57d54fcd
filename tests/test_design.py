"""The 1x-complexity design solver (Xie et al. 2017, Sec. 3.3 / Table 2) and `design` command."""

from __future__ import annotations

import re

import pytest
from conftest import SPECS

from resnext_compiler.design import design_table, solve
from resnext_compiler.errors import UserError
from resnext_compiler.passes.complexity import analyse
from resnext_compiler.pipeline import compile_spec
from resnext_compiler.spec import load_spec

# The seed's 1x-complexity table (facebookresearch/ResNeXt README; the paper's Table 2).
SEED_TABLE = {1: 64, 2: 40, 4: 24, 8: 14, 32: 4}


@pytest.fixture(scope="module")
def resnet50():
    return load_spec(SPECS / "resnet50.yaml")


def test_parameter_criterion_reproduces_the_seed_table(resnet50):
    designs = design_table(resnet50, cardinalities=sorted(SEED_TABLE))
    assert {d.cardinality: d.base_width for d in designs} == SEED_TABLE
    assert all(d.criterion == "params" for d in designs)
    # Every chosen network is within 2.1% of ResNet-50's 25,557,032 parameters.
    assert all(abs(d.deviation(d.chosen)) < 0.021 for d in designs)


def test_mac_criterion_picks_13_at_cardinality_8(resnet50):
    by_macs = solve(resnet50, 8, "macs")
    by_params = solve(resnet50, 8, "params")
    assert (by_macs.base_width, by_params.base_width) == (13, 14)
    assert by_macs.target_macs == 4_089_184_256
    assert by_params.chosen.params == 25_603_016


def test_neighbours_bracket_the_target(resnet50):
    design = solve(resnet50, 4)
    low, chosen, high = design.neighbours
    assert (low.base_width, chosen.base_width, high.base_width) == (23, 24, 25)
    assert low.params < design.target_params < high.params
    assert low.params < chosen.params < high.params and low.macs < chosen.macs < high.macs


def test_basic_block_template_is_a_user_error():
    with pytest.raises(UserError, match="bottleneck template"):
        solve(load_spec(SPECS / "resnet18.yaml"), 2)


def test_cli_design_prints_criterion_and_neighbouring_candidates(run_cli):
    result = run_cli("design", "--template", SPECS / "resnet50.yaml", "--cardinality", "8")
    assert result.code == 0, result
    assert "criterion: whole-network parameters" in result.out
    assert "base width d = 14" in result.out
    rows = {int(m[0]): m[1] for m in re.findall(r"^\s+(\d+)\s+([\d,]+)\s+[\d.]+", result.out,
                                                   re.M)}
    assert rows == {13: "23,834,400", 14: "25,603,016", 15: "27,415,840"}
    # the spec is shown when -o is not given, named after what it is (issue 22, item 9)
    assert "name: resnext50_8x14d" in result.out


def test_designed_specs_are_named_after_their_family_and_shape():
    from resnext_compiler.design import designed_name

    assert designed_name("resnet50", 8, 14) == "resnext50_8x14d"
    assert designed_name("resnext50_32x4d", 4, 24) == "resnext50_4x24d"
    assert designed_name("seresnext50_32x4d", 1, 64) == "seresnet50_1x64d"
    assert designed_name("my_net", 2, 40) == "my_net_2x40d"


def test_cli_design_match_macs(run_cli):
    result = run_cli("design", "-t", SPECS / "resnet50.yaml", "-c", "8", "--match", "macs")
    assert result.code == 0, result
    assert "multiply-accumulates" in result.out and "base width d = 13" in result.out
    bad = run_cli("design", "-t", SPECS / "resnet50.yaml", "-c", "8", "--match", "flops")
    assert bad.code == 2 and "--match must be params or macs" in bad.err


def test_cli_design_writes_a_spec_that_loads_and_compiles(run_cli, tmp_path):
    out = tmp_path / "r50_2x40d.yaml"
    result = run_cli("design", "--template", SPECS / "resnet50.yaml", "--cardinality", "2",
                     "-o", out, "--name", "resnext50_2x40d")
    assert result.code == 0, result
    spec = load_spec(out)
    assert (spec.name, spec.block.cardinality, spec.block.base_width) == ("resnext50_2x40d", 2, 40)
    cost = analyse(compile_spec(spec))
    assert cost.params == 25_425_000
    assert [s.depth for s in spec.stages] == [3, 4, 6, 3]
    assert spec.reference is None and "resnet50" in spec.description


def test_cli_design_table_has_every_cardinality(run_cli):
    result = run_cli("design", "--template", SPECS / "resnet50.yaml", "--table")
    assert result.code == 0, result
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+[\d,]+", result.out, re.M)
    table = {int(c): int(d) for c, d, _ in rows}
    assert list(table) == [1, 2, 4, 8, 16, 32, 64]
    assert {c: table[c] for c in SEED_TABLE} == SEED_TABLE


def test_cli_design_without_cardinality_is_a_user_error(run_cli):
    result = run_cli("design", "--template", SPECS / "resnet50.yaml")
    assert result.code == 2 and "--cardinality" in result.err
    result = run_cli("design", "--template", SPECS / "resnet34.yaml", "-c", "2")
    assert result.code == 2 and "bottleneck template" in result.err


def test_design_from_a_cifar_template(write_spec, run_cli, tmp_path):
    """A template with per-stage overrides: they are cleared so the design applies everywhere."""
    path = write_spec("""
        name: cifar_tiny
        input: {channels: 3, height: 32, width: 32}
        stem: cifar
        block: {cardinality: 1, base_width: 64}
        stages: [{depth: 1, width: 16, cardinality: 2, base_width: 32}, {depth: 1, width: 32}]
        head: {num_classes: 10}
        """)
    out = tmp_path / "designed.yaml"
    result = run_cli("design", "-t", path, "-c", "4", "-o", out)
    assert result.code == 0, result
    spec = load_spec(out)
    assert all(s.cardinality == 4 for s in spec.resolved_stages())
    template_params = analyse(compile_spec(load_spec(path))).params
    designed_params = analyse(compile_spec(spec)).params
    assert abs(designed_params / template_params - 1) < 0.1


def test_design_costs_each_candidate_once(resnet50, monkeypatch):
    import resnext_compiler.lower as lowering
    import resnext_compiler.pipeline as pipeline

    calls = []
    real = lowering.lower

    def counting(spec):  # noqa: ANN001, ANN202
        calls.append(spec.block.base_width)
        return real(spec)

    monkeypatch.setattr(lowering, "lower", counting)
    monkeypatch.setattr(pipeline, "lower", counting)
    design = solve(resnet50, 8)
    assert design.base_width == 14
    candidates = calls[2:]  # the template: its budget estimate, then its one full compile
    assert len(candidates) == len(set(candidates))
