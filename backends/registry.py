"""The backend registry: entry-point group `resnext_compiler.backends`.

Built-in backends are registered in pyproject.toml like any third-party one, so a new backend
is one file plus one entry point. What a backend is (`name`, `description`, the `dtypes` it
writes) is read from its class here, so `--backend`'s help and the refusals that name
backends list whatever is installed.
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


def backend_classes() -> dict[str, type | None]:
    """Every installed backend's class by name; None for one that fails to import (its
    missing extra is reported when it is chosen)."""
    classes: dict[str, type | None] = {}
    for name, ep in sorted(available_backends().items()):
        try:
            classes[name] = ep.load()  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a broken plugin must not break --help
            classes[name] = None
    return classes


def backend_help() -> str:
    """`--backend`'s help: each installed backend's name and description."""
    parts = [f"{name} ({getattr(cls, 'description', 'fails to import')})"
             for name, cls in backend_classes().items()]
    return "; ".join(parts) or "no backend is installed"


def writes_dtype(backend: Backend | type, dtype: str) -> bool:
    """Whether `backend` writes `dtype` (fp32 unless the backend lists its `dtypes`)."""
    return dtype in getattr(backend, "dtypes", ("fp32",))


def backends_writing(dtype: str) -> list[str]:
    """Names of the installed backends that write `dtype`."""
    return [name for name, cls in backend_classes().items()
            if cls is not None and writes_dtype(cls, dtype)]
