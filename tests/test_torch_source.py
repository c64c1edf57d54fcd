"""Standalone generated PyTorch source: safe, ruff-clean, equal to the in-memory module."""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnext_compiler.backends.torch_module import build_module
from resnext_compiler.pipeline import compile_spec
from resnext_compiler.spec import load_spec

TINY = """
spec_version: 1
name: {name}
description: {description}
input: {{channels: 3, height: 32, width: 32}}
stem: {stem}
block: {{cardinality: 4, base_width: 8, form: {form}, se_ratio: {se}}}
shortcut: {shortcut}
avg_down: {avg_down}
stages: [1, 2]
head: {{num_classes: 7}}
"""


def _write(tmp_path: Path, **fields: str) -> Path:
    values = dict(
        name="tiny",
        description="plain",
        stem="cifar",
        form="C",
        se="0",
        shortcut="B",
        avg_down="false",
    )
    values.update(fields)
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(**values))
    return path


def _import(path: Path):
    spec = importlib.util.spec_from_file_location(f"gen_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compile(run_cli, spec_path: Path, out: Path) -> Path:
    result = run_cli(spec_path, "--backend", "torch", "-o", out)
    assert result.code == 0, result
    return out


def _ruff(path: Path) -> subprocess.CompletedProcess:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    return subprocess.run([ruff, "check", "--isolated", str(path)], capture_output=True, text=True)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"form": "A"},
        {"form": "B", "se": "0.25"},
        {"stem": "deep", "avg_down": "true"},
        {"shortcut": "A"},
        {"shortcut": "C", "stem": "imagenet"},
    ],
    ids=["C", "A", "B-se", "deep-avgdown", "shortcutA", "shortcutC"],
)
def test_generated_module_equals_in_memory_module(fields, tmp_path, run_cli):
    spec_path = _write(tmp_path, **fields)
    out = _compile(run_cli, spec_path, tmp_path / "model.py")
    generated = _import(out).build().eval()
    reference = build_module(compile_spec(load_spec(spec_path))).eval()
    assert list(generated.state_dict()) == list(reference.state_dict())
    generated.load_state_dict(reference.state_dict())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(generated(x), reference(x), atol=1e-6, rtol=0)


def test_generated_module_starts_with_the_in_memory_modules_weights(tmp_path, run_cli):
    spec_path = _write(tmp_path, se="0.25", form="C, zero_init_last_bn: true")
    out = _compile(run_cli, spec_path, tmp_path / "model.py")
    graph = compile_spec(load_spec(spec_path))
    reference = build_module(graph, seed=11).state_dict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        generated = _import(out).build().state_dict()
    assert list(generated) == list(reference)
    assert all(torch.equal(generated[k], reference[k]) for k in reference)
    assert torch.all(reference["layer1.0.bn3.weight"] == 0)  # the zero-init rule reached both


def test_generated_source_imports_only_torch_and_defines_class_and_build(tmp_path, run_cli):
    out = _compile(run_cli, _write(tmp_path, name="resnext-tiny_4x8d"), tmp_path / "m.py")
    tree = ast.parse(out.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported == {"torch"}
    names = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    assert {"Resnext_tiny_4x8d", "build"} <= names
    assert _ruff(out).returncode == 0


HOSTILE = [
    '"""; import os; os.system("echo pwned") #',
    "line one\nline two\n  indented\n\tand a tab",
    "{{ jinja }} {% raw %} {# comment #} $x ${y}",
    "quote ' and \" and ''' and \"\"\" and \\ backslash",
    "unicode: Résumé 日本語 \u2028 separator \x0b vt",
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_spec_text_never_escapes_into_code(text, tmp_path, run_cli):
    import json

    # JSON strings are valid YAML flow scalars, so any text can be put in the spec.
    spec_path = _write(
        tmp_path,
        name=json.dumps('x""" + __import__(\'os\') ' + text[:20]),
        description=json.dumps(text),
    )
    out = _compile(run_cli, spec_path, tmp_path / "evil.py")
    subprocess.run([sys.executable, "-m", "py_compile", str(out)], check=True)
    assert _ruff(out).returncode == 0, _ruff(out).stdout
    module = _import(out)
    assert module.DESCRIPTION == load_spec(spec_path).description
    assert module.SPEC_NAME == load_spec(spec_path).name
    tree = ast.parse(out.read_text())
    calls = {
        n.func.attr if isinstance(n.func, ast.Attribute) else n.func.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, (ast.Attribute, ast.Name))
    }
    assert "system" not in calls and "__import__" not in calls


def test_weights_option_is_refused_for_source_output(tmp_path, run_cli):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    result = run_cli(
        _write(tmp_path), "--backend", "torch", "--weights", weights, "-o", tmp_path / "m.py"
    )
    assert result.code == 2 and "writes source only" in result.err
