"""Tiny stand-ins for real data sets (CIFAR python batches, image folders), for tests and for
the documentation's commands (tests/test_docs.py)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()


def write_cifar10(root: Path, per_batch: int = 6) -> None:
    """CIFAR-10's python-version files (`data_batch_1..5`, `test_batch`, `batches.meta`)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, per_batch)]}
        (root / name).write_bytes(pickle.dumps(batch))
    names = [n.encode() for n in CIFAR10_CLASSES]
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))


def write_folder(root: Path, classes=("cat", "dog"), per_class: int = 3) -> None:
    """An image-folder data set: `root/{train,val}/<class>/<i>.png`, small RGB images."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
