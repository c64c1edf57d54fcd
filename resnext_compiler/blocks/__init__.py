"""Block types: one registered `BlockType` per kind of residual block, the only list of them.

A block type owns its words: the spec options it reads (`options`, which become fields of the
spec's `block:` and of every stage, with their checks and JSON Schema), its default
`expansion`, its lowering (appending the block's nodes to a `GraphBuilder`), what its
`ir.BlockRecord` says, its one-line `summary` (for `inspect`, `dot` and the torch source),
whether the ResNeXt width rule gives it C paths of width d (`grouped`) and whether it has the
equivalent forms A/B/C (`forms`). Its cost is not restated anywhere: parameters and MACs come
from the ops its lowering appends.

Built-in types live one per file in this folder and are listed in `_BUILTINS`; third parties
register theirs under the entry-point group `resnext_compiler.blocks` (see `plugins.py`).
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from resnext_compiler.ir import BlockRecord, GraphBuilder
from resnext_compiler.plugins import BLOCKS_GROUP, load_plugins

if TYPE_CHECKING:
    from resnext_compiler.spec import ResolvedStage

# module:attribute of each built-in block type, in the order the schema lists them
_BUILTINS = (
    "resnext_compiler.blocks.bottleneck:BLOCK_TYPE",
    "resnext_compiler.blocks.basic:BLOCK_TYPE",
    "resnext_compiler.blocks.selective_kernel:BLOCK_TYPE",
)


@dataclass(frozen=True)
class BlockOption:
    """A spec field a block type reads: set in `block:` for every stage, or in one stage.

    `annotation` is its Python type, `constraints` pydantic's (`ge`, `le`, `min_length`...).
    Two block types that read the same option share one declaration (`blocks/grouped.py`).
    """

    annotation: Any
    default: Any
    description: str
    constraints: Mapping[str, Any] = field(default_factory=dict)


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
        block_type = st.block_type
        own = {name: st.options[name] for name in block_type.options
               if name not in RECORD_FIELDS}
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
            options=tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in own.items()),
        )


# Options every record states in its own fields (the paper's C x d and the form).
RECORD_FIELDS = ("cardinality", "base_width", "group_width", "form")

BlockLowering = Callable[[GraphBuilder, str, BlockContext], str]
BranchEmitter = Callable[[GraphBuilder, str, BlockRecord], str]
StageCheck = Callable[["ResolvedStage"], list[tuple[str, str]]]


def _no_problems(stage: ResolvedStage) -> list[tuple[str, str]]:
    return []


@dataclass(frozen=True)
class BlockType:
    """One kind of residual block (see the module docstring).

    `check(stage)` returns (option, message) pairs for what the stage asks that this block
    cannot build; each is reported at the spec line that set the option. `emit_branch` is
    the residual branch in a given form, for the form rewrite (`passes/forms.py`), when
    `forms` is not empty. `layers` is how many weighted layers one block counts for in a
    network's depth as the papers name it (ResNeXt-50: 2 + 3 x 16).
    """

    name: str
    description: str
    lower: BlockLowering
    summary: Callable[[BlockRecord], str]
    expansion: int
    layers: int
    options: Mapping[str, BlockOption] = field(default_factory=dict)
    grouped: bool = False
    forms: tuple[str, ...] = ()
    emit_branch: BranchEmitter | None = None
    check: StageCheck = _no_problems

    def path_width(self, stage: ResolvedStage) -> int:
        """d, the width of one path: the ResNeXt width rule for grouped blocks (or an explicit
        group width shared by the C paths), else the stage width."""
        if not self.grouped:
            return stage.width
        from resnext_compiler.blocks.grouped import bottleneck_path_width

        if stage.explicit_group_width is not None:
            return stage.explicit_group_width // stage.cardinality
        return bottleneck_path_width(stage.width, stage.base_width)


def _load(reference: str) -> BlockType:
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


@functools.cache
def block_types() -> dict[str, BlockType]:
    """Every block type by name: the built-ins, then plugins (entry points)."""
    builtins = {bt.name: bt for bt in map(_load, _BUILTINS)}
    registry = load_plugins(BLOCKS_GROUP, BlockType, builtins, lambda bt: bt.name)
    declared: dict[str, BlockOption] = {}
    for name, bt in list(registry.items()):
        clash = [o for o, decl in bt.options.items() if declared.get(o, decl) != decl]
        if clash:  # a plugin redeclaring a built-in option differently
            warnings.warn(f"block type {name!r} declares option(s) {clash} unlike an earlier "
                          f"block type; ignored", stacklevel=2)
            del registry[name]
            continue
        declared.update(bt.options)
    return registry


def block_options() -> dict[str, tuple[BlockOption, tuple[str, ...]]]:
    """Every option some block type reads, with the names of the types that read it."""
    out: dict[str, tuple[BlockOption, tuple[str, ...]]] = {}
    for bt in block_types().values():
        for name, option in bt.options.items():
            owners = out[name][1] if name in out else ()
            out[name] = (option, (*owners, bt.name))
    return out


def block_type(name: str) -> BlockType:
    return block_types()[name]
