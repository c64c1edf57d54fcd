"""Errors as values with a location, until the CLI prints them.

The library layer never exits; the CLI maps `UserError` to exit code 2 and any other
`ResnextError` to exit code 1 (docs/design.md, "Errors").
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

# C0 and C1 control characters (ESC starts terminal escape sequences), DEL, and the Unicode
# bidirectional overrides that reorder what a terminal shows
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_UNPRINTABLE_LINES = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def sanitise(text: str, keep_newlines: bool = False) -> str:
    """`text` safe to print on a terminal: control characters become `\\xNN` / `\\uNNNN`."""
    pattern = _UNPRINTABLE if keep_newlines else _UNPRINTABLE_LINES
    if not keep_newlines:
        text = text.replace("\n", "\\n")
    return pattern.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def shown(value: object) -> str:
    """A path or name from a file as a message shows it, on one line: a newline or escape
    sequence in it cannot start a forged line or reach the terminal."""
    return sanitise(str(value))


class EscapeLogArguments(logging.Filter):
    """Escapes every string argument of a log record (`sanitise`, newlines included): the
    names a log line carries come from files and models, the format strings are ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_escaped(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _escaped(value) for key, value in record.args.items()}
        return True


def _escaped(value: object) -> object:
    return sanitise(str(value)) if isinstance(value, (str, os.PathLike)) else value


def escape_log_arguments(logger: logging.Logger | None = None) -> None:
    """Install `EscapeLogArguments` on every handler of `logger` (default: the root logger)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, EscapeLogArguments) for f in handler.filters):
            handler.addFilter(EscapeLogArguments())


@dataclass(frozen=True)
class Location:
    """A 1-based position in a spec file."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in a spec: what, where in the data model, where in the file."""

    message: str
    field: str = ""
    location: Location | None = None

    def format(self) -> str:
        parts = []
        if self.location is not None:
            parts.append(str(self.location))
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)


class ResnextError(Exception):
    """A failure the tool reports without a traceback (exit code 1)."""


class UserError(ResnextError):
    """Something the user asked for cannot be done as asked (exit code 2)."""


class SpecError(UserError):
    """One or more located problems in a spec file."""

    def __init__(self, diagnostics: list[Diagnostic]):
        # one problem at one place is said once, even when several stages inherit it
        seen: set[str] = set()
        self.diagnostics = []
        for diagnostic in diagnostics:
            key = f"{diagnostic.location}|{diagnostic.format()}"
            if key not in seen:
                seen.add(key)
                self.diagnostics.append(diagnostic)
        super().__init__("\n".join(d.format() for d in self.diagnostics))


def error_text(exc: BaseException) -> str:
    """How every error reaches the user: located spec problems as `FILE:LINE:COL: field:
    message` (one per line), everything else as `error: message`."""
    if isinstance(exc, SpecError):
        text = "\n".join(d.format() if d.location is not None else f"error: {d.format()}"
                         for d in exc.diagnostics)
    else:
        text = f"error: {exc}"
    return sanitise(text, keep_newlines=True)


def format_field_path(path: tuple[str | int, ...]) -> str:
    """`('stages', 1, 'depth')` -> `stages[1].depth`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_field_path(text: str) -> tuple[str | int, ...]:
    """`stages[1].depth` -> `('stages', 1, 'depth')`; the inverse of `format_field_path`."""
    out: list[str | int] = []
    for part in text.replace("]", "").split("."):
        name, *indices = part.split("[")
        if name:
            out.append(name)
        out.extend(int(i) for i in indices)
    return tuple(out)
