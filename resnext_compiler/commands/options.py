"""Options shared by the commands, each declared once, and the checks behind them.

An option that more than one command has (`--max-batch`, `--workers`) is a `Declared`: its
flag, default, range and help in one place; every command that has it calls `.option()`, so
the same option has the same range everywhere. Range checks are typer callbacks, so a bad
value is one line of error naming the option and the allowed range (exit 2) before any
command body runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from resnext_compiler.limits import (
    DEFAULT_MAX_BATCH,
    DEFAULT_WORKERS,
    DEVICES,
    MAX_SERVE_BATCH,
    MAX_WORKERS,
)


@dataclass(frozen=True)
class Declared:
    """One command-line option: flag, default, inclusive range (or the words it accepts)
    and help."""

    flag: str
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def option(self, help: str | None = None) -> Any:  # noqa: A002 - typer's word
        """The typer option (a command may say what the option means to it in `help`)."""
        check = (choice(*self.choices) if self.choices
                 else number_range(self.minimum, self.maximum))
        return typer.Option(self.default, self.flag, help=help or self.help, callback=check)


MAX_BATCH = Declared("--max-batch", DEFAULT_MAX_BATCH, "Most rows per model call.",
                     1, MAX_SERVE_BATCH)
WORKERS = Declared("--workers", DEFAULT_WORKERS, "Data loader workers (image folders).",
                   0, MAX_WORKERS)
def form_option(help: str) -> Any:  # noqa: A002 - typer's word
    """`--form` (compile, import-weights): a block form the bottleneck's registry entry has."""
    return typer.Option(None, "--form", help=help, callback=_check_form)


def _check_form(value: str | None) -> str | None:
    from resnext_compiler.blocks.bottleneck import FORMS  # the blocks' own list, when used

    return choice(*FORMS)(value)


DEVICE = Declared("--device", "auto", " | ".join(DEVICES), choices=DEVICES)
DECLARED = (MAX_BATCH, WORKERS)  # numeric ones (tests/test_options.py checks their ranges)


def number_range(minimum: float | None = None, maximum: float | None = None, *,
                 min_open: bool = False, max_open: bool = False) -> Callable[[Any], Any]:
    """A callback accepting None or a finite number in the range (open ends where asked)."""
    low = "" if minimum is None else f"{'>' if min_open else '>='} {_number(minimum)}"
    high = "" if maximum is None else f"{'<' if max_open else '<='} {_number(maximum)}"
    allowed = " and ".join(part for part in (low, high) if part) or "finite"

    def check(value: Any) -> Any:
        if value is None:
            return value
        if isinstance(value, float) and not math.isfinite(value):
            raise typer.BadParameter(f"must be a finite number ({allowed}), got {value}")
        too_low = minimum is not None and (value <= minimum if min_open else value < minimum)
        too_high = maximum is not None and (value >= maximum if max_open else value > maximum)
        if too_low or too_high:
            shown = f"{value:g}" if isinstance(value, float) else _short_int(value)
            raise typer.BadParameter(f"must be {allowed}, got {shown}")
        return value

    return check


def choice(*choices: str) -> Callable[[str | None], str | None]:
    """A callback accepting None or one of `choices`."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"must be one of {', '.join(choices)}, got {value[:40]!r}")
        return value

    return check


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _short_int(value: int) -> str:
    text = str(value)
    return text if len(text) <= 20 else f"a {len(text)}-digit number"


ALLOW_ROOT_HELP = ("Also read files that a spec, repository, data or run folder names from "
                   "under DIR (by default they must stay under the folder of whatever names "
                   "them). Repeatable; same as RESNEXT_ALLOW_ROOT=DIR[:DIR...].")


def _allow_roots(folders: list[Path]) -> list[Path]:
    from resnext_compiler.named_files import allow_roots

    allow_roots(folders)
    return folders


def allow_root_option() -> list[Path]:
    """`--allow-root DIR`: widen the root of every named file on purpose (README "Limits")."""
    return typer.Option([], "--allow-root", metavar="DIR", callback=_allow_roots,
                        help=ALLOW_ROOT_HELP)
