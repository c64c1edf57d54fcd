"""Packaging: the three top-level folders install as one `resnext_compiler` package."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import REPO

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
