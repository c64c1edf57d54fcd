"""The residual block around a branch (He et al. 2016, Fig. 2; pre-activation: He et al. 2016b).

    post-activation:  branch -> last BN -> [SE] -> + shortcut -> ReLU
    pre-activation:   BN -> ReLU -> branch -> [SE] -> + shortcut   (the shortcut reads after ReLU)

Every block type shares this frame and differs only in its branch: the bottleneck's
1x1-3x3-1x1 (in forms A/B/C), the basic block's 3x3-3x3, the selective-kernel block's paths.
"""

from __future__ import annotations

from resnext_compiler.blocks import BlockContext, BranchEmitter
from resnext_compiler.blocks.shortcut import lower_shortcut
from resnext_compiler.blocks.squeeze_excitation import lower_se
from resnext_compiler.ir import GraphBuilder
from resnext_compiler.ops import Add, BatchNorm, ReLU


def lower_residual(b: GraphBuilder, x: str, ctx: BlockContext, branch: BranchEmitter,
                   last_norm: str, activation: str) -> str:
    """Append one residual block: `last_norm` and `activation` name the BN after the branch
    and the ReLU after the sum (torchvision's `bn3`/`relu3` in a bottleneck, `bn2`/`relu2` in
    a basic block; timm's `conv3.bn`/`act` in a selective-kernel block)."""
    st, p, out = ctx.stage, ctx.prefix, ctx.stage.out_channels
    block_input = x
    if st.preact:
        x = b.add(f"{p}.bn1", BatchNorm(ctx.in_channels), x)
        x = b.add(f"{p}.relu1", ReLU(), x)
    y = branch(b, x, ctx.record)
    if not st.preact:
        y = b.add(f"{p}.{last_norm}", BatchNorm(out, zero_init=st.zero_init_last_bn), y)
    if st.se_ratio > 0:
        y = lower_se(b, y, p, out, st.se_ratio, st.origin("se_ratio"))
    shortcut = lower_shortcut(b, x if st.preact else block_input, ctx, out)
    y = b.add(f"{p}.add", Add(), y, shortcut)
    if not st.preact:
        y = b.add(f"{p}.{activation}", ReLU(), y)
    return y


def inner_norm_names(preact: bool, convs: int) -> list[tuple[str, str]]:
    """(BN, ReLU) names after each conv but the last: `bn1`/`relu1`, ... (torchvision's);
    pre-activation shifts them by one because `bn1`/`relu1` sit before the first conv."""
    first = 2 if preact else 1
    return [(f"bn{i}", f"relu{i}") for i in range(first, first + convs - 1)]
