"""Third-party vocabulary through entry points: block types, stems and training data sets.

A plugin package names its objects in its own metadata, e.g. in its pyproject.toml

    [project.entry-points."resnext_compiler.blocks"]
    my_block = "my_package.my_block:BLOCK_TYPE"

and every registry (`blocks.block_types`, `stems.stem_types`, the data sets) adds them after
its built-ins. The installed distributions are scanned once per process, for all groups at once;
backends use the same mechanism (`backends/registry.py`) but load theirs only when asked.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeVar

BLOCKS_GROUP = "resnext_compiler.blocks"
STEMS_GROUP = "resnext_compiler.stems"
DATASETS_GROUP = "resnext_compiler.datasets"

T = TypeVar("T")


@functools.cache
def _all_entry_points() -> Any:
    """One scan of the installed distributions for every group (each scan costs ~5 ms)."""
    return entry_points()


def _entry_points(group: str) -> list[EntryPoint]:
    return sorted(_all_entry_points().select(group=group), key=lambda ep: ep.name)


def load_plugins(group: str, kind: type[T], builtins: dict[str, T],
                 name_of: Callable[[T], str]) -> dict[str, T]:
    """`builtins` plus every object registered under `group` (built-ins win a name clash).

    A plugin that fails to import, is not a `kind`, or whose `name` differs from its entry
    point's is left out with a warning: one broken package must not stop every command.
    """
    registry = dict(builtins)
    for ep in _entry_points(group):
        if ep.name in registry:
            warnings.warn(f"{group} plugin {ep.value!r}: {ep.name!r} is already registered; "
                          f"ignored", stacklevel=2)
            continue
        try:
            value = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import failure of foreign code
            warnings.warn(f"{group} plugin {ep.value!r} failed to load: {exc}", stacklevel=2)
            continue
        if not isinstance(value, kind) or name_of(value) != ep.name:
            warnings.warn(f"{group} plugin {ep.value!r} is not a {kind.__name__} named "
                          f"{ep.name!r}; ignored", stacklevel=2)
            continue
        registry[ep.name] = value
    return registry
