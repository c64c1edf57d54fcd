"""CIFAR-10/100 in their "python version" batch format (Krizhevsky 2009), read without pickle's
power to run code: only numpy arrays, lists, dicts and bytes may appear in the files.

Layout (as extracted from cifar-10-python.tar.gz / cifar-100-python.tar.gz):
  CIFAR-10:  data_batch_1 ... data_batch_5, test_batch, batches.meta
  CIFAR-100: train, test, meta
Each batch is a dict with b"data" (N, 3072) uint8 (R, G, B planes of 32x32) and b"labels"
(CIFAR-10) or b"fine_labels" (CIFAR-100).
"""

from __future__ import annotations

import io
import itertools
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resnext_compiler.errors import UserError, shown
from resnext_compiler.named_files import DATA_BATCH, read_named_bytes

_LAYOUT = {
    "cifar10": (["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5"], ["test_batch"], "batches.meta", b"labels", b"label_names", 10),
    "cifar100": (["train"], ["test"], "meta", b"fine_labels", b"fine_label_names", 100),
}
_SUBFOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_ARCHIVE = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
}


_CONSTRUCTORS = {"_reconstruct", "scalar"}


class _ArraysOnly(pickle.Unpickler):
    """Only numpy arrays, dtypes and plain containers; every array no larger than the file.

    numpy's pickled arrays are built by `_reconstruct(ndarray, shape, dtype)`, which allocates
    the whole shape before the data arrives: a 301-byte file could ask for 4 GB that later
    code touches. The file holds every byte a real batch has, so its size bounds each array.
    """

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.max_bytes = len(data)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        found = super().find_class(module, name)
        if name not in _CONSTRUCTORS:
            return found

        def bounded(*args: Any) -> Any:
            shape = args[1] if name == "_reconstruct" and len(args) > 1 else ()
            dtype = np.dtype(args[2] if name == "_reconstruct" and len(args) > 2 else
                             args[0] if args else None)
            dims = (shape,) if isinstance(shape, int) else tuple(shape)
            if not all(isinstance(d, int) and d >= 0 for d in dims):
                raise pickle.UnpicklingError(f"an array of shape {dims!r}")
            if math.prod(dims) * dtype.itemsize > self.max_bytes:
                raise pickle.UnpicklingError(
                    f"an array of shape {list(dims)} and type {dtype} is larger than the "
                    f"{self.max_bytes}-byte file")
            return found(*args)

        return bounded


def _read_pickle(path: Path) -> Any:
    try:
        return _ArraysOnly(read_named_bytes(path, DATA_BATCH, path.parent)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, RecursionError, MemoryError) as exc:
        raise UserError(f"{shown(path)}: not a CIFAR python batch file "
                        f"({shown(exc)[:300]})") from None


def find_root(data_dir: Path, dataset: str) -> Path:
    """`data_dir` itself or its standard sub-folder, whichever holds the batch files."""
    train_files = _LAYOUT[dataset][0]
    for root in (data_dir, data_dir / _SUBFOLDER[dataset]):
        if (root / train_files[0]).is_file():
            return root
    train, test = _LAYOUT[dataset][:2]
    expected = ", ".join([*train, *test])
    raise UserError(
        f"{dataset} data not found in {shown(data_dir)}: expected the python-version batch "
        f"files ({expected}) there or in {shown(data_dir / _SUBFOLDER[dataset])} (extract "
        f"{_ARCHIVE[dataset]}; nothing is downloaded)")


def _read_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise UserError(f"{shown(path)}: missing CIFAR batch file")
    batch = _read_pickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        # a few keys, each cut short: the file chose them (any type, any length, any count)
        keys = (f"keys {', '.join(repr(key)[:40] for key in itertools.islice(batch, 10))}"
                if isinstance(batch, dict) else type(batch).__name__)
        raise UserError(f"{shown(path)}: expected a dict with b'data' and {label_key!r}; "
                        f"got {keys}")
    try:
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[label_key])
    except (ValueError, TypeError):
        raise UserError(f"{shown(path)}: b'data' and {label_key!r} must be arrays") from None
    if (data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32
            or not data.flags.c_contiguous):
        raise UserError(f"{shown(path)}: expected b'data' of shape (N, 3072) uint8; got "
                        f"{data.shape} {data.dtype}")
    if (labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu" or labels.size == 0
            or labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{shown(path)}: expected {data.shape[0]} labels in 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _class_names(root: Path, meta_file: str, names_key: bytes, num_classes: int) -> list[str]:
    path = root / meta_file
    if path.is_file():
        meta = _read_pickle(path)
        names = meta.get(names_key) if isinstance(meta, dict) else None
        if isinstance(names, list) and len(names) == num_classes:
            return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return [str(i) for i in range(num_classes)]


def read_cifar(data_dir: Path, dataset: str) -> tuple[dict[str, tuple[torch.Tensor,
                                                                        torch.Tensor]], list[str]]:
    """{"train": (images, labels), "val": (images, labels)} as tensors, and class names."""
    root = find_root(data_dir, dataset)
    train_files, test_files, meta_file, label_key, names_key, num_classes = _LAYOUT[dataset]
    splits = {}
    for split, files in (("train", train_files), ("val", test_files)):
        parts = [_read_batch(root / f, label_key, num_classes) for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        splits[split] = (torch.from_numpy(images), torch.from_numpy(labels))
    return splits, _class_names(root, meta_file, names_key, num_classes)
