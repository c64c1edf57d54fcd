"""The `resnext-compile` CLI: default compile command, inspect, check, schema, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import SPECS

EXE = str(Path(sys.executable).parent / "resnext-compile")


def test_inspect_json_has_the_documented_keys(run_cli):
    result = run_cli("inspect", SPECS / "resnext50_32x4d.yaml", "--json")
    assert result.code == 0, result
    data = json.loads(result.out)
    assert data["name"] == "resnext50_32x4d"
    assert data["params"] == 25_028_904
    assert abs(data["macs"] / 1e9 - 4.23) < 0.01
    assert data["input_shape"] == [1, 3, 224, 224] and data["output_shape"] == [1, 1000]
    names = [s["name"] for s in data["stages"]]
    assert names == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    layer3 = data["stages"][3]
    assert (layer3["blocks"], layer3["output_shape"]) == (6, [1, 1024, 14, 14])
    assert layer3["cardinality"] == 32 and layer3["group_width"] == 512
    for stage in data["stages"]:
        assert {"name", "blocks", "output_shape", "params", "macs"} <= set(stage)
    assert sum(s["params"] for s in data["stages"]) == data["params"]


def test_inspect_table_shows_stages_and_totals(run_cli):
    result = run_cli("inspect", SPECS / "resnext101_64x4d.yaml")
    assert result.code == 0
    assert "83,455,272 parameters, 15.46 GMACs" in result.out
    assert "64 x 4d" in result.out and "2048x7x7" in result.out
    assert result.out.splitlines()[-1].startswith("total")


def test_editing_a_copied_spec_changes_what_inspect_reports(run_cli, tmp_path):
    text = (SPECS / "resnext50_32x4d.yaml").read_text()
    edited = text.replace("cardinality: 32, base_width: 4", "cardinality: 8, base_width: 14")
    assert edited != text
    path = tmp_path / "resnext50_8x14d.yaml"
    path.write_text(edited.replace("name: resnext50_32x4d", "name: resnext50_8x14d"))
    data = json.loads(run_cli("inspect", path, "--json").out)
    assert data["name"] == "resnext50_8x14d"
    assert data["stages"][1]["cardinality"] == 8 and data["stages"][1]["group_width"] == 112
    # the seed's 1x-complexity table: 8x14d keeps ResNeXt-50's complexity (~25M params)
    assert 24_500_000 < data["params"] < 26_000_000 and data["params"] != 25_028_904
    table = run_cli("inspect", path).out
    assert "8 x 14d" in table and f"{data['params']:,}" in table


def test_compile_is_the_default_command(run_cli, tmp_path):
    out = tmp_path / "model.py"
    result = run_cli(SPECS / "resnext29_8x64d.yaml", "--backend", "torch", "-o", out)
    assert result.code == 0, result
    assert out.is_file() and f"wrote {out}" in result.out
    explicit = run_cli(
        "compile", SPECS / "resnext29_8x64d.yaml", "-b", "torch", "-o", tmp_path / "again.py"
    )
    assert explicit.code == 0
    assert (tmp_path / "again.py").read_text() == out.read_text()


def test_compile_into_a_directory_uses_the_spec_name(run_cli, tmp_path):
    result = run_cli(SPECS / "resnet50.yaml", "--backend", "torch", "-o", tmp_path)
    assert result.code == 0 and (tmp_path / "resnet50.py").is_file()


def test_misspelt_command_gets_a_suggestion(run_cli):
    result = run_cli("inspekt", SPECS / "resnet50.yaml")
    assert result.code == 2 and "did you mean 'inspect'" in result.err


def test_unknown_backend_and_bad_options_are_user_errors(run_cli, tmp_path):
    spec = SPECS / "resnet50.yaml"
    unknown = run_cli(spec, "--backend", "mxnet")
    assert unknown.code == 2 and "unknown backend 'mxnet'" in unknown.err
    assert "caffe, dot, onnx, torch, triton" in unknown.err
    assert run_cli(spec, "--dtype", "int3").code == 2
    assert run_cli(spec, "--batch", "zero").code == 2
    assert run_cli(spec, "--form", "Z").code == 2
    missing = run_cli(spec, "--weights", tmp_path / "none.safetensors")
    assert missing.code == 2 and "weights file not found" in missing.err


def test_schema_is_json_schema_with_descriptions(run_cli):
    schema = json.loads(run_cli("schema").out)
    block = schema["$defs"]["BlockSpec"]["properties"]
    assert "seed's -baseWidth" in block["base_width"]["description"]
    stages = schema["properties"]["stages"]
    assert "anyOf" in json.dumps(stages)  # ints (shorthand) or stage objects


def test_version_and_help(run_cli):
    assert run_cli("--version").out.startswith("resnext-compile ")
    help_text = run_cli("--help").out
    for command in ("compile", "check", "inspect", "schema"):
        assert command in help_text


class _PlainBackend:
    name = "plain"
    description = "a backend known only to the registry"


class _EntryPoint:
    name = "plain"

    def load(self) -> type:
        return _PlainBackend


def test_backend_help_and_int8_refusal_come_from_the_registry(run_cli, monkeypatch):
    from resnext_compiler.backends import registry

    installed = registry.available_backends()
    monkeypatch.setattr(registry, "available_backends",
                        lambda: {**installed, "plain": _EntryPoint()})
    help_text = " ".join(run_cli("compile", "--help").out.split())
    assert "plain (a backend known only to the registry)" in help_text
    assert "triton (Triton Inference Server model repository" in help_text
    refused = run_cli(SPECS / "resnet18.yaml", "--backend", "plain", "--dtype", "int8",
                      "--calibrate", SPECS)
    assert refused.code == 2
    assert "--dtype int8 is for the onnx and triton backends, not 'plain'" in refused.err


def _imported_modules(*args: str) -> set[str]:
    code = (
        "import sys, json\n"
        "from resnext_compiler.cli import main\n"
        f"sys.argv = ['resnext-compile', *{list(args)!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    return set(json.loads(proc.stderr.strip().splitlines()[-1]))


def test_check_and_inspect_do_not_import_torch():
    for args in (
        ("check", str(SPECS / "resnext101_64x4d.yaml")),
        ("inspect", str(SPECS / "resnext101_64x4d.yaml"), "--json"),
    ):
        modules = _imported_modules(*args)
        assert "resnext_compiler.spec" in modules
        assert not {m for m in modules if m == "torch" or m.startswith("torch.")}, args
        assert "onnxruntime" not in modules


def test_console_script_exit_codes_and_no_traceback(tmp_path):
    assert shutil.which(EXE) or Path(EXE).exists()
    ok = subprocess.run(
        [EXE, "check", str(SPECS / "resnet50.yaml")], capture_output=True, text=True
    )
    assert ok.returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: n\nstages: [3, 0]\n")
    failed = subprocess.run([EXE, "inspect", str(bad)], capture_output=True, text=True)
    assert failed.returncode == 2
    assert failed.stderr.startswith(f"{bad}:2:") and "Traceback" not in failed.stderr


def test_unwritable_output_path_is_a_user_error(run_cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_cli(SPECS / "resnet18.yaml", "--backend", "torch", "-o", blocker / "m.py")
    assert result.code == 2, result
    assert result.err.startswith("error: ") and "internal error" not in result.err


def test_compiling_an_onnx_file_says_it_is_a_model_not_a_spec(tmp_path, run_cli):
    """Issue 22, item 9: not 'spec file is larger than the 65536-byte limit'."""
    model = tmp_path / "r50.onnx"
    model.write_bytes(b"\0" * 70000)
    result = run_cli(model)
    assert result.code == 2
    assert result.err.startswith(f"error: {model} is a compiled model, not a spec: "
                                 f"`resnext-compile inspect {model}` shows it")


def test_inspect_of_a_compiled_model_shows_parameters_opset_and_dtype(tmp_path, run_cli):
    """Issue 22, item 9: not only the contract."""
    import json

    spec = SPECS / "resnet18.yaml"
    assert run_cli(spec, "--dtype", "fp16", "--opset", "17", "-o", tmp_path / "h.onnx").code == 0
    text = run_cli("inspect", tmp_path / "h.onnx").out.splitlines()[0]
    # 11,689,512 in the spec; folding BatchNorm into the convs stores 4,800 numbers fewer
    assert text == (f"{tmp_path / 'h.onnx'}: 11,684,712 stored parameters (BatchNorm folded "
                    "where it was), opset 17, dtype fp16, input float16 ['N', 3, 224, 224] -> "
                    "output ['N', 1000]")
    data = json.loads(run_cli("inspect", tmp_path / "h.onnx", "--json").out)
    assert (data["params"], data["opset"], data["dtype"]) == (11684712, 17, "fp16")
