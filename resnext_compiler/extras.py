"""Which extra brings which optional module, and the message when one is missing.

The base install plus `[cpu]` or `[gpu]` is the deploy install: it compiles to every backend
that does not run torch, inspects, checks, designs, serves and evaluates ONNX files. The
`train` extra adds torch (training, the in-memory torch module, PyTorch checkpoints, evaluate
SPEC --weights), matplotlib (`plot`) and submitit (`sweep`). A command that needs a module its
install lacks is a user error (exit 2) that names the extra, never an ImportError traceback.
onnxruntime has its own check (`onnxruntime_install`), since there the problem can also be two
builds at once.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from resnext_compiler.errors import UserError

TRAIN_EXTRA = "train"
# module -> (extra, what the module is for in this project)
EXTRA_OF_MODULE: dict[str, str] = {
    "torch": TRAIN_EXTRA, "matplotlib": TRAIN_EXTRA, "submitit": TRAIN_EXTRA,
}
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


def install_hint(extra: str) -> str:
    hint = f"pip install 'resnext-compile[{extra}]'"
    if extra == TRAIN_EXTRA:  # torch from PyPI brings CUDA libraries, even on CPU machines
        hint += (
            f" (CPU-only torch, much smaller: pip install torch --index-url "
            f"{CPU_TORCH_INDEX} first)"
        )
    return hint


def missing_module_error(module: str, needed_by: str) -> UserError:
    """The exit-2 message for a missing optional module."""
    extra = EXTRA_OF_MODULE[module.split(".")[0]]
    return UserError(
        f"{needed_by} needs {module.split('.')[0]}, which this install lacks (the "
        f"deploy install [cpu]/[gpu] has no torch): {install_hint(extra)}"
    )


def require(module: str, needed_by: str) -> ModuleType:
    """Import `module` (torch, matplotlib) or raise the user error naming its extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if (exc.name or module).split(".")[0] != module.split(".")[0]:
            raise  # the module is there but one of its own imports failed: a real error
        raise missing_module_error(module, needed_by) from None


def from_import_error(exc: ImportError) -> UserError | None:
    """The extra's message for an ImportError of an optional module (None for any other)."""
    name = (exc.name or "").split(".")[0]
    if name not in EXTRA_OF_MODULE:
        return None
    return missing_module_error(name, "this command")
