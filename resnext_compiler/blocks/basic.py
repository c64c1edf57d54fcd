"""The basic block (He et al. 2016, Fig. 5 left): two 3x3 convs; ResNet-18/34."""

from __future__ import annotations

from resnext_compiler.blocks import BlockContext, BlockType
from resnext_compiler.blocks.residual import inner_norm_names, lower_residual
from resnext_compiler.ir import BlockRecord, GraphBuilder
from resnext_compiler.ops import BatchNorm, Conv, ReLU


def lower_basic(b: GraphBuilder, x: str, ctx: BlockContext) -> str:
    return lower_residual(b, x, ctx, emit_basic_branch, last_norm="bn2", activation="relu2")


def summary(block: BlockRecord) -> str:
    return f"basic w={block.path_width}"


def emit_basic_branch(b: GraphBuilder, x: str, block: BlockRecord) -> str:
    """3x3 conv (stride on the first), BN, ReLU, 3x3 conv."""
    p, width = block.prefix, block.path_width
    ((bn, relu),) = inner_norm_names(block.preact, convs=2)
    y = b.add(f"{p}.conv1", Conv(block.in_channels, width, 3, block.stride, 1), x,
              origin=block.stride_origin)
    y = b.add(f"{p}.{bn}", BatchNorm(width), y)
    y = b.add(f"{p}.{relu}", ReLU(), y)
    return b.add(f"{p}.conv2", Conv(width, block.out_channels, 3, 1, 1), y)


BLOCK_TYPE = BlockType(
    name="basic",
    description="basic (3x3-3x3; ResNet-18/34)",
    lower=lower_basic,
    summary=summary,
    expansion=1,
    layers=2,
)
