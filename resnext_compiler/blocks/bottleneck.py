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
from resnext_compiler.ir import GraphBuilder
from resnext_compiler.ops import Add, BatchNorm, Concat, Conv, ReLU


def lower_bottleneck(b: GraphBuilder, x: str, ctx: BlockContext) -> str:
    st = ctx.stage
    p = ctx.prefix
    cardinality, group_width, out = st.cardinality, st.group_width, st.out_channels
    path_width = group_width // cardinality
    card_origin = st.origin("cardinality")
    stride_origin = st.origin("stride")

    block_input = x
    if st.preact:
        x = b.add(f"{p}.bn1", BatchNorm(ctx.in_channels), x)
        x = b.add(f"{p}.relu1", ReLU(), x)
    shortcut_input = x if st.preact else block_input
    names = _names(st.preact)

    if st.form == "C":
        y = b.add(f"{p}.conv1", Conv(ctx.in_channels, group_width, 1), x, origin=card_origin)
        y = _norm_act(b, p, names, 0, group_width, y)
        y = b.add(
            f"{p}.conv2",
            Conv(group_width, group_width, 3, ctx.stride, 1, cardinality),
            y,
            origin=stride_origin,
        )
        y = _norm_act(b, p, names, 1, group_width, y)
        y = b.add(f"{p}.conv3", Conv(group_width, out, 1), y, origin=card_origin)
    else:
        paths = []
        for i in range(cardinality):
            q = f"{p}.paths.{i}"
            y = b.add(f"{q}.conv1", Conv(ctx.in_channels, path_width, 1), x, origin=card_origin)
            y = _norm_act(b, q, names, 0, path_width, y)
            y = b.add(
                f"{q}.conv2",
                Conv(path_width, path_width, 3, ctx.stride, 1),
                y,
                origin=stride_origin,
            )
            y = _norm_act(b, q, names, 1, path_width, y)
            if st.form == "A":
                y = b.add(f"{q}.conv3", Conv(path_width, out, 1), y, origin=card_origin)
            paths.append(y)
        if st.form == "A":
            y = b.add(f"{p}.sum", Add(), *paths) if len(paths) > 1 else paths[0]
        else:
            y = b.add(f"{p}.concat", Concat(), *paths) if len(paths) > 1 else paths[0]
            y = b.add(f"{p}.conv3", Conv(group_width, out, 1), y, origin=card_origin)
    if not st.preact:
        y = b.add(f"{p}.bn3", BatchNorm(out, zero_init=st.zero_init_last_bn), y)
    if st.se_ratio > 0:
        y = lower_se(b, y, p, out, st.se_ratio, st.origin("se_ratio"))
    shortcut = lower_shortcut(b, shortcut_input, ctx, out)
    y = b.add(f"{p}.add", Add(), y, shortcut)
    if not st.preact:
        y = b.add(f"{p}.relu3", ReLU(), y)
    return y


def _names(preact: bool) -> list[tuple[str, str]]:
    """(BN name, ReLU name) after conv1 and conv2."""
    if preact:  # pre-activation: bn2/bn3 sit before conv2/conv3
        return [("bn2", "relu2"), ("bn3", "relu3")]
    return [("bn1", "relu1"), ("bn2", "relu2")]


def _norm_act(
    b: GraphBuilder, prefix: str, names: list[tuple[str, str]], index: int, channels: int, x: str
) -> str:
    bn, relu = names[index]
    x = b.add(f"{prefix}.{bn}", BatchNorm(channels), x)
    return b.add(f"{prefix}.{relu}", ReLU(), x)
