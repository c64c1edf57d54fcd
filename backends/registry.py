"""The backend registry: entry-point group `resnext_compiler.backends`.

Built-in backends are registered in pyproject.toml like any third-party one, so a new backend
is one file plus one entry point.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from resnext_compiler.backends.base import Backend
from resnext_compiler.errors import UserError

ENTRY_POINT_GROUP = "resnext_compiler.backends"


def available_backends() -> dict[str, object]:
    """Entry points by name (not loaded: loading may import heavy libraries)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_backend(name: str) -> Backend:
    eps = available_backends()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none installed"
        raise UserError(f"unknown backend {name!r} (available: {known})")
    backend_cls = eps[name].load()  # type: ignore[attr-defined]
    return backend_cls()
