"""Labelled image sets held in memory as uint8 tensors (digits, CIFAR, synthetic).

A set hands out normalised float batches for given sample indices; augmentation draws are
keyed by (seed, epoch, index) so any split of the indices gives the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from resnext_compiler.runtimes.train import augment as aug


class ImageSet(Protocol):
    """What the training loop and `evaluate` need from a data set split."""

    name: str
    classes: list[str]
    channels: int
    parallel: bool  # True when loading is slow enough to use data loader workers

    def __len__(self) -> int: ...

    def load(self, indices: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (N, C, H, W) float32 normalised, labels (N,) int64)."""
        ...


@dataclass
class InMemoryImages:
    """uint8 images (N, C, H, W) and int64 labels; resized to `size` and augmented per batch."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: tuple[int, int]
    augment: str = "none"
    seed: int = 0
    parallel: bool = False

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def load(self, indices: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[indices].to(torch.float32) / 255.0
        x = aug.resize(x, self.size)
        x = aug.apply(x, self.augment, self.seed, epoch, indices)
        return normalise(x, self.mean, self.std), self.labels[indices]


def normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def channel_stats(name: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std used for normalisation (the usual published values)."""
    table = {
        "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
        "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        "digits": ((0.3053,), (0.3759,)),  # measured over the 1797 images
        "synthetic": ((0.5,), (0.25,)),
    }
    mean, std = table.get(name, table["imagenet"])
    if len(mean) == channels:
        return mean, std
    # A grey-scale view of a colour recipe (or the reverse): average / repeat the values.
    grey_mean, grey_std = sum(mean) / len(mean), sum(std) / len(std)
    return (grey_mean,) * channels, (grey_std,) * channels
