"""Checkpoints: the full training state (`checkpoints/last.pt`) and the weights alone
(`model.safetensors`), both written atomically (temp file + fsync + rename).

`last.pt` holds only tensors and plain containers, so `torch.load(weights_only=True)` reads
it: {"format", "model", "optimizer", "scaler", "rng", "position": {"epoch", "step"},
"partial" (running sums of an unfinished epoch), "history" (metrics rows), "spec_hash"}.
Weight keys are the IR's state-dict names (torchvision's), never prefixed with `module.`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from resnext_compiler.artifacts import atomic_writer, write_bytes_atomic
from resnext_compiler.errors import UserError, shown
from resnext_compiler.named_files import CHECKPOINT as CHECKPOINT_FILE
from resnext_compiler.named_files import open_named
from resnext_compiler.weights import strip_wrapper_prefixes

FORMAT = "resnext-compile-train/1"
CHECKPOINT = Path("checkpoints") / "last.pt"
WEIGHTS = Path("model.safetensors")


def portable_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies with wrapper prefixes (`module.`, `_orig_mod.`) removed."""
    return {strip_wrapper_prefixes(key): value.detach().to("cpu", copy=True).contiguous()
            for key, value in state_dict.items()}


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    with atomic_writer(path, "wb") as handle:
        torch.save({"format": FORMAT, **state}, handle)


def load_training_state(path: Path) -> dict[str, Any]:
    """The state in a run's `checkpoints/last.pt` (kept inside the run directory)."""
    if not path.is_file():
        raise UserError(f"no checkpoint to resume from: expected {shown(path)}")
    try:
        with open_named(path, CHECKPOINT_FILE, path.parent.parent) as handle:
            state = torch.load(handle, map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as exc:  # torch raises many types for a damaged file
        raise UserError(f"{shown(path)}: not a readable training checkpoint "
                        f"({shown(exc)[:300]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{shown(path)}: not a resnext-compile training checkpoint "
                        f"(expected format {FORMAT!r})")
    return state


def save_weights(path: Path, state_dict: Mapping[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    write_bytes_atomic(path, save(portable_state(state_dict), metadata=metadata))
