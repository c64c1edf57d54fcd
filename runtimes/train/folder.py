"""ImageNet-style class folders (`DIR/train/<class>/*.jpg`, `DIR/val/<class>/*.jpg`) via Pillow.

Training crops follow fb.resnet.torch / the seed: random-resized crop (8%-100% of the area,
aspect 3/4-4/3, torchvision's ten-try sampler) + flip. Evaluation is the single crop of the
paper's tables: resize the shorter side to size/0.875 (256 for 224) and take the centre.
Small inputs (<= 64 px) resize to the input size and use the CIFAR-style pad crop instead.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from resnext_compiler.errors import UserError
from resnext_compiler.runtimes.train import augment as aug
from resnext_compiler.runtimes.train.images import normalise
from resnext_compiler.runtimes.train.seeding import sample_seed

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
EVAL_CROP_FRACTION = 0.875  # 224 / 256


def scan(split_dir: Path, classes: list[str] | None = None) -> tuple[list[tuple[str, int]],
                                                                     list[str]]:
    """(path, label) pairs under `split_dir/<class>/`, classes sorted by name."""
    if not split_dir.is_dir():
        raise UserError(f"{split_dir}: missing; an image-folder data set needs train/ and val/ "
                        "folders with one sub-folder of images per class")
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not found:
        raise UserError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<image>)")
    if classes is None:
        classes = found
    else:
        extra = [c for c in found if c not in classes]
        if extra:
            raise UserError(f"{split_dir}: classes {extra[:5]} do not appear in train/")
    index = {name: i for i, name in enumerate(classes)}
    samples = [
        (str(path), index[name])
        for name in found
        for path in sorted((split_dir / name).rglob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    if not samples:
        raise UserError(f"{split_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) in the class "
                        "folders")
    return samples, classes


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


def _resize_centre_crop(image, size: tuple[int, int], fraction: float):  # noqa: ANN001, ANN202
    from PIL import Image

    height, width = size
    short = round(min(height, width) / fraction)
    scale = short / min(image.size)
    resized = image.resize((max(width, round(image.width * scale)),
                            max(height, round(image.height * scale))), Image.BILINEAR)
    left = (resized.width - width) // 2
    top = (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


@dataclass
class FolderImages:
    """One split of an image-folder data set; images are decoded on demand."""

    name: str
    samples: list[tuple[str, int]]
    classes: list[str]
    channels: int
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = "none"  # resolved recipe; "none" means the evaluation centre crop
    seed: int = 0
    crop_fraction: float = EVAL_CROP_FRACTION  # evaluation crop: 224 of 256
    parallel: bool = True

    def __len__(self) -> int:
        return len(self.samples)

    def _decode(self, index: int, epoch: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        path, _ = self.samples[index]
        try:
            with Image.open(path) as raw:
                image = raw.convert("L" if self.channels == 1 else "RGB")
        except (OSError, UnidentifiedImageError) as exc:
            raise UserError(f"cannot read image {path}: {exc}") from None
        rng = random.Random(sample_seed(self.seed, epoch, index))
        if self.augment == "rrc-flip":
            box = _rrc_box(image.width, image.height, rng)
            image = image.resize(self.size[::-1], Image.BILINEAR, box=box)
            if rng.random() < 0.5:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            fraction = self.crop_fraction if self.augment == "none" else 1.0
            image = _resize_centre_crop(image, self.size, fraction)
        array = np.asarray(image, dtype=np.uint8)
        return array[:, :, None] if array.ndim == 2 else array

    def load(self, indices: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        arrays = [self._decode(int(i), epoch) for i in indices]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(torch.float32) / 255.0
        if self.augment in ("crop", "crop-flip"):
            x = aug.apply(x, self.augment, self.seed, epoch, indices)
        labels = torch.tensor([self.samples[int(i)][1] for i in indices], dtype=torch.int64)
        return normalise(x, self.mean, self.std), labels
