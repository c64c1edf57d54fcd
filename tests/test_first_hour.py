"""What a newcomer meets in the first hour: defaults that adapt, problems found up front, files
that land where they belong and do not overwrite each other, and one error format."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SPECS, TINY_DIGITS_MODEL, tiny_digits_spec
from tiny_data import write_folder

from resnext_compiler.errors import Diagnostic, Location, SpecError, UserError, error_text
from resnext_compiler.runtimes.train.config import TrainOverrides, resolve_config
from resnext_compiler.spec import SCHEMA_COMMENT, parse_spec

WARMUP_SPEC = tiny_digits_spec("{dataset: digits, epochs: 10, batch_size: 32, lr: 0.05, "
                               "warmup_epochs: 3}")


@pytest.mark.parametrize(("epochs", "warmup"), [(1, 0), (2, 1), (3, 2), (4, 3), (10, 3)])
def test_the_specs_warmup_shrinks_to_fit_a_shorter_run(epochs, warmup):
    config = resolve_config(parse_spec(WARMUP_SPEC), TrainOverrides(epochs=epochs), Path("r"))
    assert config.warmup_epochs == warmup


def test_an_explicit_warmup_that_does_not_fit_is_still_an_error():
    with pytest.raises(UserError, match="--warmup-epochs must be between 0 and epochs - 1"):
        resolve_config(parse_spec(WARMUP_SPEC), TrainOverrides(epochs=1, warmup_epochs=1),
                       Path("r"))


def test_train_epochs_1_with_the_default_spec_runs(run_cli, tmp_path):
    result = run_cli("train", "--epochs", "1", "--run-dir", tmp_path / "run")
    assert result.code == 0, result.err
    assert "after 1 epoch(s)" in result.out


def _folder_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "folder.yaml"
    spec.write_text(TINY_DIGITS_MODEL.replace("channels: 1", "channels: 3")
                    .replace("num_classes: 10", "num_classes: 2")
                    + "train: {dataset: imagefolder, epochs: 1, batch_size: 4, lr: 0.05}\n")
    return spec


def test_a_damaged_image_is_found_before_the_run_directory_exists(run_cli, tmp_path):
    write_folder(tmp_path / "data", per_class=4)
    (tmp_path / "data" / "val" / "dog" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "data" / "train" / "cat" / "1.png").write_bytes(b"not an image")
    result = run_cli("train", _folder_spec(tmp_path), "--data", tmp_path / "data",
                     "--run-dir", tmp_path / "run")
    assert result.code == 2
    first = result.err.splitlines()[0]
    assert first == ("error: 2 of 16 image file(s) cannot be read (found by the data-set scan "
                     "before training; remove or replace them, or skip the scan with "
                     "--no-scan-data):")
    assert f"{tmp_path / 'data' / 'train' / 'cat' / '1.png'}: cannot identify" in result.err
    assert str(tmp_path / "data" / "val" / "dog" / "2.png") in result.err
    assert not (tmp_path / "run").exists()


def test_the_scan_can_be_skipped_and_a_clean_folder_says_it_was_scanned(run_cli, tmp_path):
    write_folder(tmp_path / "data", per_class=4)
    spec = _folder_spec(tmp_path)
    result = run_cli("train", spec, "--data", tmp_path / "data", "--run-dir", tmp_path / "a",
                     "--workers", "0")
    assert result.code == 0, result.err
    assert "; all 16 image files readable (scan " in result.out
    (tmp_path / "data" / "train" / "cat" / "1.png").write_bytes(b"not an image")
    result = run_cli("train", spec, "--data", tmp_path / "data", "--run-dir", tmp_path / "b",
                     "--workers", "0", "--no-scan-data")
    assert result.code == 2  # found only when training reaches the file
    assert "cannot read image" in result.err and (tmp_path / "b" / "spec.yaml").exists()


def test_evaluate_on_a_folder_counts_only_the_validation_images(run_cli, tmp_path):
    write_folder(tmp_path / "data", per_class=4)
    spec = _folder_spec(tmp_path)
    assert run_cli("train", spec, "--data", tmp_path / "data", "--run-dir", tmp_path / "run",
                   "--workers", "0").code == 0
    result = run_cli("evaluate", spec, "--weights", tmp_path / "run" / "model.safetensors",
                     "--data", tmp_path / "data", "--workers", "0")
    assert result.code == 0, result.err
    assert f"imagefolder {tmp_path / 'data'}: 8 val images, 2 classes" in result.out
    assert "train" not in result.out


def test_compiling_another_form_does_not_overwrite_the_first(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_DIGITS_MODEL)
    assert run_cli(spec).out == "wrote tiny_digits.onnx\n"
    assert run_cli(spec, "--form", "A").out == "wrote tiny_digits_formA.onnx\n"
    assert run_cli(spec, "--form", "A", "-o", "x.onnx").out == "wrote x.onnx\n"


def test_specs_the_tool_writes_start_with_the_schema_header(run_cli, tmp_path):
    out = tmp_path / "r50_8x14d.yaml"
    assert run_cli("design", "--template", SPECS / "resnet50.yaml", "--cardinality", "8",
                   "-o", out).code == 0
    assert out.read_text().startswith(SCHEMA_COMMENT + "\n")
    assert parse_spec(out.read_text()).to_yaml().startswith(SCHEMA_COMMENT + "\n")
    assert (SPECS / "resnet50.yaml").read_text().startswith(SCHEMA_COMMENT + "\n")


def test_every_error_has_one_format(run_cli, tmp_path):
    assert error_text(UserError("no such thing")) == "error: no such thing"
    located = SpecError([Diagnostic("must be >= 1", "stages[0].depth", Location("a.yaml", 3, 5)),
                         Diagnostic("spec file not found: b.yaml")])
    assert error_text(located) == ("a.yaml:3:5: stages[0].depth: must be >= 1\n"
                                   "error: spec file not found: b.yaml")
    for args in (["inspect", tmp_path / "x.yaml"], [tmp_path / "x.yaml"],
                 ["check", tmp_path / "x.yaml"]):
        result = run_cli(*args)
        assert result.code == 2
        assert result.err.splitlines()[0] == f"error: spec file not found: {tmp_path / 'x.yaml'}"


def test_inspect_labels_binary_megabytes(run_cli):
    result = run_cli("inspect", SPECS / "resnext101_64x4d.yaml")
    assert "parameters 318.4 MiB fp32" in result.out and " MB" not in result.out


def test_nan_advice_after_a_mistyped_rate_is_the_recipes_rate(run_cli, tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(tiny_digits_spec("{dataset: digits, epochs: 1, batch_size: 32, lr: 0.05}"))
    result = run_cli("train", spec, "--lr", "1e12", "--run-dir", tmp_path / "run")
    assert result.code == 1
    assert "Start again with a lower --lr (e.g. 0.05)" in result.err


def test_a_bad_option_is_reported_like_every_other_error(run_cli):
    result = run_cli("train", "--bogus")
    assert result.code == 2
    assert result.err.startswith("error: No such option: --bogus")
    assert result.err.rstrip().endswith("(see resnext-compile train --help)")
    assert run_cli("inspect", "--help").code == 0
    assert run_cli("--version").out == "resnext-compile 0.1.0\n"
