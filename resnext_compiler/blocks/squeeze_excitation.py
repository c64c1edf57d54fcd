"""Squeeze-and-excitation (Hu et al. 2018), laid out as timm's `SEModule` (`se.fc1`, `se.fc2`)."""

from __future__ import annotations

from resnext_compiler.ir import GraphBuilder
from resnext_compiler.ops import Conv, GlobalAvgPool, Mul, ReLU, Sigmoid


def reduced_channels(channels: int, ratio: float, divisor: int = 8,
                     round_limit: float = 0.0) -> int:
    """timm's make_divisible(channels * ratio, divisor, round_limit): the nearest multiple of
    `divisor` (at least `divisor`), one step up where rounding lost more than 1 - round_limit.
    Squeeze-excitation uses no limit (0); the selective-kernel attention timm's 0.9."""
    value = channels * ratio
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * value else rounded


def lower_se(b: GraphBuilder, x: str, prefix: str, channels: int, ratio: float, origin: str) -> str:
    rd = reduced_channels(channels, ratio)
    p = f"{prefix}.se"
    s = b.add(f"{p}.pool", GlobalAvgPool(), x, origin=origin)
    s = b.add(f"{p}.fc1", Conv(channels, rd, 1, bias=True), s, origin=origin)
    s = b.add(f"{p}.relu", ReLU(), s)
    s = b.add(f"{p}.fc2", Conv(rd, channels, 1, bias=True), s, origin=origin)
    s = b.add(f"{p}.gate", Sigmoid(), s)
    return b.add(f"{p}.scale", Mul(), x, s)
