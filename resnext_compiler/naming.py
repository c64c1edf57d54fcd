"""Turning free spec text into safe identifiers and single-line comments."""

from __future__ import annotations

import keyword
import re

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def python_identifier(text: str, fallback: str = "model") -> str:
    """`resnext50-32x4d` -> `resnext50_32x4d`; never a keyword, never empty."""
    ident = re.sub(r"[^0-9A-Za-z_]", "_", text)
    ident = re.sub(r"_+", "_", ident).strip("_") or fallback
    if ident[0].isdigit():
        ident = f"{fallback}_{ident}"
    if keyword.iskeyword(ident) or keyword.issoftkeyword(ident):
        ident += "_"
    assert _IDENT.match(ident)
    return ident


def class_name(text: str) -> str:
    """A class name from a spec name: `resnext50_32x4d` -> `Resnext50_32x4d`."""
    ident = python_identifier(text, fallback="Model")
    return ident[0].upper() + ident[1:]


def file_stem(text: str) -> str:
    """A portable file or directory name (Triton model names, default outputs)."""
    stem = re.sub(r"[^0-9A-Za-z_.-]", "_", text).strip("._-")
    return stem[:100] or "model"


def one_line(text: str, limit: int = 200) -> str:
    """Printable, single-line text for comments: control characters and newlines become spaces."""
    flat = "".join(ch if ch.isprintable() else " " for ch in text)
    flat = re.sub(r"\s+", " ", flat).strip()
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
