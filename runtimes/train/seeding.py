"""Counter-based randomness: a value per (seed, epoch, sample, stream), not per process.

Augmentation draws come from a hash of the sample's identity rather than from a stateful
generator, so they do not depend on how samples are split into micro-batches, ranks or data
loader workers, and a resumed run sees exactly the draws of an uninterrupted one.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding 32-bit values."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _MASK32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


def sample_hash(seed: int, epoch: int, indices: torch.Tensor, stream: int) -> torch.Tensor:
    """32-bit hashes (int64 tensor) of each sample index for one random `stream`."""
    h = torch.as_tensor(indices, dtype=torch.int64) & _MASK32
    for word in (seed, epoch, stream):
        h = _fmix32((h * 0x9E3779B1 + (word & _MASK32)) & _MASK32)
    return h


def sample_uniform(seed: int, epoch: int, indices: torch.Tensor, stream: int) -> torch.Tensor:
    """Uniform floats in [0, 1), one per sample index."""
    return sample_hash(seed, epoch, indices, stream).to(torch.float64) / 2.0**32


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """One integer seed for per-sample Python-side augmentation (PIL transforms)."""
    return int(sample_hash(seed, epoch, torch.tensor([index]), 0)[0])
