"""Structural checks of an IR graph with networkx (docs/design.md, "IR").

Acyclic, connected, one input and one output, every node reachable from the input and
reaching the output, inputs that exist, operator arity. Returns problems as diagnostics
(with the spec field that caused the node, when known) rather than raising.
"""

from __future__ import annotations

import networkx as nx

from resnext_compiler.ir import INPUT, Graph


def to_networkx(graph: Graph) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_node(INPUT, op="input")
    for node in graph.nodes:
        g.add_node(node.name, op=node.op.kind)
    for node in graph.nodes:
        for i, src in enumerate(node.inputs):
            g.add_edge(src, node.name, index=i)
    return g


def structural_problems(graph: Graph) -> list[tuple[str, str]]:
    """(node name, message) for every structural problem found."""
    problems: list[tuple[str, str]] = []
    names = {node.name for node in graph.nodes}
    if len(names) != len(graph.nodes):
        seen: set[str] = set()
        for node in graph.nodes:
            if node.name in seen:
                problems.append((node.name, "duplicate node name"))
            seen.add(node.name)
    for node in graph.nodes:
        low, high = node.op.arity
        n = len(node.inputs)
        if n < low or (high is not None and n > high):
            expected = f"{low}" if low == high else f"{low}..{high or 'n'}"
            problems.append((node.name, f"{node.op.kind} takes {expected} inputs, got {n}"))
        for src in node.inputs:
            if src != INPUT and src not in names:
                problems.append((node.name, f"input {src!r} is not a node of the graph"))
    if graph.output not in names:
        problems.append((graph.output, "graph output is not a node of the graph"))
        return problems
    g = to_networkx(graph)
    if not nx.is_directed_acyclic_graph(g):
        cycle = nx.find_cycle(g)
        problems.append((cycle[0][0], "graph has a cycle: " + " -> ".join(e[0] for e in cycle)))
        return problems
    sources = [n for n in g.nodes if g.in_degree(n) == 0]
    sinks = [n for n in g.nodes if g.out_degree(n) == 0]
    if sources != [INPUT]:
        for extra in sorted(set(sources) - {INPUT}):
            problems.append((extra, "node has no inputs (graph must have one input)"))
    if sinks != [graph.output]:
        for extra in sorted(set(sinks) - {graph.output}):
            problems.append((extra, "node output is never used (graph must have one output)"))
    reachable = nx.descendants(g, INPUT) | {INPUT}
    reaching = nx.ancestors(g, graph.output) | {graph.output}
    for node in graph.nodes:
        if node.name not in reachable:
            problems.append((node.name, "node is not reachable from the input"))
        elif node.name not in reaching:
            problems.append((node.name, "node does not reach the output"))
    # Execution order must be topological: backends evaluate nodes in list order.
    position = {node.name: i for i, node in enumerate(graph.nodes)}
    position[INPUT] = -1
    for node in graph.nodes:
        for src in node.inputs:
            if src in position and position[src] >= position[node.name]:
                problems.append((node.name, f"uses {src!r} before it is computed"))
    return problems
