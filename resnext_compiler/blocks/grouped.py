"""The ResNeXt width rule and the options of every block with C grouped paths of width d.

Shared by the bottleneck and the selective-kernel block (and open to plugins): one
declaration of `cardinality`, `base_width` and `group_width`, one width rule, one check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from resnext_compiler.blocks import BlockOption
from resnext_compiler.limits import MAX_CARDINALITY, MAX_CHANNELS

if TYPE_CHECKING:
    from resnext_compiler.spec import ResolvedStage

CARDINALITY = BlockOption(
    int, 1, "Number of parallel paths C (the seed's -cardinality).",
    {"ge": 1, "le": MAX_CARDINALITY},
)
BASE_WIDTH = BlockOption(
    int, 64, "Bottleneck width d per path at width 64 (the seed's -baseWidth).",
    {"ge": 1, "le": MAX_CHANNELS},
)
GROUP_WIDTH = BlockOption(
    int | None, None,
    "Explicit grouped-conv width (pycls); default floor(width*base_width/64)*C.",
    {"ge": 1, "le": MAX_CHANNELS},
)
GROUPED_OPTIONS = {"cardinality": CARDINALITY, "base_width": BASE_WIDTH,
                   "group_width": GROUP_WIDTH}


def bottleneck_path_width(width: int, base_width: int) -> int:
    """The ResNeXt width rule, d = floor(width * base_width / 64): `base_width` is d at the
    first stage's width 64 and d grows with the stage (Xie et al. 2017, Table 1)."""
    return width * base_width // 64


def check_grouped(stage: ResolvedStage) -> list[tuple[str, str]]:
    """An explicit group width the C paths cannot share, or the width rule giving d = 0."""
    if stage.explicit_group_width is not None:
        if stage.explicit_group_width % stage.cardinality:
            return [("group_width",
                     f"group width {stage.explicit_group_width} is not divisible by cardinality "
                     f"{stage.cardinality} (each of the C paths needs the same width)")]
    elif stage.path_width == 0:
        return [("base_width",
                 f"bottleneck width floor({stage.width} * {stage.base_width} / 64) is 0; "
                 f"raise base_width or width")]
    return []
