"""The selective-kernel bottleneck (Li et al. 2019, "Selective Kernel Networks", Fig. 1), laid
out as timm's `SelectiveKernelBottleneck`, whose state-dict names the nodes keep.

The ResNeXt bottleneck's grouped 3x3 conv becomes M paths (3x3 grouped convs with dilations
1, 2, ...: a 3x3 with dilation 2 sees what a 5x5 sees), fused by attention:

    U = sum_i U_i                        (`conv2.attn.sum`)
    z = ReLU(BN(W_reduce avgpool(U)))    (`fc_reduce`, Eq. 1-2; width max(dC/r, L))
    a = softmax over paths of W_select z (`fc_select`, `softmax`, Eq. 5)
    V = sum_i a_i * U_i                  (`select`, Eq. 6)

    conv1 (1x1, in -> dC), SK conv2 (dC -> dC), conv3 (1x1, dC -> out), BN, + shortcut, ReLU

With `split_input` each path reads its own 1/M of the channels (timm's skresnet50).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from resnext_compiler.blocks import BlockContext, BlockOption, BlockType
from resnext_compiler.blocks.grouped import GROUPED_OPTIONS, check_grouped
from resnext_compiler.blocks.residual import lower_residual
from resnext_compiler.blocks.squeeze_excitation import reduced_channels
from resnext_compiler.ir import BlockRecord, GraphBuilder
from resnext_compiler.limits import MAX_CHANNELS
from resnext_compiler.ops import (
    Add,
    BatchNorm,
    Conv,
    GlobalAvgPool,
    Mul,
    Op,
    PathSoftmax,
    ReLU,
    Slice,
)

if TYPE_CHECKING:
    from resnext_compiler.spec import ResolvedStage

MAX_PATHS = 8
MAX_DILATION = 16
# timm's make_divisible rounds the attention width up where rounding lost over 10%.
ATTENTION_ROUND_LIMIT = 0.9

OPTIONS = {
    **GROUPED_OPTIONS,
    "dilations": BlockOption(
        list[Annotated[int, Field(ge=1, le=MAX_DILATION)]], [1, 2],
        "Dilation of each path's 3x3 conv, one entry per path (Li et al. 2019: 1 and 2, a "
        "3x3 dilated by 2 standing in for a 5x5).",
        {"min_length": 1, "max_length": MAX_PATHS},
    ),
    "attention_ratio": BlockOption(
        float, 1 / 16, "Attention width as a fraction of the grouped width (1/r, r = 16).",
        {"gt": 0, "le": 1},
    ),
    "attention_divisor": BlockOption(
        int, 32, "Attention width: a multiple of this, at least this (L = 32).",
        {"ge": 1, "le": MAX_CHANNELS},
    ),
    "split_input": BlockOption(
        bool, False, "Each path reads its own share of the input channels (timm's skresnet).",
    ),
}


def lower_selective_kernel(b: GraphBuilder, x: str, ctx: BlockContext) -> str:
    return lower_residual(b, x, ctx, emit_branch, last_norm="conv3.bn", activation="act")


def emit_branch(b: GraphBuilder, x: str, block: BlockRecord) -> str:
    """conv1 (1x1 + BN + ReLU), the selective-kernel conv2, conv3 (1x1; its BN is the frame's)."""
    p, width = block.prefix, block.group_width
    y = _conv_norm_act(b, x, f"{p}.conv1", Conv(block.in_channels, width, 1),
                       block.cardinality_origin)
    y = _selective_kernel(b, y, f"{p}.conv2", block)
    return b.add(f"{p}.conv3.conv", Conv(width, block.out_channels, 1), y,
                 origin=block.cardinality_origin)


def _conv_norm_act(b: GraphBuilder, x: str, q: str, conv: Op, origin: str) -> str:
    """timm's ConvNormAct: `q.conv`, `q.bn`, then a ReLU."""
    y = b.add(f"{q}.conv", conv, x, origin=origin)
    y = b.add(f"{q}.bn", BatchNorm(conv.out_channels), y)  # type: ignore[attr-defined]
    return b.add(f"{q}.act", ReLU(), y)


def _selective_kernel(b: GraphBuilder, x: str, p: str, block: BlockRecord) -> str:
    width = block.group_width
    dilations = block.option("dilations")
    paths = len(dilations)  # type: ignore[arg-type]
    in_width = width // paths if block.option("split_input") else width
    ends = []
    for i, dilation in enumerate(dilations):  # type: ignore[arg-type]
        q = f"{p}.paths.{i}"
        source = x
        if in_width != width:
            source = b.add(f"{q}.split", Slice(i * in_width, (i + 1) * in_width), x)
        conv = Conv(in_width, width, 3, block.stride, dilation, min(width, block.cardinality),
                    dilation=dilation)
        ends.append(_conv_norm_act(b, source, q, conv, block.stride_origin))
    a = b.add(f"{p}.attn.sum", Add(), *ends) if paths > 1 else ends[0]
    a = b.add(f"{p}.attn.pool", GlobalAvgPool(), a)
    reduced = reduced_channels(width, block.option("attention_ratio"),  # type: ignore[arg-type]
                               block.option("attention_divisor"),  # type: ignore[arg-type]
                               ATTENTION_ROUND_LIMIT)
    a = _conv_norm_act_attention(b, a, f"{p}.attn", width, reduced)
    a = b.add(f"{p}.attn.fc_select", Conv(reduced, width * paths, 1), a)
    a = b.add(f"{p}.attn.softmax", PathSoftmax(paths), a)
    weighted = []
    for i, end in enumerate(ends):
        share = b.add(f"{p}.attn.weights.{i}", Slice(i * width, (i + 1) * width), a)
        weighted.append(b.add(f"{p}.paths.{i}.scale", Mul(), end, share))
    return b.add(f"{p}.select", Add(), *weighted) if paths > 1 else weighted[0]


def _conv_norm_act_attention(b: GraphBuilder, x: str, q: str, width: int, reduced: int) -> str:
    """timm's SelectiveKernelAttn names: `fc_reduce`, `bn`, `act`."""
    y = b.add(f"{q}.fc_reduce", Conv(width, reduced, 1), x)
    y = b.add(f"{q}.bn", BatchNorm(reduced), y)
    return b.add(f"{q}.act", ReLU(), y)


def check(stage: ResolvedStage) -> list[tuple[str, str]]:
    problems = check_grouped(stage)
    if stage.preact:
        problems.append(("preact", "the selective_kernel block has no pre-activation form"))
    paths = len(stage.options["dilations"])
    if stage.options["split_input"] and not problems and (
            stage.group_width % (paths * stage.cardinality)):
        problems.append(("split_input",
                         f"split_input gives each of {paths} paths {stage.group_width} / {paths} "
                         f"channels, which {stage.cardinality} groups cannot share"))
    return problems


def summary(block: BlockRecord) -> str:
    """`selective_kernel C=32 d=4 dilations 1,2`."""
    dilations = ",".join(str(d) for d in block.option("dilations"))  # type: ignore[attr-defined]
    return f"selective_kernel C={block.cardinality} d={block.path_width} dilations {dilations}"


BLOCK_TYPE = BlockType(
    name="selective_kernel",
    description="selective_kernel (SKNet, Li et al. 2019: dilated 3x3 paths fused by attention)",
    lower=lower_selective_kernel,
    summary=summary,
    expansion=4,
    layers=3,
    options=OPTIONS,
    grouped=True,
    check=check,
)
