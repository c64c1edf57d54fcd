"""Shared test helpers: run the CLI in-process, find the repo's specs, write tiny specs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SPECS = REPO / "specs"


# A ResNeXt small enough to train in seconds on the embedded 8x8 digits (training tests).
TINY_DIGITS_MODEL = """\
spec_version: 1
name: tiny_digits
input: {channels: 1, height: 8, width: 8}
stem: cifar
block: {type: bottleneck, cardinality: 2, base_width: 16}
stages: [{depth: 1, width: 8}, {depth: 1, width: 16, stride: 2}]
head: {num_classes: 10}
"""


def tiny_digits_spec(train: str) -> str:
    """TINY_DIGITS_MODEL with a `train:` section given as YAML flow text."""
    return f"{TINY_DIGITS_MODEL}train: {train}\n"


def random_ir_weights(graph, seed: int = 0, std: float = 1.0, dtype=None) -> dict:
    """Random tensors for every IR parameter and buffer, keyed by IR name, with BN variances in
    [0.5, 2) so normalisation is not the identity. `dtype` None keeps numpy's float64."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for param in graph.params():
        if param.dtype == "int64":
            out[param.name] = np.array(7, np.int64)
            continue
        if param.name.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, param.shape)
        else:
            value = rng.normal(0.0, std, param.shape)
        out[param.name] = value if dtype is None else value.astype(dtype)
    return out


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out[-500:]!r}, err={self.err[-500:]!r})"


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    """Call `resnext-compile` in-process: `run_cli("inspect", path)` -> CliResult."""
    from resnext_compiler.cli import main

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def write_spec(tmp_path: Path):
    """Write YAML text (dedented) to tmp_path/NAME and return the path."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return write
