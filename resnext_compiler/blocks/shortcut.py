"""The residual shortcut (He et al. 2016, Sec. 3.3; the seed's -shortcutType).

A: parameter-free; strided identity, extra channels zero-padded.
B: projection (1x1 conv + BN) only where the shape changes; identity elsewhere.
C: projection in every block.
`avg_down` (ResNet-D, He et al. 2019) average-pools before a stride-1 projection.
"""

from __future__ import annotations

from resnext_compiler.blocks import BlockContext
from resnext_compiler.ir import GraphBuilder
from resnext_compiler.ops import AvgPool, BatchNorm, Conv, PadChannels, Subsample


def shortcut_kind(ctx: BlockContext) -> str:
    """What the block's shortcut is (the `BlockRecord.shortcut` vocabulary)."""
    out_channels = ctx.stage.out_channels
    if ctx.shortcut == "A":
        if out_channels != ctx.in_channels:
            return "zero-pad"
        return "subsample" if ctx.stride != 1 else "identity"
    changes = ctx.stride != 1 or ctx.in_channels != out_channels
    if ctx.shortcut == "C" or changes:
        return "avg-pool + projection" if ctx.avg_down and ctx.stride != 1 else "projection"
    return "identity"


def lower_shortcut(b: GraphBuilder, x: str, ctx: BlockContext, out_channels: int) -> str:
    """Return the value to add to the residual branch."""
    p = f"{ctx.prefix}.downsample"
    if ctx.shortcut == "A":
        if ctx.stride != 1:
            x = b.add(f"{p}.subsample", Subsample(ctx.stride), x, origin=ctx.stage.origin("stride"))
        if out_channels != ctx.in_channels:
            x = b.add(f"{p}.pad", PadChannels(out_channels - ctx.in_channels), x, origin="shortcut")
        return x
    if shortcut_kind(ctx) == "identity":
        return x
    if ctx.avg_down:
        # timm's layout: downsample.0 is the pool (Identity at stride 1), .1 conv, .2 BN.
        if ctx.stride != 1:
            x = b.add(
                f"{p}.0",
                AvgPool(2, ctx.stride, 0, ceil_mode=True, count_include_pad=False),
                x,
                origin=ctx.stage.origin("stride"),
            )
        x = b.add(f"{p}.1", Conv(ctx.in_channels, out_channels, 1), x)
        return b.add(f"{p}.2", BatchNorm(out_channels), x)
    x = b.add(
        f"{p}.0",
        Conv(ctx.in_channels, out_channels, 1, ctx.stride),
        x,
        origin=ctx.stage.origin("stride"),
    )
    return b.add(f"{p}.1", BatchNorm(out_channels), x)
