"""The cost budget of a spec, checked before the whole network is lowered.

A spec of a few lines can ask for a network that no machine can build (20,000 blocks, a
65536x65536 input, cardinality 4096 in form A). The numbers are known before any work: every
block of a stage after the first has the same shapes, so the network's cost is the cost of a
*reduced* spec (at most two blocks per stage, lowered and measured with the same typed ops
as everything else, `passes.complexity`) with each stage's second block counted `depth - 1`
times. That costs at most two blocks per stage, whatever the depths, and is exact.

Each measure has a default limit (`DEFAULT_BUDGET`); a spec over it is refused with a located
message naming the stage or field that dominates it and the option that raises it
(`--budget NAME=VALUE` on check, inspect, compile and train).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from resnext_compiler.errors import SpecError, UserError
from resnext_compiler.limits import MAX_ACTIVATION_BYTES, MAX_CHANNELS
from resnext_compiler.spec import ResolvedStage, Spec, field_diagnostic

GiB = 1024**3


class Limits:
    """A set of named integer limits that `NAME=VALUE` assignments raise or lower (the
    `--budget` option of specs; the `limits:` section of a sweep file)."""

    def raised(self, assignments: list[str]) -> Limits:
        """These limits with `NAME=VALUE` assignments applied."""
        names = [f.name for f in fields(self)]  # type: ignore[arg-type]
        changes: dict[str, int] = {}
        for text in assignments:
            name, _, value = text.partition("=")
            name = name.strip()
            if name not in names or not value:
                raise UserError(f"--budget {text!r}: expected NAME=VALUE with NAME one of "
                                f"{', '.join(names)}")
            changes[name] = _parse_amount(value, f"--budget {name}")
        return replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class Budget(Limits):
    """Most a spec may cost. `memory` is the float32 activations of every node at the batch
    (what a training step keeps for the backward pass), in bytes."""

    blocks: int = 2_000  # ResNet-1001 (CIFAR) has 333
    nodes: int = 200_000  # IR nodes; ResNeXt-101 64x4d has 345 in form C, 14,931 in form A
    params: int = 4_000_000_000  # 16 GB of float32 weights
    macs: int = 2_000_000_000_000  # per sample; ResNeXt-101 64x4d at 224 px needs 15.5e9
    memory: int = MAX_ACTIVATION_BYTES


@dataclass(frozen=True)
class SweepBudget(Limits):
    """Most a sweep file may ask for, checked before any point is built or trained: distinct
    points (configurations), seeds per point, and epochs summed over every run."""

    points: int = 64
    seeds: int = 10
    epochs: int = 2_000


DEFAULT_BUDGET = Budget()
UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "kib": 1024,
         "mib": 1024**2, "gib": GiB, "tib": 1024**4}


def _parse_amount(text: str, option: str) -> int:
    """`2000`, `1.5e9`, `8g` (10**9), `64GiB` -> a positive integer below 2**63."""
    text = text.strip().lower()
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number):]
    try:
        value = float(number) * UNITS[unit]
    except (ValueError, KeyError):
        raise UserError(f"{option}: {text!r} is not an amount like 2000, 1.5e9, 8G or 64GiB"
                        ) from None
    if not 1 <= value < 2**63:
        raise UserError(f"{option}: {text!r} must be between 1 and 2**63")
    return int(value)


@dataclass(frozen=True)
class Estimate:
    """The whole network's cost, computed from a reduced spec."""

    blocks: int
    nodes: int
    params: int
    macs: int  # per sample
    activation_bytes: int  # per sample

    def memory(self, batch: int) -> int:
        return self.activation_bytes * batch


def _stage_field(stage: ResolvedStage) -> str:
    return f"stages[{stage.index}]"


def _refuse(spec: Spec, field: str, message: str) -> SpecError:
    return SpecError([field_diagnostic(spec, field, message)])


def estimate(spec: Spec, budget: Budget = DEFAULT_BUDGET) -> tuple[Estimate, dict[str, str]]:
    """The network's cost and, per measure, the spec field that dominates it.

    Refuses (SpecError) before lowering anything when the block count, a derived width or the
    reduced spec's own node count is already over `budget`.
    """
    stages = spec.resolved_stages()
    blocks = sum(stage.depth for stage in stages)
    deepest = max(stages, key=lambda s: s.depth)
    if blocks > budget.blocks:
        raise _refuse(spec, f"{_stage_field(deepest)}.depth",
                      f"the network would have {blocks:,} blocks, over the budget of "
                      f"{budget.blocks:,} (raise it with --budget blocks=N)")
    for stage in stages:
        for name, value in (("width", stage.width), ("group_width", stage.group_width),
                            ("width * expansion", stage.out_channels)):
            if value > MAX_CHANNELS * 64:
                raise _refuse(spec, stage.origin("width") if name != "group_width"
                              else _stage_field(stage),
                              f"{stage.name} would have {name} = {value:,} channels, more "
                              f"than {MAX_CHANNELS * 64:,}")
    # Forms A and B draw each path separately: nodes grow with cardinality. Bound the reduced
    # spec's size before lowering it (a generous upper bound on nodes per block).
    reduced_nodes = sum(min(s.depth, 2) * (32 + (8 * s.cardinality if s.form != "C" else 0))
                        for s in stages)
    if reduced_nodes > budget.nodes:
        widest = max(stages, key=lambda s: s.cardinality if s.form != "C" else 0)
        raise _refuse(spec, widest.origin("cardinality"),
                      f"form {widest.form} with cardinality {widest.cardinality} draws every "
                      f"path: about {reduced_nodes:,} IR nodes in two blocks per stage alone, "
                      f"over the budget of {budget.nodes:,} (use form C, or raise it with "
                      "--budget nodes=N)")
    return _measure(spec, stages)


def _measure(spec: Spec, stages: list[ResolvedStage]) -> tuple[Estimate, dict[str, str]]:
    from resnext_compiler.lower import lower
    from resnext_compiler.passes.complexity import analyse
    from resnext_compiler.passes.shapes import ShapeProblem, infer_shapes

    reduced = spec.model_copy(update={"stages": [
        s.model_copy(update={"depth": min(s.depth, 2)}) for s in spec.stages]})
    reduced._source = spec._source
    graph = lower(reduced)
    try:
        graph = infer_shapes(graph)
    except ShapeProblem:
        # the full compile reports it, located; a budget needs shapes, so count none here
        return Estimate(sum(s.depth for s in stages), len(graph.nodes), 0, 0, 0), {}
    costs = analyse(graph).nodes
    totals = {"nodes": 0, "params": 0, "macs": 0, "activation_bytes": 0}
    by_stage: dict[str, dict[str, int]] = {}
    depth_of = {s.name: s for s in stages}
    for cost in costs:
        stage = depth_of.get(cost.stage)
        # blocks 1..depth-1 of a stage are alike: the reduced spec's block 1 stands for them
        weight = 1
        if stage is not None and cost.block == f"{stage.name}.1":
            weight = stage.depth - 1
        values = {"nodes": 1, "params": cost.params, "macs": cost.macs,
                  "activation_bytes": cost.activation_bytes}
        share = by_stage.setdefault(cost.stage, dict.fromkeys(totals, 0))
        for key, value in values.items():
            totals[key] += weight * value
            share[key] += weight * value
    dominant = {}
    for key in totals:
        name = max(by_stage, key=lambda s: by_stage[s][key])
        dominant[key] = _stage_field(depth_of[name]) if name in depth_of else name
    dominant["memory"] = dominant["activation_bytes"]
    return Estimate(sum(s.depth for s in stages), totals["nodes"], totals["params"],
                    totals["macs"], totals["activation_bytes"]), dominant


def check_budget(spec: Spec, budget: Budget = DEFAULT_BUDGET, batch: int = 1) -> Estimate:
    """Refuse `spec` (SpecError, located) if running it at `batch` would exceed `budget`."""
    cost, dominant = estimate(spec, budget)
    checks = [
        ("nodes", cost.nodes, budget.nodes, "IR nodes", ""),
        ("params", cost.params, budget.params, "parameters", ""),
        ("macs", cost.macs, budget.macs, "multiply-accumulates per sample", ""),
        ("memory", cost.memory(batch), budget.memory, "bytes of activations",
         f" at batch {batch}"),
    ]
    for name, value, limit, what, where in checks:
        if value > limit:
            field = dominant.get(name, "")
            raise _refuse(spec, field,
                          f"the network would need {value:,} {what}{where}, over the budget "
                          f"of {limit:,} (raise it with --budget {name}=N)")
    return cost
