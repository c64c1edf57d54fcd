"""spec -> lower -> validate -> shapes: the compiler front half, with located errors."""

from __future__ import annotations

from resnext_compiler.budget import DEFAULT_BUDGET, Budget, check_budget
from resnext_compiler.errors import Diagnostic, SpecError
from resnext_compiler.ir import Graph
from resnext_compiler.lower import _field_tuple, lower
from resnext_compiler.passes.shapes import ShapeProblem, infer_shapes
from resnext_compiler.spec import Spec
from resnext_compiler.validate import structural_problems


def _locate_node(spec: Spec, graph: Graph, node_name: str, message: str,
                 origin: str | None = None) -> Diagnostic:
    if origin is None:
        try:
            origin = graph.node(node_name).origin
        except KeyError:
            origin = ""
    text = f"{message} (at node {node_name})"
    return Diagnostic(
        text, origin, spec.locate(_field_tuple(origin)) if origin else spec.locate(())
    )


def compile_spec(spec: Spec, budget: Budget = DEFAULT_BUDGET, batch: int = 1) -> Graph:
    """Check the cost budget at `batch`, then lower, check and shape a spec. Raises SpecError
    with every problem located."""
    check_budget(spec, budget, batch)
    graph = lower(spec)
    problems = structural_problems(graph)
    if problems:
        raise SpecError([_locate_node(spec, graph, n, m) for n, m in problems])
    try:
        return infer_shapes(graph)
    except ShapeProblem as exc:
        message = str(exc.args[0]).split(": ", 1)[1]
        if graph.node(exc.node).stage == "stem":  # the stem is fixed; only the input can change
            size = f"{spec.input.height}x{spec.input.width}"
            message = f"a {size} input is too small for the {spec.stem} stem: {message}"
            raise SpecError([_locate_node(spec, graph, exc.node, message, "input")]) from None
        raise SpecError([_locate_node(spec, graph, exc.node, message)]) from None
