"""Spec `preprocess:`: per-data-set defaults, located errors (exit 2, FILE:LINE:COL), and the
resolved contract a training run writes into its run directory."""

from __future__ import annotations

import re

import pytest
from conftest import tiny_digits_spec

from resnext_compiler.artifact_format import read_contract
from resnext_compiler.dataset_types import dataset_types
from resnext_compiler.input_contract import default_contract, resolve_contract
from resnext_compiler.spec import parse_spec

BASE = "spec_version: 1\nname: n\ninput: {channels: 3, height: 32, width: 32}\nstages: [1]\n" \
       "head: {num_classes: 3}\n"

BAD = [
    ("mean-count", "preprocess:\n  mean: [0.5, 0.5]\n", 7, "preprocess.mean",
     "2 value(s) for an input of 3 channel(s)"),
    ("std-count", "preprocess:\n  std: [0.2, 0.2, 0.2, 0.2]\n", 7, "preprocess.std",
     "4 value(s) for an input of 3 channel(s)"),
    ("crop-zero", "preprocess: {crop_fraction: 0}\n", 6, "preprocess.crop_fraction",
     "greater than 0"),
    ("crop-above-one", "preprocess: {crop_fraction: 1.2}\n", 6, "preprocess.crop_fraction",
     "less than or equal to 1"),
    ("labels-count", "preprocess:\n  labels: [a, b]\n", 7, "preprocess.labels",
     "2 class name(s) but head.num_classes is 3"),
    ("labels-file-count", "preprocess: {labels: names.txt}\n", 6, "preprocess.labels",
     "4 class name(s) in names.txt but head.num_classes is 3"),
    ("labels-file-missing", "preprocess: {labels: nothing.txt}\n", 6, "preprocess.labels",
     "labels file not found"),
    ("std-zero", "preprocess: {std: [0.2, 0, 0.2]}\n", 6, "preprocess.std[1]",
     "greater than 0"),
]


@pytest.mark.parametrize(("text", "line", "field", "message"),
                         [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_preprocess_sections_are_located_user_errors(text, line, field, message, tmp_path,
                                                         run_cli):
    (tmp_path / "names.txt").write_text("a\nb\nc\nd\n")
    path = tmp_path / "bad.yaml"
    path.write_text(BASE + text)
    result = run_cli("check", path)
    assert result.code == 2
    assert "Traceback" not in result.err
    assert re.search(rf"{re.escape(str(path))}:{line}:\d+: {re.escape(field)}: .*"
                     rf"{re.escape(message)}", result.err), result.err


def test_defaults_follow_the_data_set():
    imagenet = resolve_contract(parse_spec("name: n\nstages: [1]\n"))
    assert (imagenet.resize, imagenet.crop_fraction, imagenet.colour) == ("crop", 0.875, "rgb")
    assert imagenet.mean == dataset_types()["imagenet"].mean and imagenet.labels is None
    small = default_contract(3, 32, 32, "imagefolder")
    assert (small.resize, small.crop_fraction) == ("direct", 1.0)
    cifar = default_contract(3, 32, 32, "cifar10")
    assert cifar.std == dataset_types()["cifar10"].std
    grey = default_contract(1, 224, 224, "imagenet")
    assert grey.colour == "grey" and grey.mean == (pytest.approx(sum((0.485, 0.456, 0.406)) / 3),)


def test_spec_values_override_the_defaults_and_0_255_scales_the_rest(tmp_path):
    spec = parse_spec(BASE + "preprocess:\n  scale: 0-255\n  mean: [123.675, 116.28, 103.53]\n"
                      "  labels: [x, y, z]\n")
    contract = resolve_contract(spec)
    assert contract.scale == "0-255" and contract.labels == ("x", "y", "z")
    assert contract.std == pytest.approx(tuple(255 * s for s in dataset_types()["imagenet"].std))
    multiplier, offset = contract.affine()  # the same numbers as the 0-1 recipe
    reference = default_contract(3, 32, 32, "imagenet").affine()
    assert multiplier == pytest.approx(reference[0], rel=1e-6)
    assert offset == pytest.approx(reference[1], rel=1e-5, abs=1e-6)


def test_a_run_directory_records_the_resolved_contract_and_exports_carry_it(tmp_path, run_cli):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(tiny_digits_spec("{dataset: digits, epochs: 1, batch_size: 64}"))
    run = tmp_path / "run"
    assert run_cli("train", spec, "--run-dir", run).code == 0
    from resnext_compiler.spec import load_spec

    recorded = load_spec(run / "spec.yaml")
    assert recorded.preprocess.labels == "labels.txt"
    assert recorded.labels == tuple(str(i) for i in range(10))
    assert (recorded.preprocess.resize, recorded.preprocess.mean) == ("direct", [0.3053])
    result = run_cli(run / "spec.yaml", "-o", tmp_path / "digits.onnx")
    assert result.code == 0, result
    contract = read_contract(tmp_path / "digits.onnx")
    assert contract == resolve_contract(recorded)
    assert contract.colour == "grey" and contract.labels[3] == "3"


def test_generated_torch_source_carries_the_contract_as_safe_constants(tmp_path, run_cli):
    import ast

    names = ["plain", "quote ' and \\\" here", "'); import os #"]
    spec = tmp_path / "named.yaml"
    spec.write_text(BASE + "preprocess:\n  resize: direct\n  labels: "
                    + "[" + ", ".join(json_string(n) for n in names) + "]\n")
    result = run_cli(spec, "--backend", "torch", "-o", tmp_path / "named.py")
    assert result.code == 0, result
    source = (tmp_path / "named.py").read_text()
    constants = {node.targets[0].id: ast.literal_eval(node.value)
                 for node in ast.parse(source).body
                 if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                 and node.targets[0].id in ("CLASS_NAMES", "MEAN", "RESIZE", "COLOUR")}
    assert constants == {"CLASS_NAMES": tuple(names), "MEAN": dataset_types()["imagenet"].mean,
                         "RESIZE": "direct", "COLOUR": "rgb"}
    assert "import os" not in source.replace("'); import os #", "")


def json_string(text: str) -> str:
    import json

    return json.dumps(text)


def test_serve_says_once_when_a_model_records_no_contract(tmp_path, caplog):
    import logging

    from test_serve_helpers import write_tiny_onnx

    from resnext_compiler.runtimes.serve.config import ServeConfig
    from resnext_compiler.runtimes.serve.server import load_models

    path = write_tiny_onnx(tmp_path / "bare.onnx")
    with caplog.at_level(logging.INFO, logger="resnext_compiler.serve"):
        (model,), labels = load_models(path, ServeConfig(device="cpu"))
    warnings = [r for r in caplog.records if "records no input contract" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert model.contract == default_contract(3, 32, 32) and labels == {}
