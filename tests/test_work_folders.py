"""Work folders beside an output (`artifacts.work_folder`): a folder whose owner was killed
outright is removed by the next one that works there; a live owner's folder never is."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from resnext_compiler.artifacts import (
    UNLOCKED_GRACE_SECONDS,
    remove_orphan_work_folders,
    work_folder,
)

HOLD = ("import sys, time\nfrom pathlib import Path\n"
        "from resnext_compiler.artifacts import work_folder\n"
        "with work_folder(sys.argv[1], 'int8') as folder:\n"
        "    (folder / 'model.onnx').write_bytes(b'x' * 1000)\n"
        "    print(folder.name, flush=True)\n"
        "    time.sleep(120)\n")


def hold_work_folder(parent: Path) -> tuple[subprocess.Popen, Path]:
    """A child process inside a work folder in `parent`, and the folder."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(parent)], stdout=subprocess.PIPE,
                            text=True)
    return proc, parent / proc.stdout.readline().strip()


def test_a_folder_whose_owner_was_killed_is_removed(tmp_path):
    proc, folder = hold_work_folder(tmp_path)
    proc.kill()
    proc.wait()
    assert folder.is_dir()  # SIGKILL ran no cleanup
    assert remove_orphan_work_folders(tmp_path) == [folder]
    assert list(tmp_path.iterdir()) == []


def test_a_folder_whose_owner_lives_is_kept(tmp_path):
    proc, folder = hold_work_folder(tmp_path)
    try:
        assert remove_orphan_work_folders(tmp_path) == []
        with work_folder(tmp_path, "fp32") as ours:  # a second compile in the same place
            assert sorted(tmp_path.iterdir()) == sorted([folder, ours])
        assert (folder / "model.onnx").stat().st_size == 1000
    finally:
        proc.kill()
        proc.wait()


def test_a_work_folder_is_removed_when_its_block_ends(tmp_path):
    with work_folder(tmp_path, "int8-debug") as folder:
        assert folder.name.startswith(f".int8-debug-{os.getpid()}-")
        (folder / "a").write_text("a")
    assert list(tmp_path.iterdir()) == []


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_folder_without_its_lock_is_removed_only_when_old_and_its_process_gone(tmp_path):
    """The owner died between making the folder and its lock file."""
    old = time.time() - UNLOCKED_GRACE_SECONDS - 1
    gone, young, alive = (tmp_path / f".fp32-{pid}-abc{n}" for n, pid in
                          enumerate([dead_pid(), dead_pid(), os.getpid()]))
    for folder in (gone, young, alive):
        folder.mkdir()
    os.utime(gone, (old, old))
    os.utime(alive, (old, old))
    assert remove_orphan_work_folders(tmp_path) == [gone]
    assert sorted(tmp_path.iterdir()) == sorted([young, alive])


def test_only_our_own_folders_are_looked_at(tmp_path):
    """Other names, a symlink named like a work folder, a lock file that is a symlink, and
    folders of the old naming (no pid) are left alone."""
    old = time.time() - UNLOCKED_GRACE_SECONDS - 1
    target = tmp_path / "target"
    target.mkdir()
    (target / ".lock").write_text("")
    kept = [tmp_path / ".fp32-abc123", tmp_path / ".onnx-1-abc", tmp_path / "fp32-1-abc"]
    for folder in kept:
        folder.mkdir()
        os.utime(folder, (old, old))
    link = tmp_path / f".int8-{dead_pid()}-link"
    link.symlink_to(target)
    linked_lock = tmp_path / f".int8-{dead_pid()}-lock"
    linked_lock.mkdir()
    (linked_lock / ".lock").symlink_to(target / ".lock")
    assert remove_orphan_work_folders(tmp_path) == []
    assert sorted(tmp_path.iterdir()) == sorted([*kept, target, link, linked_lock])
