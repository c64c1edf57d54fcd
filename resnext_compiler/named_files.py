"""The one way to open a file that an input names (docs/design.md, "Bounded cost").

A spec names its labels file and its `extends` parent, a Triton repository names its
`config.pbtxt`, `label_filename` and `model.onnx`, a data or calibration folder names image
files, a run directory names its settings, metrics and checkpoint; the command line names ONNX
models and weights files. Every such file is read here:

- resolved against its owner's folder (symlinks resolved) and kept under a root, as
  Kustomize's load restrictor keeps a kustomization's files under its folder; the roots in
  `RESNEXT_ALLOW_ROOT` (set by `--allow-root DIR`) widen it on purpose;
- opened without blocking and checked with `fstat` on the open descriptor before a byte is
  read: a regular file (no FIFO, device, socket or directory) of at most its kind's size;
- read with a byte budget (at most the limit plus one byte), since `/proc` files say size 0.

Errors are `NamedFileError` (a UserError, exit 2) whose text names who named the file.
Standard library only: the serve path imports this.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from resnext_compiler.errors import UserError, sanitise, shown

# Folders outside an owner's root that the user allows on purpose (os.pathsep-separated). An
# environment variable so data-loader workers, torchrun children and Slurm jobs inherit it.
ALLOW_ROOT_ENV = "RESNEXT_ALLOW_ROOT"

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True)
class FileKind:
    """What a named file is, for messages, and the most bytes one may hold."""

    what: str
    max_bytes: int


SPEC = FileKind("spec file", 64 * KiB)  # the largest zoo spec is under 2 KB
BASE_SPEC = FileKind("base spec", SPEC.max_bytes)  # an `extends` parent
LABELS = FileKind("labels file", 16 * MiB)
TRITON_CONFIG = FileKind("Triton config.pbtxt", 1 * MiB)
IMAGE = FileKind("image file", 256 * MiB)
DATA_BATCH = FileKind("data batch file", 512 * MiB)  # CIFAR-100's train batch: 150 MiB
RUN_SETTINGS = FileKind("run file", 64 * MiB)  # train.json, a run's spec.yaml and labels.txt
METRICS = FileKind("metrics log", 256 * MiB)
CHECKPOINT = FileKind("training checkpoint", 64 * GiB)
ONNX_MODEL = FileKind("ONNX model", 2 * GiB)  # protobuf's limit; larger models use external data
CAFFE_MODEL = FileKind("Caffe model", ONNX_MODEL.max_bytes)  # a protobuf message too
WEIGHTS = FileKind("weights file", CHECKPOINT.max_bytes)  # --weights, import-weights: .t7 too
# an ONNX model's weights stored beside it (onnxruntime reads them; the opener checks first)
ONNX_EXTERNAL_DATA = FileKind("ONNX external data file", WEIGHTS.max_bytes)

READ_CHUNK = 1 * MiB  # reads past what fstat said (/proc, a file that grows) go this far at once
MAX_FOLDER_FILES = 10_000_000  # directory entries one folder walk may visit


class NamedFileError(UserError):
    """A named file that cannot be used as asked: outside its root, not a regular file, too
    large, missing or unreadable. `too_large`: the file exists but is over its kind's limit."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


def allowed_roots() -> tuple[Path, ...]:
    """The folders `--allow-root` / RESNEXT_ALLOW_ROOT allow besides each owner's root."""
    value = os.environ.get(ALLOW_ROOT_ENV, "")
    return tuple(Path(part).resolve() for part in value.split(os.pathsep) if part)


def allow_roots(folders: list[Path] | tuple[Path, ...]) -> None:
    """Allow named files under `folders` too, in this process and every child it starts."""
    if not folders:
        return
    known = [str(p) for p in allowed_roots()]
    added = [str(Path(folder).resolve()) for folder in folders]
    os.environ[ALLOW_ROOT_ENV] = os.pathsep.join(dict.fromkeys(known + added))


def _prefix(where: str) -> str:
    return f"{sanitise(where)}: " if where else ""


def contained(path: str | Path, root: Path | None, where: str = "",
              kind: FileKind | None = None) -> Path:
    """`path` with every symlink resolved, refused unless it lies under `root` (or under an
    allowed root). `root` None: a path the user typed, which may lie anywhere."""
    what = kind.what if kind is not None else "path"
    if "\0" in str(path):
        raise NamedFileError(f"{_prefix(where)}a path cannot hold a NUL character")
    try:
        resolved = Path(path).resolve(strict=True)
    except FileNotFoundError:
        raise NamedFileError(f"{_prefix(where)}{what} not found: {shown(path)}") from None
    except (OSError, RuntimeError) as exc:  # a symlink loop, a path component not a folder
        raise NamedFileError(f"{_prefix(where)}cannot resolve {shown(path)}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
    if root is None:
        return resolved
    roots = (Path(root).resolve(), *allowed_roots())
    if not any(resolved.is_relative_to(r) for r in roots):
        raise NamedFileError(
            f"{_prefix(where)}{shown(path)} leads to {shown(resolved)}, outside "
            f"{shown(roots[0])}; files an input names must stay under its folder (allow "
            f"another folder on purpose with --allow-root DIR or {ALLOW_ROOT_ENV})")
    return resolved


def _check_regular(mode: int, path: str | Path, kind: FileKind, where: str) -> None:
    if not stat.S_ISREG(mode):
        shape = "got a directory" if stat.S_ISDIR(mode) else "a device, FIFO or socket"
        raise NamedFileError(f"{_prefix(where)}{kind.what} {shown(path)} is not a regular "
                             f"file ({shape})")


@contextlib.contextmanager
def open_named(path: str | Path, kind: FileKind, root: Path | None, where: str = ""
               ) -> Iterator[BinaryIO]:
    """The open file, after the containment, kind and size checks (see the module text)."""
    resolved = contained(path, root, where, kind)
    with contextlib.suppress(OSError):  # a socket cannot even be opened: say what it is
        _check_regular(os.stat(resolved).st_mode, path, kind, where)
    try:
        fd = os.open(resolved, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise NamedFileError(f"{_prefix(where)}cannot read {kind.what} {shown(path)}: "
                             f"{exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)  # the descriptor's file, whatever the path points at by now
        _check_regular(info.st_mode, path, kind, where)
        if info.st_size > kind.max_bytes:
            raise NamedFileError(f"{_prefix(where)}{kind.what} {shown(path)} is larger than "
                                 f"the {kind.max_bytes}-byte limit ({info.st_size} bytes)",
                                 too_large=True)
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def named_file(path: str | Path, kind: FileKind, root: Path | None, where: str = "") -> Path:
    """The resolved path of a named regular file of at most its kind's size, for a reader
    that only takes a path (onnxruntime): the same checks as `open_named`, from `stat`."""
    resolved = contained(path, root, where, kind)
    info = resolved.stat()
    _check_regular(info.st_mode, path, kind, where)
    if info.st_size > kind.max_bytes:
        raise NamedFileError(f"{_prefix(where)}{kind.what} {shown(path)} is larger than the "
                             f"{kind.max_bytes}-byte limit ({info.st_size} bytes)",
                             too_large=True)
    return resolved


def read_named_bytes(path: str | Path, kind: FileKind, root: Path | None,
                     where: str = "") -> bytes:
    """All bytes of a named file, never more than its kind's limit.

    Read in the size `fstat` gave (a read of the limit would allocate the limit: 2 GiB for a
    small ONNX file), then on in chunks for a file that holds more than it said (`/proc`)."""
    with open_named(path, kind, root, where) as handle:
        try:
            said = os.fstat(handle.fileno()).st_size
            parts = [handle.read(said + 1)]
            total = len(parts[0])
            while total > said and total <= kind.max_bytes:
                chunk = handle.read(min(READ_CHUNK, kind.max_bytes + 1 - total))
                if not chunk:
                    break
                parts.append(chunk)
                total += len(chunk)
            data = parts[0] if len(parts) == 1 else b"".join(parts)
        except OSError as exc:
            raise NamedFileError(f"{_prefix(where)}cannot read {kind.what} {shown(path)}: "
                                 f"{exc.strerror or exc}") from None
    if len(data) > kind.max_bytes:
        raise NamedFileError(f"{_prefix(where)}{kind.what} {shown(path)} is larger than the "
                             f"{kind.max_bytes}-byte limit", too_large=True)
    return data


def read_named_text(path: str | Path, kind: FileKind, root: Path | None,
                    where: str = "") -> str:
    """A named file as UTF-8 text."""
    data = read_named_bytes(path, kind, root, where)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NamedFileError(f"{_prefix(where)}{kind.what} {shown(path)} is not UTF-8 text "
                             f"({exc.reason} at byte {exc.start})") from None


def named_folder(path: str | Path, root: Path | None, where: str = "") -> Path:
    """A folder an input names, resolved and kept under `root`; anything else is refused."""
    resolved = contained(path, root, where)
    if not resolved.is_dir():
        raise NamedFileError(f"{_prefix(where)}{shown(path)} is not a folder")
    return resolved


def walk_files(folder: str | Path, root: Path, where: str = "",
               suffixes: tuple[str, ...] = (), max_entries: int = MAX_FOLDER_FILES
               ) -> Iterator[Path]:
    """Every regular file under `folder` (whose name ends in one of `suffixes`, when given),
    in sorted order, as a path under `folder`; each one's real place is under `root`.

    Symlinks are followed only where they stay under `root` (or an allowed root): one that
    leads out, or a wanted name that is not a regular file (a FIFO called `a.png`), is refused
    by name, so a class folder linked to `/` never walks the filesystem. A folder reached
    twice is walked once. At most `max_entries` directory entries are visited.
    """
    start = Path(folder)
    seen: set[Path] = set()
    visited = 0

    def refuse_special(path: Path) -> NamedFileError:
        return NamedFileError(f"{_prefix(where)}{shown(path)} is not a regular file (a "
                              "device, FIFO or socket)")

    def walk(directory: Path, real: Path) -> Iterator[Path]:
        # `real`: `directory` with its symlinks resolved, known to lie under a root; an entry
        # that is not a symlink lies there too, so only symlinks are resolved (ImageNet's
        # 1.3 million files cost one directory read each, not a path resolution each)
        nonlocal visited
        if real in seen:
            return
        seen.add(real)
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            raise NamedFileError(f"{_prefix(where)}cannot list {shown(directory)}: "
                                 f"{exc.strerror or exc}") from None
        for entry in entries:
            visited += 1
            if visited > max_entries:
                raise NamedFileError(f"{_prefix(where)}more than {max_entries} files searched "
                                     f"under {shown(start)}; point it at a smaller folder")
            path = directory / entry.name
            wanted = not suffixes or entry.name.lower().endswith(suffixes)
            if not entry.is_symlink():
                if entry.is_dir(follow_symlinks=False):
                    yield from walk(path, real / entry.name)
                elif wanted and not entry.is_file(follow_symlinks=False):
                    raise refuse_special(path)
                elif wanted:
                    yield path
                continue
            try:
                mode = path.stat().st_mode  # follows the link; never opens, never blocks
            except OSError:
                mode = 0  # a dangling link: refused below if its name is wanted
            if stat.S_ISDIR(mode):
                yield from walk(path, contained(path, root, where))
            elif wanted:
                contained(path, root, where)
                if not stat.S_ISREG(mode):
                    raise refuse_special(path)
                yield path

    return walk(start, named_folder(start, root, where))
