"""ImageNet-style class folders (`DIR/train/<class>/*.jpg`, `DIR/val/<class>/*.jpg`) via Pillow.

Training crops follow fb.resnet.torch / the seed: random-resized crop (8%-100% of the area,
aspect 3/4-4/3, torchvision's ten-try sampler) + flip; `crop`/`crop-flip` take the evaluation
geometry and add the CIFAR-style pad crop. Evaluation (`augment: none`) is exactly the
model's evaluation transform (`resnext_compiler.image_transform`), the one `serve` applies.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch

from resnext_compiler.image_transform import load_images_for_model, open_image, resize_and_crop
from resnext_compiler.input_contract import InputContract
from resnext_compiler.runtimes.train import augment as aug
from resnext_compiler.runtimes.train.images import contract_normalise
from resnext_compiler.runtimes.train.seeding import sample_seed


def _rrc_box(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params (scale 0.08-1, ratio 3/4-4/3)."""
    area = width * height
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return left, top, left + w, top + h
    side = min(width, height)  # fallback: central square
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


@dataclass
class FolderImages:
    """One split of an image-folder data set; images are decoded on demand."""

    name: str
    samples: list[tuple[str, int]]
    classes: list[str]
    contract: InputContract
    augment: str = "none"  # resolved recipe; "none" means the evaluation transform
    seed: int = 0
    parallel: bool = True

    @property
    def channels(self) -> int:
        return self.contract.channels

    def __len__(self) -> int:
        return len(self.samples)

    def _training_pixels(self, index: int, epoch: int) -> np.ndarray:
        from PIL import Image

        path, _ = self.samples[index]
        if self.augment != "rrc-flip":
            return resize_and_crop(open_image(path, self.contract), self.contract)
        image = open_image(path, self.contract, reduce=False)
        rng = random.Random(sample_seed(self.seed, epoch, index))
        box = _rrc_box(image.width, image.height, rng)
        image = image.resize((self.contract.width, self.contract.height), Image.BILINEAR, box=box)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.uint8)
        return array[:, :, None] if array.ndim == 2 else array

    def load(self, indices: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.tensor([self.samples[int(i)][1] for i in indices], dtype=torch.int64)
        if self.augment == "none":
            paths = [self.samples[int(i)][0] for i in indices]
            return torch.from_numpy(load_images_for_model(paths, self.contract)), labels
        arrays = [self._training_pixels(int(i), epoch) for i in indices]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(torch.float32)
        if self.augment in ("crop", "crop-flip"):
            x = aug.apply(x, self.augment, self.seed, epoch, indices)
        return contract_normalise(x, self.contract), labels
