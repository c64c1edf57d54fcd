"""Exactly one onnxruntime build: none is a clear user error, two are a warning with the fix,
and the `gpu` extra really gives onnxruntime the CUDA execution provider."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest
from conftest import REPO, tiny_digits_spec
from test_serve_helpers import write_tiny_onnx

from resnext_compiler import onnxruntime_install
from resnext_compiler.errors import UserError
from resnext_compiler.onnxruntime_install import (
    conflict_warning,
    import_onnxruntime,
    installed_builds,
)

BLOCK_ONNXRUNTIME = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] == 'onnxruntime':\n"
    "            raise ImportError('No module named ' + repr(name))\n"
    "sys.meta_path.insert(0, Block())\n"
)


def fake_distributions(monkeypatch: pytest.MonkeyPatch, versions: dict[str, str]) -> None:
    def version(name: str) -> str:
        if name in versions:
            return versions[name]
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(onnxruntime_install.metadata, "version", version)
    onnxruntime_install.warn_on_conflict.cache_clear()


def test_two_builds_are_detected_and_the_warning_names_the_fix(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    fake_distributions(monkeypatch, {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"})
    assert installed_builds() == ["onnxruntime 1.32.0", "onnxruntime-gpu 1.31.1"]
    with caplog.at_level(logging.WARNING, logger="resnext_compiler.serve"):
        import_onnxruntime()
        import_onnxruntime()  # warned once per process
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert "both onnxruntime 1.32.0 and onnxruntime-gpu 1.31.1 are installed" in warnings[0]
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu" in (
        warnings[0])
    onnxruntime_install.warn_on_conflict.cache_clear()


def test_one_build_is_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_distributions(monkeypatch, {"onnxruntime-gpu": "1.31.1"})
    assert installed_builds() == ["onnxruntime-gpu 1.31.1"]
    assert conflict_warning(installed_builds()) is None
    onnxruntime_install.warn_on_conflict.cache_clear()


def test_no_onnxruntime_is_a_user_error_naming_the_extras(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    with pytest.raises(UserError) as caught:
        import_onnxruntime()
    assert "resnext-compile[cpu]" in str(caught.value)
    assert "resnext-compile[gpu]" in str(caught.value)


@pytest.mark.parametrize("command", ["serve", "evaluate"])
def test_without_onnxruntime_serve_and_evaluate_exit_2_with_the_install_command(
        tmp_path: Path, command: str) -> None:
    model = write_tiny_onnx(tmp_path / "tiny.onnx")
    extra = ["--port", "0"] if command == "serve" else ["--data", str(tmp_path)]
    code = (BLOCK_ONNXRUNTIME + "from resnext_compiler.cli import main\n"
            f"sys.argv = ['resnext-compile', {command!r}, {str(model)!r}, *{extra!r}]\n"
            "main()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result.stderr
    assert "onnxruntime is not installed" in result.stderr
    assert "pip install 'resnext-compile[cpu]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_int8_compile_without_onnxruntime_names_the_extra(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(tiny_digits_spec("{dataset: digits}"))
    code = (BLOCK_ONNXRUNTIME + "from resnext_compiler.cli import main\n"
            f"sys.argv = ['resnext-compile', {str(spec)!r}, '--backend', 'onnx', '--dtype', "
            f"'int8', '--calibrate', {str(tmp_path)!r}, '-o', {str(tmp_path / 'q.onnx')!r}]\n"
            "main()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result.stderr
    assert "pip install 'resnext-compile[cpu]'" in result.stderr


@pytest.mark.slow
def test_gpu_extra_in_a_fresh_venv_has_the_cuda_provider(tmp_path: Path) -> None:
    """Our package (no dependencies) plus exactly what its `gpu` extra lists, from PyPI.

    onnxruntime-gpu lists the CUDA execution provider without a GPU, so no device is needed.
    """
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)

    def pip(*args: str) -> None:
        result = subprocess.run([str(python), "-m", "pip", "install", "-q", *args],
                                capture_output=True, text=True, env=env, timeout=600)
        if result.returncode != 0 and "NewConnectionError" in result.stderr + result.stdout:
            pytest.skip("PyPI is not reachable")
        assert result.returncode == 0, result.stderr[-3000:]

    pip("--no-deps", str(REPO))
    extra = ("from importlib import metadata; from packaging.requirements import Requirement; "
             "print('\\n'.join(str(r).split(';')[0] for r in map(Requirement, "
             "metadata.requires('resnext-compile')) "
             "if r.marker and r.marker.evaluate({'extra': 'gpu'})))")
    pip("packaging")
    wanted = subprocess.run([str(python), "-c", extra], capture_output=True, text=True,
                            check=True, env=env).stdout.split()
    assert wanted == ["onnxruntime-gpu>=1.18"]
    pip(*wanted)
    check = ("from resnext_compiler.onnxruntime_install import installed_builds\n"
             "from resnext_compiler.runtimes.serve.model import choose_providers\n"
             "import onnxruntime\n"
             "print(installed_builds())\n"
             "print(onnxruntime.get_available_providers())\n"
             "print(choose_providers('cuda'))\n")
    result = subprocess.run([str(python), "-c", check], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    builds, providers, chosen = result.stdout.splitlines()
    assert builds.startswith("['onnxruntime-gpu ") and "'onnxruntime " not in builds
    assert "CUDAExecutionProvider" in providers
    assert chosen == "['CUDAExecutionProvider', 'CPUExecutionProvider']"
