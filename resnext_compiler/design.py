"""The 1x-complexity design rule (Xie et al. 2017, Sec. 3.3, Table 2): given a template network
and a cardinality C, pick the bottleneck width d that keeps the template's complexity.

The paper keeps the *parameters* fixed (Eq. 4: a conv2-stage block holds
C * (256*d + 3*3*d*d + d*256) weights, about 70k for C=1, d=64), which is the default criterion
here, measured on the whole network by the compiler itself. `match="macs"` keeps the
multiply-accumulates instead; the two disagree for some C (C=8: parameters give d=14, the
seed's value, MACs give d=13). From ResNet-50 the parameter criterion reproduces the seed's
table (facebookresearch/ResNeXt README): C=1 d=64, C=2 d=40, C=4 d=24, C=8 d=14, C=32 d=4.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from resnext_compiler.blocks.grouped import bottleneck_path_width
from resnext_compiler.errors import UserError
from resnext_compiler.spec import Spec, StageSpec, parse_spec

Criterion = Literal["params", "macs"]
CRITERIA: tuple[str, ...] = ("params", "macs")
TABLE_CARDINALITIES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class Candidate:
    """One base width d at a given cardinality and the network's cost with it."""

    base_width: int
    params: int
    macs: int

    def value(self, criterion: Criterion) -> int:
        return self.params if criterion == "params" else self.macs


@dataclass(frozen=True)
class Design:
    """The solver's answer: the chosen width, the target, and the neighbouring candidates."""

    template: str
    cardinality: int
    criterion: Criterion
    target_params: int
    target_macs: int
    chosen: Candidate
    neighbours: tuple[Candidate, ...]  # d-1, d, d+1 (those that exist), in order

    @property
    def base_width(self) -> int:
        return self.chosen.base_width

    @property
    def target(self) -> int:
        return self.target_params if self.criterion == "params" else self.target_macs

    def deviation(self, candidate: Candidate) -> float:
        """Relative difference of `candidate` from the template under the criterion."""
        return candidate.value(self.criterion) / self.target - 1.0


def designed_name(template: str, cardinality: int, base_width: int) -> str:
    """`resnet50` at 8x14d -> `resnext50_8x14d`; `resnext50_32x4d` at 4x24d ->
    `resnext50_4x24d`: the network's family and its own C x d, not the template's."""
    stem = re.sub(r"_\d+x\d+d$", "", template)
    family = ("resnext", "resnet") if cardinality > 1 else ("resnet", "resnext")
    stem = re.sub(rf"^(se)?{family[1]}(?=\d)", rf"\g<1>{family[0]}", stem)
    return f"{stem}_{cardinality}x{base_width}d"


def redesign(template: Spec, cardinality: int, base_width: int, name: str | None = None,
             description: str | None = None) -> Spec:
    """`template` with every bottleneck stage at `cardinality` x `base_width`."""
    # Per-stage widths (and an explicit group width, where the schema has one) would override
    # the designed C x d, so they are cleared.
    block_update: dict[str, object] = {"cardinality": cardinality, "base_width": base_width}
    if "group_width" in type(template.block).model_fields:
        block_update["group_width"] = None
    cleared = {k: None for k in ("cardinality", "base_width", "group_width")
               if k in StageSpec.model_fields}
    block = template.block.model_copy(update=block_update)
    stages = [s.model_copy(update=cleared) for s in template.stages]
    update = {"block": block, "stages": stages, "reference": None,
              "name": name or designed_name(template.name, cardinality, base_width)}
    if description is not None:
        update["description"] = description
    return template.model_copy(update=update)


def _measure(template: Spec, cardinality: int) -> Callable[[int], Candidate]:
    from resnext_compiler.pipeline import estimate_cost

    cache: dict[int, Candidate] = {}

    def measure(base_width: int) -> Candidate:
        # costed once, by the budget's reduced spec (exact), not lowered again in full
        if base_width not in cache:
            cost = estimate_cost(redesign(template, cardinality, base_width))
            cache[base_width] = Candidate(base_width, cost.params, cost.macs)
        return cache[base_width]

    return measure


def _check_template(template: Spec) -> None:
    flat = sorted({s.type for s in template.resolved_stages() if not s.block_type.grouped})
    if flat:
        raise UserError(f"design needs a bottleneck template (blocks of C paths of width d); "
                        f"{template.name} has {', '.join(flat)} blocks "
                        "(the 1x-complexity rule varies the bottleneck width d)")


def solve(template: Spec, cardinality: int, match: Criterion = "params") -> Design:
    """The base width d at `cardinality` whose network is closest to the template's complexity.

    Cost grows with d, so a bisection finds the first d at or above the target; the answer is
    that d or d-1, whichever is closer (ties go to the smaller, cheaper network).
    """
    if match not in CRITERIA:
        raise UserError(f"--match must be params or macs, got {match!r}")
    if cardinality < 1:
        raise UserError(f"cardinality must be at least 1, got {cardinality}")
    _check_template(template)
    from resnext_compiler.pipeline import compile_model

    reference = compile_model(template).estimate  # the template compiled (checked) once
    target = reference.params if match == "params" else reference.macs
    measure = _measure(template, cardinality)
    # The narrowest stage must keep at least one channel per path (the width rule inverted).
    narrowest = min(stage.width for stage in template.resolved_stages())
    low_bound = low = next(d for d in itertools.count(1)
                           if bottleneck_path_width(narrowest, d) >= 1)
    high = low
    while measure(high).value(match) < target:
        high *= 2
        if high > 1 << 16:
            raise UserError(f"no base width reaches {target:,} {match} at cardinality "
                            f"{cardinality}")
    while low < high:  # first d in [low, high] at or above the target
        mid = (low + high) // 2
        if measure(mid).value(match) < target:
            low = mid + 1
        else:
            high = mid
    best = low
    if best > low_bound and (abs(measure(best - 1).value(match) - target)
                     <= abs(measure(best).value(match) - target)):
        best -= 1
    neighbours = tuple(measure(d) for d in (best - 1, best, best + 1) if d >= low_bound)
    return Design(template.name, cardinality, match, reference.params, reference.macs,
                  measure(best), neighbours)


def design_table(template: Spec, cardinalities: Iterable[int] = TABLE_CARDINALITIES,
                 match: Criterion = "params") -> list[Design]:
    """`solve` for each cardinality (the paper's Table 2 from ResNet-50)."""
    return [solve(template, c, match) for c in cardinalities]


def design_spec(template: Spec, design: Design, name: str | None = None) -> Spec:
    """The designed network as a spec, re-parsed so it is known to load."""
    c, d = design.cardinality, design.base_width
    description = (
        f"{c}x{d}d variant of {template.name} at 1x complexity (Xie et al. 2017, Sec. 3.3): "
        f"base width chosen by `resnext-compile design` to match the template's "
        f"{design.criterion} ({design.chosen.params:,} params, {design.chosen.macs / 1e9:.2f} "
        f"GMACs vs {design.target_params:,} params, {design.target_macs / 1e9:.2f} GMACs)."
    )
    spec = redesign(template, c, d, name=name, description=description)
    return parse_spec(spec.to_yaml(), filename=f"{spec.name}.yaml")
