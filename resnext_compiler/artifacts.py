"""Atomic file writes and work folders beside an output.

A failed or interrupted write never leaves a half-written artifact, and a work folder that a
killed process left behind is removed by the next one that works in the same place.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "wb") -> Iterator[BinaryIO]:
    """Write to a temporary file beside `path`, fsync, then rename over `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp creates 0600; give the artifact the mode a plain open() would (umask).
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, mode) as handle:
            yield handle  # type: ignore[misc]
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_writer(path, "w") as handle:
        handle.write(text)  # type: ignore[arg-type]
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_writer(path, "wb") as handle:
        handle.write(data)
    return Path(path)


# Work folders beside an output: `.PREFIX-PID-RANDOM/` holding a `.lock` file that its owner
# keeps locked (flock) for the folder's whole life. The kernel drops the lock when the owner
# dies, however it dies (SIGKILL, power loss), so a lock that can be taken means an orphan.
WORK_FOLDER_PREFIXES = ("fp32", "int8", "int8-debug")
_WORK_FOLDER = re.compile(r"\.(" + "|".join(map(re.escape, WORK_FOLDER_PREFIXES))
                          + r")-(\d+)-[A-Za-z0-9_]+")
_LOCK_NAME = ".lock"
# A folder without its lock file is younger than this while its owner is still starting it.
UNLOCKED_GRACE_SECONDS = 60


@contextlib.contextmanager
def work_folder(parent: str | Path, prefix: str) -> Iterator[Path]:
    """A new folder `.PREFIX-PID-RANDOM` in `parent`, locked while in use, removed after.

    Orphans that killed processes left in `parent` are removed first
    (`remove_orphan_work_folders`).
    """
    if prefix not in WORK_FOLDER_PREFIXES:
        raise ValueError(f"unknown work folder prefix {prefix!r}")
    parent = Path(parent)
    remove_orphan_work_folders(parent)
    folder = Path(tempfile.mkdtemp(prefix=f".{prefix}-{os.getpid()}-", dir=parent))
    try:
        lock = os.open(folder / _LOCK_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                       0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield folder
        finally:
            os.close(lock)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_orphan_work_folders(parent: str | Path) -> list[Path]:
    """Remove the work folders in `parent` whose owner is gone; return what was removed.

    Only this user's real folders named like `work_folder`'s are looked at. One is an orphan
    when its lock file can be locked, or, if it has no lock file yet (its owner died between
    creating the folder and the lock), when the process its name records no longer exists and
    the folder is older than UNLOCKED_GRACE_SECONDS.
    Anything else, including a folder whose owner cannot be told, is left alone.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        match = _WORK_FOLDER.fullmatch(entry.name)
        if match is None:
            continue
        folder = Path(entry.path)
        try:
            info = os.lstat(folder)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        lock = _orphan_lock(folder, int(match.group(2)), info.st_mtime)
        if lock is None:
            continue
        try:
            # rmtree does not follow symlinks inside the folder
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            if lock >= 0:
                os.close(lock)
    return removed


def _orphan_lock(folder: Path, pid: int, created: float) -> int | None:
    """None while the folder's owner may be alive; otherwise its lock file's descriptor, now
    locked by us (-1 when it has no lock file and the process its name records is gone)."""
    try:
        # read-write: on NFS an exclusive flock needs a descriptor open for writing
        lock = os.open(folder / _LOCK_NAME, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        # the owner died between making the folder and its lock, or is there right now: the
        # age keeps a live owner whose pid this process cannot see (another pid namespace)
        recent = time.time() - created < UNLOCKED_GRACE_SECONDS
        return None if recent or _process_exists(pid) else -1
    except OSError:  # a symlink or something else that no work_folder made
        return None
    try:
        if stat.S_ISREG(os.fstat(lock).st_mode):
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
    except OSError:  # held by a live owner (EWOULDBLOCK), or a lock this system cannot take
        pass
    os.close(lock)
    return None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
