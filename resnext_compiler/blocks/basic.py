"""The basic block (He et al. 2016, Fig. 5 left): two 3x3 convs; ResNet-18/34."""

from __future__ import annotations

from resnext_compiler.blocks import BlockContext
from resnext_compiler.blocks.shortcut import lower_shortcut
from resnext_compiler.blocks.squeeze_excitation import lower_se
from resnext_compiler.ir import GraphBuilder
from resnext_compiler.ops import Add, BatchNorm, Conv, ReLU


def lower_basic(b: GraphBuilder, x: str, ctx: BlockContext) -> str:
    st = ctx.stage
    p = ctx.prefix
    out = st.out_channels
    block_input = x
    if st.preact:
        x = b.add(f"{p}.bn1", BatchNorm(ctx.in_channels), x)
        x = b.add(f"{p}.relu1", ReLU(), x)
        y = b.add(
            f"{p}.conv1",
            Conv(ctx.in_channels, st.width, 3, ctx.stride, 1),
            x,
            origin=st.origin("stride"),
        )
        y = b.add(f"{p}.bn2", BatchNorm(st.width), y)
        y = b.add(f"{p}.relu2", ReLU(), y)
        y = b.add(f"{p}.conv2", Conv(st.width, out, 3, 1, 1), y)
    else:
        y = b.add(
            f"{p}.conv1",
            Conv(ctx.in_channels, st.width, 3, ctx.stride, 1),
            x,
            origin=st.origin("stride"),
        )
        y = b.add(f"{p}.bn1", BatchNorm(st.width), y)
        y = b.add(f"{p}.relu1", ReLU(), y)
        y = b.add(f"{p}.conv2", Conv(st.width, out, 3, 1, 1), y)
        y = b.add(f"{p}.bn2", BatchNorm(out, zero_init=st.zero_init_last_bn), y)
    if st.se_ratio > 0:
        y = lower_se(b, y, p, out, st.se_ratio, st.origin("se_ratio"))
    shortcut = lower_shortcut(b, x if st.preact else block_input, ctx, out)
    y = b.add(f"{p}.add", Add(), y, shortcut)
    if not st.preact:
        y = b.add(f"{p}.relu2", ReLU(), y)
    return y
