"""Spec -> IR. Checks what only the spec can explain, then appends stem, stages and head.

Problems are collected (all of them, not the first) and raised as one located SpecError.
Map sizes are left to shape inference, whose errors point back at spec lines via `node.origin`.
"""

from __future__ import annotations

from resnext_compiler import __version__
from resnext_compiler.blocks import BlockContext
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
from resnext_compiler.spec import ResolvedStage, Spec, field_diagnostic
from resnext_compiler.stems import stem_types


def check_spec(spec: Spec) -> list[Diagnostic]:
    """Problems of the stage fields themselves: block-type options (the width rule, ...).

    Feature-map sizes are not checked here: shape inference (`passes.shapes`) does that on the
    lowered graph, and `pipeline.compile_spec` maps its errors back to spec lines.
    """
    problems: list[Diagnostic] = []
    for stage in spec.resolved_stages():
        problems.extend(_check_stage(spec, stage))
    return problems


def _check_stage(spec: Spec, stage: ResolvedStage) -> list[Diagnostic]:
    """The block type's own checks, and options set that the block type does not read."""
    block_type = stage.block_type
    out = []
    for name in stage.foreign_options():
        reads = ", ".join(block_type.options) or "no block options"
        out.append(field_diagnostic(spec, stage.origin(name),
                                    f"the {block_type.name} block has no {name} (it reads "
                                    f"{reads}); remove {name} or choose another block type"))
    for name, message in block_type.check(stage):
        out.append(field_diagnostic(spec, stage.origin(name), message))
    return out


def _shortcut_problem(spec: Spec, stage: ResolvedStage, in_channels: int) -> Diagnostic | None:
    if spec.shortcut == "A" and stage.out_channels < in_channels:
        return field_diagnostic(
            spec,
            f"stages[{stage.index}].width",
            f"shortcut A cannot reduce channels ({in_channels} -> {stage.out_channels}); "
            f"use shortcut B or C",
        )
    return None


def lower(spec: Spec) -> Graph:
    """Lower a validated spec to an IR graph (shapes are filled in by `passes.infer_shapes`)."""
    problems = check_spec(spec)  # raised after lowering, with the shortcut problems
    shape = TensorShape(spec.input.channels, spec.input.height, spec.input.width)
    b = GraphBuilder(spec.name, shape)
    b.stage, b.block, b.origin = "stem", "stem", "stem"
    x, channels = stem_types()[spec.stem].lower(b, spec.input.channels)
    preact = False
    for stage in spec.resolved_stages():
        problem = _shortcut_problem(spec, stage, channels)
        if problem is not None:
            problems.append(problem)
        lower_block = stage.block_type.lower
        b.stage = stage.name
        for i in range(stage.depth):
            ctx = BlockContext(
                prefix=f"{stage.name}.{i}",
                in_channels=channels,
                stride=stage.stride if i == 0 else 1,
                stage=stage,
                shortcut=spec.shortcut,
                avg_down=spec.avg_down,
            )
            record = ctx.record
            b.block, b.origin = record.prefix, record.origin
            b.records.append(record)
            x = lower_block(b, x, ctx)
            channels = stage.out_channels
        preact = stage.preact
    if problems:
        raise SpecError(problems)
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
