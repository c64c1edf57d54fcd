"""spec -> budget -> lower -> validate -> shapes: the compiler front half, with located errors.

`compile_model` returns a `CompiledModel` (the spec, the shaped graph, the budget's cost
estimate, the facts its passes established) that the commands, the design solver and the
importers pass along instead of compiling again; `compile_spec` is its graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from resnext_compiler.budget import DEFAULT_BUDGET, Budget, Estimate, check_budget
from resnext_compiler.errors import Diagnostic, SpecError
from resnext_compiler.ir import Graph
from resnext_compiler.lower import lower
from resnext_compiler.passes.manager import LOWERED_FACTS, PassState, run_passes
from resnext_compiler.passes.shapes import SHAPES, ShapeProblem
from resnext_compiler.spec import Spec, field_diagnostic
from resnext_compiler.validate import structural_problems

if TYPE_CHECKING:
    from resnext_compiler.input_contract import InputContract
    from resnext_compiler.passes.complexity import Complexity


@dataclass(frozen=True)
class CompiledModel:
    """A spec compiled once: its shaped graph, the budget's whole-network estimate and the
    facts (`passes.manager`) that hold of the graph. Cost and input contract are computed
    on first use and kept."""

    spec: Spec
    graph: Graph
    estimate: Estimate
    facts: frozenset[str] = field(default=LOWERED_FACTS | {"shaped"})

    @cached_property
    def cost(self) -> Complexity:
        """Parameters, MACs and memory per node and stage, from the graph's ops."""
        from resnext_compiler.passes.complexity import analyse

        return analyse(self.graph)

    @cached_property
    def contract(self) -> InputContract:
        """The spec's input contract (its `preprocess:` over its data set's defaults)."""
        from resnext_compiler.input_contract import resolve_contract

        return resolve_contract(self.spec)

    def with_form(self, form: str) -> CompiledModel:
        """The same model with every bottleneck in block form `form`, by the form-rewrite
        pass (no second lowering); itself when nothing changes."""
        from resnext_compiler.passes.forms import form_pass
        from resnext_compiler.spec import with_form

        state = run_passes(PassState(self.graph, None, self.facts), [form_pass(form)])
        if state.graph is self.graph:
            return self
        return CompiledModel(with_form(self.spec, form), state.graph, self.estimate, state.facts)


def _locate_node(spec: Spec, graph: Graph, node_name: str, message: str,
                 origin: str | None = None) -> Diagnostic:
    if origin is None:
        try:
            origin = graph.node(node_name).origin
        except KeyError:
            origin = ""
    return field_diagnostic(spec, origin, f"{message} (at node {node_name})")


def compile_spec(spec: Spec, budget: Budget = DEFAULT_BUDGET, batch: int = 1) -> Graph:
    """The shaped graph of `compile_model`."""
    return compile_model(spec, budget, batch).graph


def compile_model(spec: Spec, budget: Budget = DEFAULT_BUDGET, batch: int = 1) -> CompiledModel:
    """Check the cost budget at `batch`, then lower, check and shape a spec. Raises SpecError
    with every problem located."""
    estimate = check_budget(spec, budget, batch)
    graph = lower(spec)
    problems = structural_problems(graph)
    if problems:
        raise SpecError([_locate_node(spec, graph, n, m) for n, m in problems])
    try:
        state = run_passes(PassState(graph), [SHAPES])
    except ShapeProblem as exc:
        message = str(exc.args[0]).split(": ", 1)[1]
        if graph.node(exc.node).stage == "stem":  # the stem is fixed; only the input can change
            size = f"{spec.input.height}x{spec.input.width}"
            message = f"a {size} input is too small for the {spec.stem} stem: {message}"
            raise SpecError([_locate_node(spec, graph, exc.node, message, "input")]) from None
        raise SpecError([_locate_node(spec, graph, exc.node, message)]) from None
    return CompiledModel(spec, state.graph, estimate, state.facts)


def estimate_cost(spec: Spec, budget: Budget = DEFAULT_BUDGET) -> Estimate:
    """The whole network's parameters and MACs from the budget's reduced spec alone (two
    blocks per stage, exact); a spec whose shapes fail is compiled so the error is located."""
    estimate = check_budget(spec, budget)
    if estimate.params == 0:  # the reduced spec did not shape: let the compile say where
        compile_model(spec, budget)
    return estimate
