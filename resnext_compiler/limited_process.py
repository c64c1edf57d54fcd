"""Work that may expand without bound, run where it cannot take this process down.

A fresh Python process (`python -m MODULE ARGS`) with an address-space limit (`RLIMIT_AS`)
and a time limit: an allocation over the limit fails inside the child, never here. Used for
ONNX data propagation (`onnx_cost`) and for warm-up runs whose sizes are known only when the
model runs (`runtimes/serve/warmup.py`).
"""

from __future__ import annotations

import resource
import subprocess
import sys
from dataclasses import dataclass

from resnext_compiler.errors import sanitise


@dataclass(frozen=True)
class ChildOutcome:
    ok: bool
    what: str  # why it failed, in words ("" when ok)


def run_limited(module: str, args: list[str], address_space: int, timeout_s: float
                ) -> ChildOutcome:
    """Run `python -m module args` limited to `address_space` bytes and `timeout_s` seconds."""

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    try:
        done = subprocess.run([sys.executable, "-m", module, *args], preexec_fn=limit_memory,
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return ChildOutcome(False, f"did not finish within {timeout_s:g} s")
    if done.returncode == 0:
        return ChildOutcome(True, "")
    if done.returncode < 0:
        return ChildOutcome(False, f"was killed by signal {-done.returncode}")
    lines = done.stderr.strip().splitlines()
    return ChildOutcome(False, f"failed: {sanitise(lines[-1][:300]) if lines else 'no message'}")
