"""Every kind of bad spec: exit code 2, a `FILE:LINE:COL: field: message` line, no traceback."""

from __future__ import annotations

import re

import pytest

GOOD = "spec_version: 1\nname: n\nstages: [3, 4, 6, 3]\n"

# (id, yaml text, expected line or None, field substring, message substring)
CASES = [
    ("yaml-syntax", "name: n\nstages: [3, 4\nhead: {}\n", 3, "", "YAML syntax error"),
    ("yaml-bad-indent", "name: n\n  stages: [1]\n", 2, "", "YAML syntax error"),
    ("empty-file", "", 1, "", "file is empty"),
    ("top-level-list", "- 1\n- 2\n", 1, "", "must be a YAML mapping"),
    ("duplicate-key", "name: n\nname: m\nstages: [1]\n", 2, "name", "duplicate key"),
    ("non-string-key", "name: n\nstages: [1]\n1: x\n", 3, "", "keys must be strings"),
    ("unknown-top-key", "name: n\nstages: [1]\nstage: [1]\n", 3, "stage", "unknown field"),
    (
        "unknown-nested-key",
        "name: n\nblock: {cardinalty: 32}\nstages: [1]\n",
        2,
        "block.cardinalty",
        "did you mean 'cardinality'",
    ),
    (
        "wrong-type-string",
        "name: n\nblock: {cardinality: '32'}\nstages: [1]\n",
        2,
        "block.cardinality",
        "valid integer",
    ),
    (
        "wrong-type-bool",
        "name: n\nblock: {cardinality: true}\nstages: [1]\n",
        2,
        "block.cardinality",
        "valid integer",
    ),
    ("wrong-type-float", "name: n\nstages: [3.5]\n", 2, "stages[0]", "valid integer"),
    ("stages-not-list", "name: n\nstages: '3,4'\n", 2, "stages", "valid list"),
    ("stages-empty", "name: n\nstages: []\n", 2, "stages", "at least 1"),
    (
        "depth-zero",
        "name: n\nstages: [3, 0, 6]\n",
        2,
        "stages[1].depth",
        "greater than or equal to 1",
    ),
    ("depth-negative", "name: n\nstages:\n  - 3\n  - -2\n", 4, "stages[1].depth", "greater than"),
    (
        "explicit-stage-missing-depth",
        "name: n\nstages:\n  - {width: 64}\n",
        3,
        "stages[0].depth",
        "required field is missing",
    ),
    ("missing-name", "stages: [1]\n", 1, "name", "required field is missing"),
    ("missing-stages", "name: n\n", 1, "stages", "required field is missing"),
    (
        "cardinality-zero",
        "name: n\nblock: {cardinality: 0}\nstages: [1]\n",
        2,
        "block.cardinality",
        "greater than or equal to 1",
    ),
    (
        "group-width-not-divisible",
        "name: n\nblock: {cardinality: 32}\nstages:\n  - {depth: 1, group_width: 100}\n",
        4,
        "stages[0].group_width",
        "not divisible by cardinality 32",
    ),
    (
        "bottleneck-width-zero",
        "name: n\nblock: {base_width: 1}\nstages:\n  - {depth: 1, width: 32}\n",
        2,
        "block.base_width",
        "bottleneck width floor(32 * 1 / 64) is 0",
    ),
    (
        "basic-with-cardinality",
        "name: n\nblock: {type: basic, cardinality: 32}\nstages: [2]\n",
        2,
        "block.cardinality",
        "the basic block has no cardinality (it reads no block options)",
    ),
    (
        "stride-too-large",
        "name: n\ninput: {height: 16, width: 16}\nstages: [1, 1, 1, 1]\n",
        3,
        "stages[3].stride",
        "stride 2 is too large",
    ),
    (
        "explicit-stride-too-large",
        "name: n\ninput: {height: 32, width: 32}\nstem: cifar\n"
        "stages:\n  - 1\n  - {depth: 1, stride: 64}\n",
        6,
        "stages[1].stride",
        "stride 64 is too large",
    ),
    (
        "input-too-small-for-stem",
        "name: n\ninput: {height: 1, width: 1}\nstages: [1]\n",
        2,
        "input",
        "too small for the imagenet stem",
    ),
    (
        "input-channels-zero",
        "name: n\ninput: {channels: 0}\nstages: [1]\n",
        2,
        "input.channels",
        "greater than or equal to 1",
    ),
    ("bad-stem", "name: n\nstem: huge\nstages: [1]\n", 2, "stem", "'imagenet', 'cifar' or 'deep'"),
    ("bad-shortcut", "name: n\nshortcut: D\nstages: [1]\n", 2, "shortcut", "'A', 'B' or 'C'"),
    ("bad-form", "name: n\nblock: {form: D}\nstages: [1]\n", 2, "block.form", "'A', 'B' or 'C'"),
    (
        "shortcut-a-cannot-shrink",
        "name: n\nshortcut: A\nstages:\n  - 1\n  - {depth: 1, width: 16}\n",
        5,
        "stages[1].width",
        "shortcut A cannot reduce channels",
    ),
    (
        "num-classes-zero",
        "name: n\nstages: [1]\nhead: {num_classes: 0}\n",
        3,
        "head.num_classes",
        "greater than or equal to 1",
    ),
    (
        "dropout-out-of-range",
        "name: n\nstages: [1]\nhead: {dropout: 1.5}\n",
        3,
        "head.dropout",
        "less than 1",
    ),
    (
        "se-ratio-out-of-range",
        "name: n\nblock: {se_ratio: 2}\nstages: [1]\n",
        2,
        "block.se_ratio",
        "less than 1",
    ),
    ("spec-version", "spec_version: 2\nname: n\nstages: [1]\n", 1, "spec_version", "1"),
    (
        "batch-size-zero",
        "name: n\nstages: [1]\ntrain: {batch_size: 0}\n",
        3,
        "train.batch_size",
        "greater than or equal to 1",
    ),
    (
        "bad-dataset",
        "name: n\nstages: [1]\ntrain: {dataset: mnist}\n",
        3,
        "train.dataset",
        "should be",
    ),
    (
        "extends-missing-file",
        "extends: nowhere.yaml\nname: n\nstages: [1]\n",
        1,
        "extends",
        "base spec not found",
    ),
    (
        "extends-self",
        "extends: spec.yaml\nname: n\nstages: [1]\n",
        1,
        "extends",
        "circular extends",
    ),
    (
        "extends-not-string",
        "extends: 3\nname: n\nstages: [1]\n",
        1,
        "extends",
        "must be a path to a base spec",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_spec_is_a_located_user_error(case, run_cli, write_spec):
    _, text, line, field, message = case
    path = write_spec(text)
    result = run_cli("check", path)
    assert result.code == 2, result
    assert "Traceback" not in result.err
    pattern = re.compile(rf"^{re.escape(str(path))}:(\d+):(\d+): (.*)$", re.M)
    matches = pattern.findall(result.err)
    assert matches, result.err
    lines = [int(m[0]) for m in matches]
    assert line in lines, result.err
    text_out = "\n".join(m[2] for m in matches)
    assert field in text_out and message in text_out, result.err


def test_there_are_at_least_25_kinds_of_bad_spec():
    assert len(CASES) >= 25


def test_circular_extends_across_two_files(run_cli, write_spec):
    write_spec("extends: b.yaml\nname: a\nstages: [1]\n", "a.yaml")
    b = write_spec("extends: a.yaml\nname: b\nstages: [1]\n", "b.yaml")
    result = run_cli("check", b)
    assert result.code == 2
    assert "circular extends" in result.err and "a.yaml" in result.err
    assert re.search(r"a\.yaml:1:1: extends: circular extends", result.err), result.err


def test_missing_spec_file_is_exit_2_without_traceback(run_cli, tmp_path):
    result = run_cli("check", tmp_path / "nope.yaml")
    assert result.code == 2
    assert "spec file not found" in result.err and "Traceback" not in result.err


def test_directory_instead_of_spec(run_cli, tmp_path):
    result = run_cli("inspect", tmp_path)
    assert result.code == 2 and "directory" in result.err


def test_non_utf8_spec(run_cli, tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\nstages: [1]\n")
    result = run_cli("check", path)
    assert result.code == 2 and "not UTF-8" in result.err


def test_check_reports_good_and_bad_files_together(run_cli, write_spec):
    good = write_spec(GOOD, "good.yaml")
    bad = write_spec("name: n\nstages: [0]\n", "bad.yaml")
    result = run_cli("check", good, bad)
    assert result.code == 2
    assert f"ok {good}" in result.out
    assert f"{bad}:2:" in result.err and "1 of 2 spec(s) have problems" in result.err


def test_compile_of_a_bad_spec_is_exit_2(run_cli, write_spec, tmp_path):
    bad = write_spec("name: n\nstages: [0]\n")
    result = run_cli(bad, "--backend", "torch", "-o", tmp_path / "m.py")
    assert result.code == 2 and f"{bad}:2:" in result.err
    assert not (tmp_path / "m.py").exists()


def test_a_problem_every_stage_inherits_is_reported_once(run_cli, write_spec):
    """Issue 22, item 9: `group_width: 100` with cardinality 32 used to print four times."""
    import shutil

    from conftest import SPECS

    spec = write_spec("extends: resnext50_32x4d.yaml\nname: gw\nblock: {group_width: 100}\n")
    shutil.copy(SPECS / "resnext50_32x4d.yaml", spec.parent)  # `extends` stays in its folder
    result = run_cli("check", spec)
    assert result.code == 2
    lines = [line for line in result.err.splitlines() if "group width 100" in line]
    assert lines == [f"{spec}:3:9: block.group_width: group width 100 is not divisible by "
                     "cardinality 32 (each of the C paths needs the same width)"]
