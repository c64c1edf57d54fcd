"""Network stems: one registered `StemType` each, the only list of them (`stem_types()`).

A stem appends its nodes to a `GraphBuilder` and returns (output value, channels); its
`description` is what the spec's JSON Schema and error messages say about it. Third parties
register theirs under the entry-point group `resnext_compiler.stems` (see `plugins.py`).

imagenet: 7x7/2 conv + BN + ReLU + 3x3/2 max-pool (He et al. 2016, Table 1).
cifar:    3x3 conv + BN + ReLU (the seed's CIFAR ResNeXt-29).
deep:     three 3x3 convs 32-32-64, the first strided, + BN + ReLU + max-pool
          (ResNet-C of He et al. 2019; timm's `stem_type='deep'` names `conv1.0/.1/.3/.4/.6`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from resnext_compiler.ir import INPUT, GraphBuilder
from resnext_compiler.ops import BatchNorm, Conv, MaxPool, ReLU
from resnext_compiler.plugins import STEMS_GROUP, load_plugins

STEM_WIDTH = 64


def imagenet_stem(b: GraphBuilder, in_channels: int) -> tuple[str, int]:
    x = b.add("conv1", Conv(in_channels, STEM_WIDTH, 7, 2, 3), INPUT)
    x = b.add("bn1", BatchNorm(STEM_WIDTH), x)
    x = b.add("relu", ReLU(), x)
    return b.add("maxpool", MaxPool(3, 2, 1), x), STEM_WIDTH


def cifar_stem(b: GraphBuilder, in_channels: int) -> tuple[str, int]:
    x = b.add("conv1", Conv(in_channels, STEM_WIDTH, 3, 1, 1), INPUT)
    x = b.add("bn1", BatchNorm(STEM_WIDTH), x)
    return b.add("relu", ReLU(), x), STEM_WIDTH


def deep_stem(b: GraphBuilder, in_channels: int) -> tuple[str, int]:
    mid = STEM_WIDTH // 2
    x = b.add("conv1.0", Conv(in_channels, mid, 3, 2, 1), INPUT)
    x = b.add("conv1.1", BatchNorm(mid), x)
    x = b.add("conv1.2", ReLU(), x)
    x = b.add("conv1.3", Conv(mid, mid, 3, 1, 1), x)
    x = b.add("conv1.4", BatchNorm(mid), x)
    x = b.add("conv1.5", ReLU(), x)
    x = b.add("conv1.6", Conv(mid, STEM_WIDTH, 3, 1, 1), x)
    x = b.add("bn1", BatchNorm(STEM_WIDTH), x)
    x = b.add("relu", ReLU(), x)
    return b.add("maxpool", MaxPool(3, 2, 1), x), STEM_WIDTH


StemLowering = Callable[[GraphBuilder, int], tuple[str, int]]


@dataclass(frozen=True)
class StemType:
    name: str
    description: str
    lower: StemLowering


BUILTIN_STEMS = (
    StemType("imagenet", "7x7/2 conv + 3x3/2 max-pool", imagenet_stem),
    StemType("cifar", "3x3 conv", cifar_stem),
    StemType("deep", "three 3x3 convs + max-pool (ResNet-C)", deep_stem),
)


@functools.cache
def stem_types() -> dict[str, StemType]:
    """Every stem by name: the built-ins, then plugins (entry points)."""
    return load_plugins(STEMS_GROUP, StemType, {s.name: s for s in BUILTIN_STEMS},
                        lambda s: s.name)

