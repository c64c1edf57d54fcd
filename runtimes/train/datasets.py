"""Open a data set by name as (train, val) image sets that fit a spec: the built-in readers
(the registry, `resnext_compiler/dataset_types.py`, names them).

digits:      embedded UCI handwritten digits (1797 real 8x8 grey images, `data/digits.npz`);
             every fifth image of each digit is the validation split (355 images).
cifar10/100: python-version batches from `--data DIR` (see `cifar.py`).
imagenet, imagefolder: `DIR/train/<class>/` and `DIR/val/<class>/` (see `folder.py`).
synthetic:   random images and labels at the spec's input size, for benchmarking.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from resnext_compiler.dataset_types import DatasetType, dataset_names_help, dataset_type
from resnext_compiler.errors import SpecError, UserError
from resnext_compiler.input_contract import SMALL_INPUT, InputContract, resolve_contract
from resnext_compiler.runtimes.image_folders import scan
from resnext_compiler.runtimes.train.folder import FolderImages
from resnext_compiler.runtimes.train.images import ImageSet, InMemoryImages, resize_all
from resnext_compiler.spec import Spec, field_diagnostic

SYNTHETIC_TRAIN, SYNTHETIC_VAL = 512, 128


@dataclass
class DataSplits:
    train: ImageSet
    val: ImageSet
    description: str
    contract: InputContract  # the evaluation transform and class names of this model + data


def resolve_augment(augment: str, dataset: str, size: int) -> str:
    """`auto`: the data set's recipe (CIFAR pad crop + flip; digits pad crop without flip;
    synthetic none); ImageNet-style folders rrc + flip above 64 px."""
    if augment != "auto":
        return augment
    known = dataset_type(dataset)
    if known is None:
        return "crop-flip"
    return "rrc-flip" if known.image_folders and size > SMALL_INPUT else known.augment


def _spec_problem(spec: Spec, field: tuple[str, ...], message: str) -> SpecError:
    return SpecError([field_diagnostic(spec, field, message)])


def _check_fit(spec: Spec, dataset: str, num_classes: int, channels: int | None) -> None:
    if spec.head.num_classes != num_classes:
        raise _spec_problem(
            spec, ("head", "num_classes"),
            f"the spec has {spec.head.num_classes} classes but the {dataset} data has "
            f"{num_classes}; set head.num_classes: {num_classes}")
    if channels is not None and spec.input.channels != channels:
        raise _spec_problem(
            spec, ("input", "channels"),
            f"the spec's input has {spec.input.channels} channel(s) but {dataset} images have "
            f"{channels}; set input.channels: {channels}")


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    with resources.files("resnext_compiler.runtimes.train.data").joinpath(
            "digits.npz").open("rb") as handle:
        data = np.load(handle)
        images, labels = data["images"], data["labels"]
    # Pixel counts 0..16 -> 0..255 so every data set shares one uint8 convention.
    scaled = np.round(images.astype(np.float32) * (255.0 / 16.0)).astype(np.uint8)
    return torch.from_numpy(scaled[:, None]), torch.from_numpy(labels.astype(np.int64))


def _every_fifth_per_class(labels: torch.Tensor) -> torch.Tensor:
    """A fixed, class-balanced 80/20 split: the 5th, 10th, ... image of each class."""
    rank = torch.zeros_like(labels)
    for label in labels.unique():
        members = labels == label
        rank[members] = torch.arange(int(members.sum()))
    return rank % 5 == 4


def _in_memory(spec: Spec, name: str, dataset: str, splits: dict[str, tuple[torch.Tensor,
               torch.Tensor]], classes: list[str], augment: str, seed: int) -> DataSplits:
    contract = resolve_contract(spec, dataset, classes)
    size = contract.size
    train_x, train_y = splits["train"]
    val_x, val_y = splits["val"]
    native = tuple(train_x.shape[2:])
    train = InMemoryImages(name, resize_all(train_x, contract), train_y, classes, contract,
                           augment, seed)
    val = InMemoryImages(name, resize_all(val_x, contract), val_y, classes, contract)
    return DataSplits(train, val, f"{name}: {len(train)} train / {len(val)} val images, "
                      f"{len(classes)} classes, {native[0]}x{native[1]} px"
                      + (f" resized to {size[0]}x{size[1]}" if size != native else ""),
                      contract)


def open_dataset(spec: Spec, dataset: str, data_dir: str | None, augment: str = "auto",
                 seed: int = 0, with_train: bool = True) -> DataSplits:
    """Train and val splits of `dataset`, checked against the spec's classes and channels,
    read by the data set's registered reader (`dataset_types.py`).

    `with_train=False` (evaluation) skips scanning an image folder's train/ split: the
    classes then come from val/, which must hold every class.
    """
    known = dataset_type(dataset)
    if known is None:
        raise UserError(f"unknown data set {dataset!r} (known: {dataset_names_help()})")
    recipe = resolve_augment(augment, dataset, min(spec.input.height, spec.input.width))
    root = None
    if known.needs_data_dir:
        if data_dir is None:
            raise UserError(f"the {dataset} data set needs --data DIR (nothing is downloaded)")
        root = Path(data_dir)
        if not root.is_dir():
            raise UserError(f"--data {data_dir}: no such directory")
    module, _, function = known.reader.partition(":")
    reader = getattr(importlib.import_module(module), function)
    return reader(spec, known, root, recipe, seed, with_train)


def read_digits(spec: Spec, known: DatasetType, root: Path | None, recipe: str, seed: int,
                with_train: bool) -> DataSplits:
    images, labels = _digits()
    _check_fit(spec, known.name, 10, 1)
    val = _every_fifth_per_class(labels)
    splits = {"train": (images[~val], labels[~val]), "val": (images[val], labels[val])}
    return _in_memory(spec, f"{known.name} ({known.description})", known.name, splits,
                      [str(i) for i in range(10)], recipe, seed)


def read_synthetic(spec: Spec, known: DatasetType, root: Path | None, recipe: str, seed: int,
                   with_train: bool) -> DataSplits:
    c, h, w = spec.input.channels, spec.input.height, spec.input.width
    k = spec.head.num_classes
    g = torch.Generator().manual_seed(seed)
    splits = {
        split: (torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g),
                torch.randint(0, k, (n,), generator=g))
        for split, n in (("train", SYNTHETIC_TRAIN), ("val", SYNTHETIC_VAL))
    }
    return _in_memory(spec, "synthetic (random images)", known.name, splits,
                      [str(i) for i in range(k)], recipe, seed)


def read_cifar(spec: Spec, known: DatasetType, root: Path, recipe: str, seed: int,
               with_train: bool) -> DataSplits:
    from resnext_compiler.runtimes.train.cifar import read_cifar as read_batches

    splits, classes = read_batches(root, known.name)
    _check_fit(spec, known.name, len(classes), 3)
    return _in_memory(spec, known.name, known.name, splits, classes, recipe, seed)


def read_folders(spec: Spec, known: DatasetType, root: Path, recipe: str, seed: int,
                 with_train: bool) -> DataSplits:
    dataset = known.name
    # The spec's class names, when it has them, fix the label order (a folder's label is
    # its name's position); otherwise the folders sorted by name do.
    named = list(spec.labels) if spec.labels is not None else None
    if with_train:
        train_samples, classes = scan(root / "train", named, root)
        val_samples, _ = scan(root / "val", classes, root)
    else:
        val_samples, classes = scan(root / "val", named, root)
        train_samples = []
    _check_fit(spec, f"{dataset} folder {root}", len(classes), None)
    contract = resolve_contract(spec, dataset, classes)
    train = FolderImages(dataset, train_samples, classes, contract, recipe, seed)
    val = FolderImages(dataset, val_samples, classes, contract, "none", seed)
    counts = f"{len(train)} train / {len(val)} val" if with_train else f"{len(val)} val"
    return DataSplits(train, val, f"{dataset} {root}: {counts} images, {len(classes)} "
                      f"classes, {contract.colour} {contract.height}x{contract.width}",
                      contract)
