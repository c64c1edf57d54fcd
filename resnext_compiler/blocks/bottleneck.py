"""The ResNeXt bottleneck block (Xie et al. 2017, Fig. 3) in its three equivalent forms.

Width of one path d = floor(width * base_width / 64); the grouped width is d * C
(the seed's resnext.lua). Stride sits on the 3x3 conv, as in the seed and torchvision.

Form C: 1x1 (in -> dC), grouped 3x3 (dC -> dC, C groups), 1x1 (dC -> out)   Fig. 3(c)
Form B: C paths of 1x1 (in -> d) and 3x3 (d -> d), concatenated, one 1x1    Fig. 3(b)
Form A: C paths of 1x1, 3x3, 1x1 (d -> out), summed                          Fig. 3(a)

BN is per channel, so per-path BNs over d channels hold exactly the parameters of one BN
over dC channels; in form A the last BN comes after the sum (it is linear, so the forms
stay equivalent). All three forms therefore have identical parameter counts.
"""

from __future__ import annotations

from typing import Literal

from resnext_compiler.blocks import BlockContext, BlockOption, BlockType
from resnext_compiler.blocks.grouped import GROUPED_OPTIONS, check_grouped
from resnext_compiler.blocks.residual import inner_norm_names, lower_residual
from resnext_compiler.ir import BlockRecord, GraphBuilder
from resnext_compiler.ops import Add, BatchNorm, Concat, Conv, ReLU

FORMS = ("A", "B", "C")
FORM = BlockOption(
    Literal[FORMS], "C",
    "A: explicit paths summed; B: paths concatenated; C: grouped conv (Fig. 3).",
)


def lower_bottleneck(b: GraphBuilder, x: str, ctx: BlockContext) -> str:
    return lower_residual(b, x, ctx, emit_branch, last_norm="bn3", activation="relu3")


def summary(block: BlockRecord) -> str:
    """`bottleneck C=32 d=4` (Xie et al. 2017, Table 1's `[..., C=32]`)."""
    return f"bottleneck C={block.cardinality} d={block.path_width}"


def emit_branch(b: GraphBuilder, x: str, block: BlockRecord) -> str:
    """Append the residual branch of `block` (conv1 ... conv3) in `block.form`, reading `x`.

    The one place forms A/B/C are spelled out: lowering and the form rewrite
    (`passes/forms.py`) both call it. Returns the branch's output value.
    """
    p, form = block.prefix, block.form
    d, dc, out = block.path_width, block.group_width, block.out_channels
    if form == "C":
        y = _path(b, x, p, block, dc, block.cardinality)
        return b.add(f"{p}.conv3", Conv(dc, out, 1), y, origin=block.cardinality_origin)
    ends = []
    for i in range(block.cardinality):
        q = f"{p}.paths.{i}"
        y = _path(b, x, q, block, d, 1)
        if form == "A":
            y = b.add(f"{q}.conv3", Conv(d, out, 1), y, origin=block.cardinality_origin)
        ends.append(y)
    if form == "A":
        return b.add(f"{p}.sum", Add(), *ends) if len(ends) > 1 else ends[0]
    y = b.add(f"{p}.concat", Concat(), *ends) if len(ends) > 1 else ends[0]
    return b.add(f"{p}.conv3", Conv(dc, out, 1), y, origin=block.cardinality_origin)


def branch_norm_names(preact: bool) -> list[tuple[str, str]]:
    """(BN, ReLU) names after conv1 and after conv2."""
    return inner_norm_names(preact, convs=3)


def _path(b: GraphBuilder, x: str, q: str, block: BlockRecord, width: int, groups: int) -> str:
    """conv1 (in -> width), BN, ReLU, 3x3 conv2 (width -> width, `groups`), BN, ReLU."""
    (bn_a, relu_a), (bn_b, relu_b) = branch_norm_names(block.preact)
    y = b.add(f"{q}.conv1", Conv(block.in_channels, width, 1), x, origin=block.cardinality_origin)
    y = b.add(f"{q}.{bn_a}", BatchNorm(width), y)
    y = b.add(f"{q}.{relu_a}", ReLU(), y)
    y = b.add(f"{q}.conv2", Conv(width, width, 3, block.stride, 1, groups), y,
              origin=block.stride_origin)
    y = b.add(f"{q}.{bn_b}", BatchNorm(width), y)
    return b.add(f"{q}.{relu_b}", ReLU(), y)


BLOCK_TYPE = BlockType(
    name="bottleneck",
    description="bottleneck (1x1-3x3-1x1; ResNet-50 and up, ResNeXt)",
    lower=lower_bottleneck,
    summary=summary,
    expansion=4,
    layers=3,
    options={**GROUPED_OPTIONS, "form": FORM},
    grouped=True,
    forms=FORMS,
    emit_branch=emit_branch,
    check=check_grouped,
)
