"""Labelled image sets held in memory as uint8 tensors (digits, CIFAR, synthetic).

A set hands out normalised float batches for given sample indices; augmentation draws are
keyed by (seed, epoch, index) so any split of the indices gives the same images. Sizes and
normalisation come from the model's `InputContract` (`resnext_compiler.image_transform`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from resnext_compiler.image_transform import array_to_image, resize_and_crop
from resnext_compiler.input_contract import InputContract
from resnext_compiler.runtimes.train import augment as aug


class ImageSet(Protocol):
    """What the training loop and `evaluate` need from a data set split."""

    name: str
    classes: list[str]
    channels: int
    contract: InputContract
    parallel: bool  # True when loading is slow enough to use data loader workers

    def __len__(self) -> int: ...

    def load(self, indices: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (N, C, H, W) float32 normalised, labels (N,) int64)."""
        ...


@dataclass
class InMemoryImages:
    """uint8 images (N, C, H, W) already at the model's size, int64 labels; augmented and
    normalised per batch (`contract_normalise`)."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    contract: InputContract
    augment: str = "none"
    seed: int = 0
    parallel: bool = False

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def load(self, indices: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[indices].to(torch.float32)
        x = aug.apply(x, self.augment, self.seed, epoch, indices)
        return contract_normalise(x, self.contract), self.labels[indices]


def contract_normalise(x: torch.Tensor, contract: InputContract) -> torch.Tensor:
    """Pixels (N, C, H, W) in 0-255 units -> the model input, with the contract's affine."""
    multiplier, offset = (torch.from_numpy(v).to(x.dtype).view(1, -1, 1, 1)
                          for v in contract.affine())
    return x * multiplier + offset


def resize_all(images: torch.Tensor, contract: InputContract) -> torch.Tensor:
    """uint8 (N, C, H, W) images at another size through the evaluation transform's resize."""
    if tuple(images.shape[2:]) == contract.size:
        return images
    pixels = images.permute(0, 2, 3, 1).numpy()
    resized = np.stack([resize_and_crop(array_to_image(p), contract) for p in pixels])
    return torch.from_numpy(resized).permute(0, 3, 1, 2).contiguous()
