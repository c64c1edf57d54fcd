"""Third-party vocabulary: a package that registers a block type and a stem through entry
points is used by the compiler with no change to the project's files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

EXE = str(Path(sys.executable).parent / "resnext-compile")

# A block type the project does not have: a basic block whose two convs are k x k (an option
# the block declares), and a stem of one 5x5 conv. Both are built from the project's parts.
PLUGIN = '''\
"""resnext-compile plugin: a wide-kernel basic block and a 5x5 stem."""

from resnext_compiler.blocks import BlockOption, BlockType
from resnext_compiler.blocks.residual import lower_residual
from resnext_compiler.ir import INPUT
from resnext_compiler.ops import BatchNorm, Conv, ReLU
from resnext_compiler.stems import StemType

KERNEL = BlockOption(int, 5, "Kernel size of both convs (odd).", {"ge": 3, "le": 7})


def _branch(b, x, block):
    k = block.option("kernel_size")
    p, w = block.prefix, block.path_width
    y = b.add(f"{p}.conv1", Conv(block.in_channels, w, k, block.stride, k // 2), x,
              origin=block.stride_origin)
    y = b.add(f"{p}.bn1", BatchNorm(w), y)
    y = b.add(f"{p}.relu1", ReLU(), y)
    return b.add(f"{p}.conv2", Conv(w, block.out_channels, k, 1, k // 2), y)


def _check(stage):
    if stage.options["kernel_size"] % 2 == 0:
        return [("kernel_size", "the wide-kernel block needs an odd kernel size")]
    return []


BLOCK_TYPE = BlockType(
    name="wide_kernel",
    description="wide_kernel (a basic block with k x k convs; a plugin)",
    lower=lambda b, x, ctx: lower_residual(b, x, ctx, _branch, "bn2", "relu2"),
    summary=lambda block: f"wide_kernel {block.option('kernel_size')}x{block.option('kernel_size')}"
    f" w={block.path_width}",
    expansion=1,
    layers=2,
    options={"kernel_size": KERNEL},
    check=_check,
)


def _stem(b, in_channels):
    x = b.add("conv1", Conv(in_channels, 16, 5, 1, 2), INPUT)
    x = b.add("bn1", BatchNorm(16), x)
    return b.add("relu", ReLU(), x), 16


STEM_TYPE = StemType("five", "one 5x5 conv, 16 channels (a plugin)", _stem)
'''

ENTRY_POINTS = """\
[resnext_compiler.blocks]
wide_kernel = wide_kernel_plugin:BLOCK_TYPE

[resnext_compiler.stems]
five = wide_kernel_plugin:STEM_TYPE
"""

SPEC = """\
name: wide
input: {channels: 3, height: 16, width: 16}
stem: five
block: {type: wide_kernel, kernel_size: 3}
stages: [{depth: 1, width: 16}, {depth: 1, width: 32, kernel_size: 5}]
head: {num_classes: 4}
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """A folder on PYTHONPATH holding the plugin module and its dist-info (what `pip install`
    of the plugin would leave in site-packages)."""
    site = tmp_path_factory.mktemp("site")
    (site / "wide_kernel_plugin.py").write_text(PLUGIN)
    info = site / "wide_kernel_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wide-kernel-plugin\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return site


def _run(site: Path, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def test_a_plugin_block_and_stem_compile_to_onnx(plugin_site, tmp_path):
    import onnxruntime as ort

    spec = tmp_path / "wide.yaml"
    spec.write_text(SPEC)
    result = _run(plugin_site, spec, "--backend", "onnx", "-o", tmp_path / "wide.onnx",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    session = ort.InferenceSession(str(tmp_path / "wide.onnx"),
                                   providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    (logits,) = session.run(["logits"], {"input": x})
    assert logits.shape == (2, 4) and np.isfinite(logits).all()
    kernels = {i.name: list(i.dims) for i in __import__("onnx").load(
        str(tmp_path / "wide.onnx")).graph.initializer}
    assert kernels["layer1.0.conv1.weight"][2:] == [3, 3]  # the block's option...
    assert kernels["layer2.0.conv2.weight"][2:] == [5, 5]  # ...overridden per stage
    assert kernels["conv1.weight"] == [16, 3, 5, 5]  # the plugin stem


def test_inspect_schema_and_checks_read_the_plugin(plugin_site, tmp_path):
    spec = tmp_path / "wide.yaml"
    spec.write_text(SPEC)
    inspect = _run(plugin_site, "inspect", spec, cwd=tmp_path)
    assert inspect.returncode == 0, inspect.stderr
    assert "wide_kernel" in inspect.stdout
    schema = json.loads(_run(plugin_site, "schema", cwd=tmp_path).stdout)
    block = schema["$defs"]["BlockSpec"]["properties"]
    assert "wide_kernel" in block["type"]["enum"] and "kernel_size" in block
    assert "five" in schema["properties"]["stem"]["enum"]
    spec.write_text(SPEC.replace("kernel_size: 3}", "kernel_size: 4}"))
    bad = _run(plugin_site, "check", spec, cwd=tmp_path)
    assert bad.returncode == 2
    assert f"{spec}:4:" in bad.stderr and "needs an odd kernel size" in bad.stderr


def test_without_the_plugin_the_spec_is_a_located_error(tmp_path):
    spec = tmp_path / "wide.yaml"
    spec.write_text(SPEC)
    result = subprocess.run([EXE, "check", str(spec)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{spec}:3:" in result.stderr and "stem" in result.stderr


def test_a_broken_plugin_warns_and_the_rest_works(tmp_path):
    site = tmp_path / "site"
    info = site / "broken-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[resnext_compiler.blocks]\nbroken = no_such:THING\n")
    spec = tmp_path / "ok.yaml"
    spec.write_text(textwrap.dedent("""\
        name: ok
        input: {channels: 3, height: 32, width: 32}
        stem: cifar
        stages: [1]
    """))
    result = _run(site, "check", spec, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no_such:THING" in result.stderr and "failed to load" in result.stderr
