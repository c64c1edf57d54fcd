"""What the contained folder walk costs: `image_folders.scan` through `named_files.walk_files`
against the plain `sorted(rglob("*"))` + `is_file()` listing it replaced, on a generated
ImageFolder tree of empty `.png` files (file contents are not read by either).

    python benchmarks/named_files_scan.py [--classes 100] [--per-class 1000] [--repeat 3]

Prints the median wall time of each and the number of files found (they must agree).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from resnext_compiler.image_transform import IMAGE_SUFFIXES
from resnext_compiler.runtimes.image_folders import scan


def plain_listing(split: Path) -> list[str]:
    """The listing before the opener: every path under each class folder, filtered by name."""
    classes = sorted(p.name for p in split.iterdir() if p.is_dir())
    return [str(path) for name in classes for path in sorted((split / name).rglob("*"))
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()]


def timed(run, repeat: int) -> tuple[float, int]:  # noqa: ANN001
    times, count = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        count = len(run())
        times.append(time.perf_counter() - started)
    return statistics.median(times), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        split = Path(tmp) / "train"
        for index in range(args.classes):
            folder = split / f"class{index:04d}"
            folder.mkdir(parents=True)
            for image in range(args.per_class):
                (folder / f"{image:06d}.png").touch()
        plain, plain_count = timed(lambda: plain_listing(split), args.repeat)
        walked, walked_count = timed(lambda: scan(split, root=Path(tmp))[0], args.repeat)
    assert plain_count == walked_count, (plain_count, walked_count)
    print(f"{walked_count} files in {args.classes} class folders")
    print(f"plain rglob + is_file: {plain:.2f} s")
    print(f"walk_files (contained): {walked:.2f} s ({walked / plain:.2f}x)")


if __name__ == "__main__":
    main()
