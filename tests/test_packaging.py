"""Packaging: the three top-level folders install as one `resnext_compiler` package."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import REPO, tiny_digits_spec

MAPPING = {
    "resnext_compiler": "resnext_compiler",
    "backends": "resnext_compiler.backends",
    "runtimes": "resnext_compiler.runtimes",
}


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for folder, package in MAPPING.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([package, *rel.parts]) if rel.parts else package)
    assert found == listed


def test_no_generic_top_level_modules_are_importable(tmp_path):
    code = (
        "import importlib.util, json; "
        "print(json.dumps([importlib.util.find_spec(n) is not None "
        "for n in ('backends', 'runtimes', 'resnext_compiler.backends', "
        "'resnext_compiler.runtimes')]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[false, false, true, true]"


def test_templates_and_specs_ship_as_package_data():
    from resnext_compiler import backends

    assert (Path(backends.__file__).parent / "templates" / "torch_module.py.j2").is_file()


def _imported_modules(path: Path) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_imports_point_from_commands_to_runtimes_to_backends_to_the_core():
    """cli/commands -> runtimes -> backends -> compiler core, never upward (docs/design.md)."""
    layers = {
        "core": ([p for p in (REPO / "resnext_compiler").rglob("*.py")
                  if p.name != "cli.py" and "commands" not in p.parts],
                 ("resnext_compiler.backends", "resnext_compiler.runtimes",
                  "resnext_compiler.commands", "resnext_compiler.cli")),
        "backends": (list((REPO / "backends").rglob("*.py")),
                     ("resnext_compiler.runtimes", "resnext_compiler.commands",
                      "resnext_compiler.cli")),
        "runtimes": (list((REPO / "runtimes").rglob("*.py")),
                     ("resnext_compiler.commands", "resnext_compiler.cli")),
    }
    upward = []
    for layer, (files, forbidden) in layers.items():
        assert files, layer
        for path in files:
            upward += [f"{path.relative_to(REPO)} imports {name}"
                       for name in _imported_modules(path) if name.startswith(forbidden)]
    assert upward == []


def test_nothing_refers_to_design_documents_outside_the_repository():
    mentions = [str(p.relative_to(REPO)) for folder in ("resnext_compiler", "backends", "runtimes",
                                                        "docs", "benchmarks", "tests")
                for p in (REPO / folder).rglob("*") if p.suffix in (".py", ".md", ".j2")
                and "DESIGN" + ".md" in p.read_text(errors="replace")]
    mentions += ["README.md"] * ("DESIGN" + ".md" in (REPO / "README.md").read_text())
    assert mentions == []


def test_onnxruntime_builds_are_extras_never_a_base_dependency():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = [requirement.split(">")[0].split("[")[0].strip()
             for requirement in project["dependencies"]]
    assert "onnxruntime" not in names and "onnxruntime-gpu" not in names
    extras = project["optional-dependencies"]
    assert extras["cpu"] == ["onnxruntime>=1.18"]
    assert extras["gpu"] == ["onnxruntime-gpu>=1.18"]
    # README's dev install stays CPU and has everything: training (torch) and gRPC
    assert "resnext-compile[cpu,grpc,train]" in extras["dev"]


def test_compiling_to_onnx_needs_no_onnxruntime(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(tiny_digits_spec("{dataset: digits}"))
    # a meta-path finder that refuses onnxruntime, as in an install without the cpu/gpu extra
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'onnxruntime':\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from resnext_compiler.cli import main\n"
        f"sys.argv = ['resnext-compile', {str(spec)!r}, "
        f"'--backend', 'onnx', '-o', {str(tmp_path / 'm.onnx')!r}]\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.onnx").stat().st_size > 0
