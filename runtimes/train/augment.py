"""Batch augmentation on image tensors (N, C, H, W), float pixels (0-255 units).

The seed's recipes (facebookresearch/ResNeXt `datasets/*-gen.lua`, fb.resnet.torch):
CIFAR: zero-pad 4 pixels, random 32x32 crop, horizontal flip. ImageNet: random-resized crop
(8%-100% of the area, aspect 3/4-4/3) + flip, done per image in `folder.py`. Draws come from
`seeding.sample_uniform`, one per (sample, epoch), so they do not depend on batching.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from resnext_compiler.runtimes.train.seeding import sample_uniform

# Random streams: each kind of draw has its own so adding one does not shift the others.
STREAM_CROP_Y, STREAM_CROP_X, STREAM_FLIP = 1, 2, 3
STREAM_AREA, STREAM_ASPECT = 4, 5


def crop_padding(size: int) -> int:
    """CIFAR pads 4 pixels at 32 px; other sizes pad in proportion (digits 8 px -> 1)."""
    return max(1, round(size / 8))


def random_crop(x: torch.Tensor, pad: int, seed: int, epoch: int,
                indices: torch.Tensor) -> torch.Tensor:
    """Zero-pad by `pad` and take a random crop of the original size from each image."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    span = 2 * pad + 1
    top = (sample_uniform(seed, epoch, indices, STREAM_CROP_Y) * span).long()
    left = (sample_uniform(seed, epoch, indices, STREAM_CROP_X) * span).long()
    rows = (top[:, None] + torch.arange(h))[:, None, :, None].expand(n, c, h, w + 2 * pad)
    cols = (left[:, None] + torch.arange(w))[:, None, None, :].expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def random_flip(x: torch.Tensor, seed: int, epoch: int, indices: torch.Tensor) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = sample_uniform(seed, epoch, indices, STREAM_FLIP) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_resized_crop(x: torch.Tensor, size: tuple[int, int], seed: int, epoch: int,
                        indices: torch.Tensor, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Inception-style crop of in-memory images: a box of random area and aspect, resized.

    One draw per image (no rejection loop): the box is clipped to the image, which is what
    torchvision's fallback does when its ten tries fail.
    """
    area = scale[0] + (scale[1] - scale[0]) * sample_uniform(seed, epoch, indices, STREAM_AREA)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo)
                       * sample_uniform(seed, epoch, indices, STREAM_ASPECT))
    box_w = torch.sqrt(area * aspect).clamp(max=1.0)  # fractions of the image side
    box_h = torch.sqrt(area / aspect).clamp(max=1.0)
    centre_x = (1 - box_w) * (sample_uniform(seed, epoch, indices, STREAM_CROP_X) - 0.5)
    centre_y = (1 - box_h) * (sample_uniform(seed, epoch, indices, STREAM_CROP_Y) - 0.5)
    theta = torch.zeros(len(indices), 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = box_w, 2 * centre_x
    theta[:, 1, 1], theta[:, 1, 2] = box_h, 2 * centre_y
    grid = F.affine_grid(theta.to(x.dtype), [x.shape[0], x.shape[1], *size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def apply(x: torch.Tensor, augment: str, seed: int, epoch: int,
          indices: torch.Tensor) -> torch.Tensor:
    """Apply a resolved recipe (none | crop | crop-flip | rrc-flip) to an already-sized batch."""
    if augment == "none":
        return x
    if augment == "rrc-flip":
        x = random_resized_crop(x, tuple(x.shape[-2:]), seed, epoch, indices)
    else:
        x = random_crop(x, crop_padding(x.shape[-1]), seed, epoch, indices)
    if augment.endswith("flip"):
        x = random_flip(x, seed, epoch, indices)
    return x
