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

from resnext_compiler.blocks import BlockContext
from resnext_compiler.blocks.shortcut import lower_shortcut
from resnext_compiler.blocks.squeeze_excitation import lower_se
from resnext_compiler.ir import BlockRecord, GraphBuilder
from resnext_compiler.ops import Add, BatchNorm, Concat, Conv, ReLU


def lower_bottleneck(b: GraphBuilder, x: str, ctx: BlockContext) -> str:
    st = ctx.stage
    p = ctx.prefix
    out = st.out_channels
    block_input = x
    if st.preact:
        x = b.add(f"{p}.bn1", BatchNorm(ctx.in_channels), x)
        x = b.add(f"{p}.relu1", ReLU(), x)
    shortcut_input = x if st.preact else block_input
    y = emit_branch(b, x, ctx.record)
    if not st.preact:
        y = b.add(f"{p}.bn3", BatchNorm(out, zero_init=st.zero_init_last_bn), y)
    if st.se_ratio > 0:
        y = lower_se(b, y, p, out, st.se_ratio, st.origin("se_ratio"))
    shortcut = lower_shortcut(b, shortcut_input, ctx, out)
    y = b.add(f"{p}.add", Add(), y, shortcut)
    if not st.preact:
        y = b.add(f"{p}.relu3", ReLU(), y)
    return y


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


def branch_norm_names(preact: bool) -> tuple[tuple[str, str], tuple[str, str]]:
    """(BN, ReLU) names after conv1 and after conv2 (torchvision's; pre-activation shifts them
    by one because bn1/relu1 sit before conv1)."""
    if preact:
        return ("bn2", "relu2"), ("bn3", "relu3")
    return ("bn1", "relu1"), ("bn2", "relu2")


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
