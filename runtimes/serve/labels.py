"""Class labels for `--labels FILE`: one label per line, line i naming class i."""

from __future__ import annotations

from pathlib import Path

from resnext_compiler.errors import UserError


def load_labels(path: Path, num_classes: int) -> list[str]:
    """The labels in `path`; blank lines at the end are ignored and the count must match."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--labels {path}: cannot read it ({exc})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) != num_classes:
        raise UserError(f"--labels {path}: {len(lines)} labels for a model with {num_classes} "
                        "classes")
    return [line.strip() for line in lines]
