"""Which onnxruntime build is installed: exactly one of `onnxruntime` (CPU) and `onnxruntime-gpu`.

Both distributions install the same `onnxruntime` module; with both present, whichever pip
wrote last wins, usually the CPU one, and the CUDA execution provider silently disappears.
`import_onnxruntime()` is the one check before onnxruntime is used (serving, evaluating an ONNX
artifact, int8 calibration): it names the extra to install when there is none and warns, with
the fix, when there are two. It sits in the compiler core so backends and runtimes share it.
"""

from __future__ import annotations

import functools
import logging
from importlib import metadata
from types import ModuleType

from resnext_compiler.errors import UserError

log = logging.getLogger("resnext_compiler")

CPU_DISTRIBUTION = "onnxruntime"
GPU_DISTRIBUTION = "onnxruntime-gpu"
INSTALL_HINT = ("pip install 'resnext-compile[cpu]' (onnxruntime) or 'resnext-compile[gpu]' "
                "(onnxruntime-gpu, for CUDA); install one of the two, not both")


def installed_builds() -> list[str]:
    """The onnxruntime distributions installed in this environment (by package metadata)."""
    found = []
    for name in (CPU_DISTRIBUTION, GPU_DISTRIBUTION):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found


def conflict_warning(builds: list[str]) -> str | None:
    """The warning for two builds side by side (None when there is at most one)."""
    if len(builds) < 2:
        return None
    return (f"both {' and '.join(builds)} are installed; they share the `onnxruntime` module "
            "and the CPU build usually wins, hiding the CUDA execution provider. Keep one: "
            f"pip uninstall -y {CPU_DISTRIBUTION} {GPU_DISTRIBUTION} && pip install "
            f"{GPU_DISTRIBUTION}  (or {CPU_DISTRIBUTION} for CPU only)")


@functools.cache
def warn_on_conflict() -> None:
    """Log the two-builds warning once per process."""
    warning = conflict_warning(installed_builds())
    if warning is not None:
        log.warning(warning)


def import_onnxruntime(needed_by: str = "serve and evaluate MODEL.onnx") -> ModuleType:
    """onnxruntime, or a `UserError` naming the extra to install (exit 2)."""
    warn_on_conflict()
    try:
        import onnxruntime
    except ImportError as exc:
        raise UserError(f"onnxruntime is not installed ({exc}); {needed_by} need it: "
                        f"{INSTALL_HINT}") from None
    return onnxruntime
