"""Block lowerings: one file per block type, registered in `BLOCKS`.

A block lowering appends the nodes of one residual block to a `GraphBuilder` and returns
the block's output value. It receives a `BlockContext` with everything it may need; the
context's `record` is what the graph remembers about the block (`ir.BlockRecord`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from resnext_compiler.ir import BlockRecord, GraphBuilder
from resnext_compiler.spec import ResolvedStage


@dataclass(frozen=True)
class BlockContext:
    prefix: str  # module path of the block, e.g. "layer2.0"
    in_channels: int
    stride: int  # this block's stride (the stage stride for block 0, else 1)
    stage: ResolvedStage
    shortcut: str  # "A" | "B" | "C"
    avg_down: bool

    @property
    def record(self) -> BlockRecord:
        from resnext_compiler.blocks.shortcut import shortcut_kind

        st = self.stage
        return BlockRecord(
            prefix=self.prefix,
            stage=st.name,
            type=st.type,
            form=st.form,
            cardinality=st.cardinality,
            path_width=st.path_width,
            in_channels=self.in_channels,
            out_channels=st.out_channels,
            stride=self.stride,
            preact=st.preact,
            squeeze_excitation=st.se_ratio > 0,
            shortcut=shortcut_kind(self),
            origin=f"stages[{st.index}]",
            cardinality_origin=st.origin("cardinality"),
            stride_origin=st.origin("stride"),
        )


BlockLowering = Callable[[GraphBuilder, str, BlockContext], str]


def _registry() -> dict[str, BlockLowering]:
    from resnext_compiler.blocks.basic import lower_basic
    from resnext_compiler.blocks.bottleneck import lower_bottleneck

    return {"bottleneck": lower_bottleneck, "basic": lower_basic}


BLOCKS: dict[str, BlockLowering] = _registry()
