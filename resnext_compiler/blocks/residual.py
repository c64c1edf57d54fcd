"""The residual block around a branch (He et al. 2016, Fig. 2; pre-activation: He et al. 2016b).

    post-activation:  branch -> last BN -> [SE] -> + shortcut -> ReLU
    pre-activation:   BN -> ReLU -> branch -> [SE] -> + shortcut   (the shortcut reads after ReLU)

Every block type shares this frame and differs only in its branch: the bottleneck's
1x1-3x3-1x1 (in forms A/B/C) or the basic block's 3x3-3x3.
"""

from __future__ import annotations

from collections.abc import Callable

from resnext_compiler.blocks import BlockContext
from resnext_compiler.blocks.shortcut import lower_shortcut
from resnext_compiler.blocks.squeeze_excitation import lower_se
from resnext_compiler.ir import BlockRecord, GraphBuilder
from resnext_compiler.ops import Add, BatchNorm, ReLU

BranchEmitter = Callable[[GraphBuilder, str, BlockRecord], str]


def lower_residual(b: GraphBuilder, x: str, ctx: BlockContext, branch: BranchEmitter,
                   convs: int) -> str:
    """Append one residual block whose branch has `convs` convs (torchvision names the last
    BN and ReLU after them: `bn3`/`relu3` in a bottleneck, `bn2`/`relu2` in a basic block)."""
    st, p, out = ctx.stage, ctx.prefix, ctx.stage.out_channels
    block_input = x
    if st.preact:
        x = b.add(f"{p}.bn1", BatchNorm(ctx.in_channels), x)
        x = b.add(f"{p}.relu1", ReLU(), x)
    y = branch(b, x, ctx.record)
    if not st.preact:
        y = b.add(f"{p}.bn{convs}", BatchNorm(out, zero_init=st.zero_init_last_bn), y)
    if st.se_ratio > 0:
        y = lower_se(b, y, p, out, st.se_ratio, st.origin("se_ratio"))
    shortcut = lower_shortcut(b, x if st.preact else block_input, ctx, out)
    y = b.add(f"{p}.add", Add(), y, shortcut)
    if not st.preact:
        y = b.add(f"{p}.relu{convs}", ReLU(), y)
    return y


def inner_norm_names(preact: bool, convs: int) -> list[tuple[str, str]]:
    """(BN, ReLU) names after each conv but the last: `bn1`/`relu1`, ... (torchvision's);
    pre-activation shifts them by one because `bn1`/`relu1` sit before the first conv."""
    first = 2 if preact else 1
    return [(f"bn{i}", f"relu{i}") for i in range(first, first + convs - 1)]
