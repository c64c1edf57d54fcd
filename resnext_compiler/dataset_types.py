"""Training data sets: one registered `DatasetType` each, the only list of them.

A data set owns its words: its name (the spec's `train.dataset`, `train --dataset`), its
per-channel statistics and input-contract defaults (ImageNet-style folders crop 0.875 above
64 px, everything else resizes directly), its default augmentation and schedule kind, whether
it needs `--data DIR`, and its reader. The reader runs in the training runtime (it needs
torch), so the compiler core names it as `module:function` and never imports it; a reader is
called as `reader(spec, dataset_type, data_dir, augment, seed, with_train)` and returns the
runtime's `DataSplits`. Third parties register data sets under the entry-point group
`resnext_compiler.datasets` (see `plugins.py`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from resnext_compiler.plugins import DATASETS_GROUP, load_plugins

_READERS = "resnext_compiler.runtimes.train.datasets"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# Training augmentation recipes, the only list of them (the spec's `train.augment`,
# `train --augment`): `runtimes/train/augment.py` applies them (rrc-flip per image in
# `folder.py` for image folders); `auto` picks the data set's own, `DatasetType.augment`.
AUGMENT_RECIPES = ("none", "crop", "crop-flip", "rrc-flip")
AUGMENTS = ("auto", *AUGMENT_RECIPES)


@dataclass(frozen=True)
class DatasetType:
    """One training data set. `mean`/`std` are per channel in 0-1 units (the published
    values); `image_folders` marks ImageNet-style data (crop 0.875 above 64 px, rrc + flip,
    x0.1 every 30 epochs); `augment` is the `auto` recipe otherwise."""

    name: str
    description: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    reader: str
    needs_data_dir: bool = True
    image_folders: bool = False
    augment: str = "crop-flip"


BUILTIN_DATASETS = (
    DatasetType("imagenet", "ImageNet-style DIR/train/<class>/, DIR/val/<class>/",
                IMAGENET_MEAN, IMAGENET_STD, f"{_READERS}:read_folders", image_folders=True),
    DatasetType("cifar10", "CIFAR-10 python batches in DIR",
                (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), f"{_READERS}:read_cifar"),
    DatasetType("cifar100", "CIFAR-100 python batches in DIR",
                (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), f"{_READERS}:read_cifar"),
    DatasetType("imagefolder", "any DIR/train/<class>/, DIR/val/<class>/ (ImageNet statistics)",
                IMAGENET_MEAN, IMAGENET_STD, f"{_READERS}:read_folders", image_folders=True),
    # Digits statistics measured over the 1797 images; a mirrored 2 is not a 2: no flip.
    DatasetType("digits", "embedded UCI handwritten digits", (0.3053,), (0.3759,),
                f"{_READERS}:read_digits", needs_data_dir=False, augment="crop"),
    DatasetType("synthetic", "random images at the spec's input size (benchmarks)", (0.5,),
                (0.25,), f"{_READERS}:read_synthetic", needs_data_dir=False, augment="none"),
)


@functools.cache
def dataset_types() -> dict[str, DatasetType]:
    """Every training data set by name: the built-ins, then plugins (entry points)."""
    return load_plugins(DATASETS_GROUP, DatasetType, {d.name: d for d in BUILTIN_DATASETS},
                        lambda d: d.name)


def dataset_type(name: str) -> DatasetType | None:
    return dataset_types().get(name)


def dataset_names_help() -> str:
    """`digits | cifar10 | ...` for option help."""
    return " | ".join(dataset_types())
