"""Class labels for `--labels FILE` or a Triton label_filename: line i names class i."""

from __future__ import annotations

from pathlib import Path

from resnext_compiler.errors import sanitise
from resnext_compiler.input_contract import check_label_count, parse_labels
from resnext_compiler.named_files import LABELS, read_named_text


def load_labels(path: Path, num_classes: int, root: Path | None = None,
                where: str = "--labels") -> list[str]:
    """The labels in `path` (under `root`, a Triton model's folder; None for `--labels`, a file
    the user named); blank lines at the end are ignored and the count must match."""
    names = parse_labels(read_named_text(path, LABELS, root, where))
    check_label_count(names, num_classes, f"labels {sanitise(str(path))}")
    return list(names)
