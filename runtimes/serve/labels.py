"""Class labels for `--labels FILE` or a Triton label_filename: line i names class i."""

from __future__ import annotations

from pathlib import Path

from resnext_compiler.errors import UserError
from resnext_compiler.input_contract import check_label_count, parse_labels


def load_labels(path: Path, num_classes: int) -> list[str]:
    """The labels in `path`; blank lines at the end are ignored and the count must match."""
    try:
        names = parse_labels(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"labels {path}: cannot read it ({exc})") from None
    check_label_count(names, num_classes, f"labels {path}")
    return list(names)
