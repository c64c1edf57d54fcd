"""Spec v1 parsing: shorthand and explicit stages, defaults, extends, locations, schema."""

from __future__ import annotations

import json
import shutil

import pytest

from resnext_compiler.errors import SpecError
from resnext_compiler.spec import load_spec, parse_spec


def test_shorthand_stages_get_paper_widths_and_strides():
    spec = parse_spec("name: n\nstages: [3, 4, 6, 3]\n")
    stages = spec.resolved_stages()
    assert [s.width for s in stages] == [64, 128, 256, 512]
    assert [s.stride for s in stages] == [1, 2, 2, 2]
    assert [s.depth for s in stages] == [3, 4, 6, 3]
    assert [s.name for s in stages] == ["layer1", "layer2", "layer3", "layer4"]


def test_explicit_stage_overrides_block_defaults():
    spec = parse_spec(
        "name: n\nblock: {cardinality: 32, base_width: 4}\n"
        "stages:\n  - {depth: 3, width: 64, stride: 1}\n  - {depth: 4, cardinality: 64}\n"
    )
    first, second = spec.resolved_stages()
    assert (first.cardinality, second.cardinality) == (32, 64)
    assert second.width == 128 and second.stride == 2
    assert second.origin("cardinality") == "stages[1].cardinality"
    assert first.origin("cardinality") == "block.cardinality"


def test_group_width_follows_the_seeds_floor_rule():
    # resnext.lua: D = floor(n * baseWidth / 64); group width D * C.
    spec = parse_spec("name: n\nblock: {cardinality: 8, base_width: 14}\nstages: [1, 1, 1, 1]\n")
    assert [s.group_width for s in spec.resolved_stages()] == [112, 224, 448, 896]
    spec = parse_spec("name: n\nblock: {cardinality: 3, base_width: 5}\nstages: [1]\n")
    assert spec.resolved_stages()[0].group_width == 5 * 3  # floor(64*5/64)=5


def test_expansion_defaults_depend_on_block_type():
    spec = parse_spec("name: n\nblock: {type: basic}\nstages: [1]\n")
    assert spec.resolved_stages()[0].expansion == 1
    spec = parse_spec("name: n\nstages: [1]\n")
    assert spec.resolved_stages()[0].expansion == 4


def test_float_in_exponent_form_is_read_as_float():
    spec = parse_spec("name: n\nstages: [1]\ntrain: {weight_decay: 5e-4, lr: 1e-1}\n")
    assert spec.train.weight_decay == pytest.approx(5e-4)
    assert spec.train.lr == pytest.approx(0.1)


def test_extends_merges_nested_fields_and_keeps_base_values(write_spec):
    write_spec(
        "name: base\nblock: {cardinality: 32, base_width: 4}\nstages: [3, 4, 6, 3]\n", "base.yaml"
    )
    child = write_spec("extends: base.yaml\nname: child\nblock: {cardinality: 64}\n", "child.yaml")
    spec = load_spec(child)
    assert spec.name == "child"
    assert spec.block.cardinality == 64 and spec.block.base_width == 4
    assert [s.depth for s in spec.stages] == [3, 4, 6, 3]


def test_errors_in_a_base_spec_point_into_the_base_file(write_spec):
    base = write_spec("name: base\nstages: [3, 0]\n", "base.yaml")
    child = write_spec("extends: base.yaml\nname: child\n", "child.yaml")
    with pytest.raises(SpecError) as info:
        load_spec(child)
    (diag,) = info.value.diagnostics
    assert diag.location.file == str(base.resolve()) and diag.location.line == 2
    assert diag.field == "stages[1].depth"


def test_all_schema_errors_of_a_file_are_reported_at_once(write_spec):
    path = write_spec("""
        name: n
        block: {cardinality: 0, bogus: 1}
        stages: [3, -1]
        head: {num_classes: ten}
    """)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    fields = sorted(d.field for d in info.value.diagnostics)
    assert fields == ["block.bogus", "block.cardinality", "head.num_classes", "stages[1].depth"]
    lines = {d.field: d.location.line for d in info.value.diagnostics}
    assert lines == {
        "block.bogus": 2,
        "block.cardinality": 2,
        "stages[1].depth": 3,
        "head.num_classes": 4,
    }


def test_unknown_field_suggests_the_closest_name(write_spec):
    path = write_spec("name: n\nblock: {cardinalty: 32}\nstages: [1]\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "did you mean 'cardinality'" in str(info.value)


def test_spec_hash_ignores_formatting_but_not_content():
    a = parse_spec("name: n\nstages: [3, 4]\n")
    b = parse_spec("name:   n\n# comment\nstages:\n  - 3\n  - 4\n")
    c = parse_spec("name: n\nstages: [3, 5]\n")
    assert a.spec_hash() == b.spec_hash() != c.spec_hash()


def test_resolved_yaml_round_trips():
    spec = parse_spec("name: n\nblock: {cardinality: 4}\nstages: [1, 2]\n")
    again = parse_spec(spec.to_yaml())
    assert again.spec_hash() == spec.spec_hash()


def test_json_schema_describes_every_top_level_field():
    from resnext_compiler.spec import json_schema

    schema = json.loads(json.dumps(json_schema()))
    for key in ("name", "stages", "block", "stem", "shortcut", "head", "train", "extends"):
        assert key in schema["properties"]
    assert schema["additionalProperties"] is False


def test_yaml_anchors_and_merge_keys_work_and_explicit_keys_win():
    spec = parse_spec(
        "name: n\nstages:\n  - &s {depth: 1, cardinality: 4}\n  - {<<: *s, depth: 2}\n"
    )
    assert [(s.depth, s.cardinality) for s in spec.stages] == [(1, 4), (2, 4)]


def test_shipped_json_schema_is_current_and_specs_point_to_it():
    from conftest import SPECS

    from resnext_compiler.spec import json_schema

    shipped = json.loads((SPECS / "spec.schema.json").read_text())
    assert shipped == json.loads(json.dumps(json_schema())), (
        "run: resnext-compile schema > specs/spec.schema.json"
    )
    for path in SPECS.glob("*.yaml"):
        assert path.read_text().startswith("# yaml-language-server: $schema=spec.schema.json")


def test_extends_does_not_inherit_the_parent_s_reference_or_description(tmp_path) -> None:
    """Issue 22, item 6: a 2x4d child of ResNeXt-29 8x64d is not 'ResNeXt-29 (8x64d)' and
    does not claim its 3.65% CIFAR-10 error."""
    from conftest import SPECS

    from resnext_compiler.spec import load_spec

    parent = load_spec(SPECS / "resnext29_8x64d.yaml")
    assert parent.reference is not None and parent.description
    shutil.copy(SPECS / "resnext29_8x64d.yaml", tmp_path)  # `extends` stays in its folder
    child = tmp_path / "child.yaml"
    child.write_text("extends: resnext29_8x64d.yaml\nname: r29_2x4d\n"
                     "block: {cardinality: 2, base_width: 4}\n")
    loaded = load_spec(child)
    assert loaded.reference is None and not loaded.description
    assert loaded.block.cardinality == 2 and loaded.stages == parent.stages
    own = tmp_path / "own.yaml"
    own.write_text("extends: resnext29_8x64d.yaml\nname: mine\n"
                   "description: my variant\n")
    assert load_spec(own).description == "my variant"


def test_a_field_diagnostic_points_at_the_field_however_the_field_is_written(tmp_path):
    from resnext_compiler.errors import format_field_path, parse_field_path
    from resnext_compiler.spec import field_diagnostic

    path = tmp_path / "s.yaml"
    path.write_text("name: s\nstages:\n  - {depth: 1, width: 64}\n  - {depth: 2, width: 128}\n")
    spec = load_spec(path)
    written = field_diagnostic(spec, "stages[1].width", "too wide")
    assert field_diagnostic(spec, ("stages", 1, "width"), "too wide") == written
    assert written.format() == f"{path}:4:16: stages[1].width: too wide"
    assert field_diagnostic(spec, "", "whole file").format() == f"{path}:1:1: whole file"
    assert parse_field_path(format_field_path(("stages", 1, "block", "se_ratio"))) == (
        "stages", 1, "block", "se_ratio")
