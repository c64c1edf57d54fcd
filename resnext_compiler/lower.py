"""Spec -> IR. Checks what only the spec can explain, then appends stem, stages and head.

Problems are collected (all of them, not the first) and raised as one located SpecError.
"""

from __future__ import annotations

from resnext_compiler import __version__
from resnext_compiler.blocks import BLOCKS, BlockContext
from resnext_compiler.errors import Diagnostic, SpecError
from resnext_compiler.ir import Graph, GraphBuilder
from resnext_compiler.ops import (
    BatchNorm,
    Dropout,
    Flatten,
    GlobalAvgPool,
    Linear,
    ReLU,
    TensorShape,
)
from resnext_compiler.spec import ResolvedStage, Spec
from resnext_compiler.stems import STEM_STRIDES, STEMS


def _field_tuple(path: str) -> tuple[str | int, ...]:
    """`stages[1].stride` -> ('stages', 1, 'stride')."""
    out: list[str | int] = []
    for part in path.replace("]", "").split("."):
        name, *indices = part.split("[")
        if name:
            out.append(name)
        out.extend(int(i) for i in indices)
    return tuple(out)


def diagnostic(spec: Spec, field: str, message: str) -> Diagnostic:
    return Diagnostic(message, field, spec.locate(_field_tuple(field)))


def check_spec(spec: Spec) -> list[Diagnostic]:
    """Problems a valid-looking spec can still have: widths, groups, shrinking maps."""
    problems: list[Diagnostic] = []
    height, width = spec.input.height, spec.input.width
    for kernel, stride, padding in STEM_STRIDES[spec.stem]:
        if height < stride or width < stride:
            problems.append(
                diagnostic(
                    spec,
                    "input",
                    f"a {spec.input.height}x{spec.input.width} input is too small for the "
                    f"{spec.stem} stem (a stride-{stride} layer would see {height}x{width})",
                )
            )
            return problems
        height = (height + 2 * padding - kernel) // stride + 1
        width = (width + 2 * padding - kernel) // stride + 1
    in_channels = 64
    for stage in spec.resolved_stages():
        problems.extend(_check_stage(spec, stage, in_channels))
        if stage.stride > 1:
            # A stride larger than the map has nothing left to downsample: the map would
            # already be smaller than one output pixel per stride step.
            if height < stage.stride or width < stage.stride:
                problems.append(
                    diagnostic(
                        spec,
                        f"stages[{stage.index}].stride",
                        f"stride {stage.stride} is too large: {stage.name} receives a "
                        f"{height}x{width} feature map (input {spec.input.height}x"
                        f"{spec.input.width}); use a larger input or a smaller stride",
                    )
                )
            height = (height - 1) // stage.stride + 1
            width = (width - 1) // stage.stride + 1
        in_channels = stage.out_channels
    return problems


def _check_stage(spec: Spec, stage: ResolvedStage, in_channels: int) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    if stage.type == "basic":
        if stage.cardinality != 1:
            out.append(
                diagnostic(
                    spec,
                    stage.origin("cardinality"),
                    "the basic block has no grouped conv; cardinality must be 1 "
                    "(use type: bottleneck for ResNeXt)",
                )
            )
        if stage.explicit_group_width is not None:
            out.append(
                diagnostic(
                    spec,
                    stage.origin("group_width"),
                    "group_width applies to bottleneck blocks only",
                )
            )
        if stage.form != "C":
            out.append(
                diagnostic(
                    spec, stage.origin("form"), "block forms A/B/C apply to bottleneck blocks only"
                )
            )
    elif stage.explicit_group_width is not None:
        if stage.explicit_group_width % stage.cardinality:
            out.append(
                diagnostic(
                    spec,
                    stage.origin("group_width"),
                    f"group width {stage.explicit_group_width} is not divisible by cardinality "
                    f"{stage.cardinality} (each of the C paths needs the same width)",
                )
            )
    else:
        path_width = stage.width * stage.base_width // 64
        if path_width == 0:
            out.append(
                diagnostic(
                    spec,
                    stage.origin("base_width"),
                    f"bottleneck width floor({stage.width} * {stage.base_width} / 64) is 0; "
                    f"raise base_width or width",
                )
            )
    if spec.shortcut == "A" and stage.out_channels < in_channels:
        out.append(
            diagnostic(
                spec,
                f"stages[{stage.index}].width",
                f"shortcut A cannot reduce channels ({in_channels} -> {stage.out_channels}); "
                f"use shortcut B or C",
            )
        )
    return out


def lower(spec: Spec) -> Graph:
    """Lower a validated spec to an IR graph (shapes are filled in by `passes.infer_shapes`)."""
    problems = check_spec(spec)
    if problems:
        raise SpecError(problems)
    shape = TensorShape(spec.input.channels, spec.input.height, spec.input.width)
    b = GraphBuilder(spec.name, shape)
    b.stage, b.block, b.origin = "stem", "stem", "stem"
    x, channels = STEMS[spec.stem](b, spec.input.channels)
    preact = False
    for stage in spec.resolved_stages():
        lower_block = BLOCKS[stage.type]
        b.stage = stage.name
        for i in range(stage.depth):
            b.block = f"{stage.name}.{i}"
            b.origin = f"stages[{stage.index}]"
            ctx = BlockContext(
                prefix=b.block,
                in_channels=channels,
                stride=stage.stride if i == 0 else 1,
                stage=stage,
                shortcut=spec.shortcut,
                avg_down=spec.avg_down,
            )
            x = lower_block(b, x, ctx)
            channels = stage.out_channels
        preact = stage.preact
    b.stage, b.block, b.origin = "head", "head", "head"
    if preact:  # pre-activation networks normalise once more before pooling
        x = b.add("final_bn", BatchNorm(channels), x)
        x = b.add("final_relu", ReLU(), x)
    x = b.add("avgpool", GlobalAvgPool(), x)
    x = b.add("flatten", Flatten(), x)
    if spec.head.dropout > 0:
        x = b.add("dropout", Dropout(spec.head.dropout), x, origin="head.dropout")
    x = b.add("fc", Linear(channels, spec.head.num_classes), x, origin="head.num_classes")
    metadata = {
        "spec_name": spec.name,
        "spec_hash": spec.spec_hash(),
        "compiler_version": __version__,
    }
    return b.build(x, metadata)
