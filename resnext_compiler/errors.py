"""Errors as values with a location, until the CLI prints them.

The library layer never exits; the CLI maps `UserError` to exit code 2 and any other
`ResnextError` to exit code 1 (docs/design.md, "Errors").
"""

from __future__ import annotations

from dataclasses import dataclass


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
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(d.format() for d in self.diagnostics))


def format_field_path(path: tuple[str | int, ...]) -> str:
    """`('stages', 1, 'depth')` -> `stages[1].depth`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
