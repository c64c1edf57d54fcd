"""The quick data-set scan before training: every image file of a folder data set is opened
and checked (format, size, structure; no pixels are decoded), so a damaged file is named before
the run directory is created rather than hours into an epoch. `--no-scan-data` skips it.

What it finds: files that are not images or cannot be read, and damaged PNG chunks (Pillow's
`verify`). A JPEG cut short after its header is only found when it is decoded.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from resnext_compiler.errors import UserError, shown
from resnext_compiler.named_files import IMAGE, open_named

SHOWN = 10  # problems listed in the error


def _problem(path: str) -> str | None:
    from PIL import Image

    try:
        with open_named(path, IMAGE, None) as handle, Image.open(handle) as image:
            image.verify()
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for a bad file
        # the name is the data folder's, the message Pillow's: one line each, escaped
        return f"{shown(path)}: {shown(exc or type(exc).__name__)[:300]}"
    return None


def check_image_files(paths: list[str], threads: int = 8) -> int:
    """Raise a UserError naming the first unreadable files; return how many were checked."""
    with ThreadPoolExecutor(max_workers=threads) as pool:  # file opening waits on the disk
        problems = [p for p in pool.map(_problem, paths, chunksize=64) if p is not None]
    if problems:
        listed = "\n  ".join(problems[:SHOWN])
        more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise UserError(f"{len(problems)} of {len(paths)} image file(s) cannot be read (found "
                        f"by the data-set scan before training; remove or replace them, or "
                        f"skip the scan with --no-scan-data):\n  {listed}{more}")
    return len(paths)


def dataset_files(*splits: object) -> list[str]:
    """The image files behind data set splits (folder sets; in-memory sets have none)."""
    return [path for split in splits for path, _ in getattr(split, "samples", [])]

