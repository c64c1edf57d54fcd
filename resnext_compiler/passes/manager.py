"""The pass manager: passes declare the facts they require and ensure, and run in order.

A fact is a word about the graph (`shaped`, `lowered_branches`, `weights`, `bn_folded`).
Lowering a spec establishes `LOWERED_FACTS`; each pass may only run where the facts it
`requires` hold, adds the facts it `ensures` and drops the ones it `invalidates` (folding
BatchNorm changes the branches lowering wrote, so the form rewrite cannot follow it). A pass
whose requirement is unmet is refused before anything runs (onnx-ir's pass manager does the
same).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from resnext_compiler.ir import Graph

Weights = Mapping[str, np.ndarray] | None
PassFunction = Callable[[Graph, Weights], tuple[Graph, Weights]]

# What a freshly lowered graph is: its blocks as lowering wrote them, no shapes yet.
LOWERED_FACTS = frozenset({"lowered_branches"})


class PassOrderError(ValueError):
    """A pass asked to run where a fact it requires does not hold (a programming error)."""


@dataclass(frozen=True)
class Pass:
    """A named graph (+ weights) -> graph (+ weights) function and its declared facts."""

    name: str
    function: PassFunction
    requires: frozenset[str] = frozenset()
    ensures: frozenset[str] = frozenset()
    invalidates: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PassState:
    """A graph, its weights (None until a pass attaches them) and the facts that hold."""

    graph: Graph
    weights: Weights = None
    facts: frozenset[str] = field(default=LOWERED_FACTS)


def check_order(passes: Iterable[Pass], facts: frozenset[str]) -> None:
    """Raise PassOrderError if some pass would run without a fact it requires."""
    for step in passes:
        missing = step.requires - facts
        if missing:
            raise PassOrderError(
                f"pass {step.name!r} requires {', '.join(sorted(missing))}, "
                f"which does not hold here (facts: "
                f"{', '.join(sorted(facts)) or 'none'})"
            )
        facts = (facts - step.invalidates) | step.ensures


def run_passes(state: PassState, passes: Iterable[Pass]) -> PassState:
    """Run `passes` in order on `state`, after checking every requirement."""
    passes = list(passes)
    check_order(passes, state.facts)
    for step in passes:
        graph, weights = step.function(state.graph, state.weights)
        state = PassState(graph, weights, (state.facts - step.invalidates) | step.ensures)
    return state
