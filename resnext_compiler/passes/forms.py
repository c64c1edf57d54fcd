"""Block-form rewrite (Xie et al. 2017, Fig. 3): A/B -> C and C -> A/B, on the IR and on weights.

The residual branch of a ResNeXt bottleneck has three equivalent forms:

  C  conv1 (in -> dC), BN, ReLU, grouped conv2 (dC -> dC, C groups), BN, ReLU, conv3 (dC -> out)
  B  C paths of conv1 (in -> d), BN, ReLU, conv2 (d -> d), BN, ReLU; concat; conv3 (dC -> out)
  A  C paths of conv1, BN, ReLU, conv2, BN, ReLU, conv3 (d -> out); sum

Path i of A/B is the slice [i*d, (i+1)*d) of form C's channels: conv1 and conv2 weights are
slices along the output axis (a grouped conv's group i reads and writes exactly that slice), the
BNs are per channel so a path's BN is the same slice of form C's BN, and form A's per-path conv3
is the slice of conv3's *input* axis, so sum_i W3[:, slice_i] h_i = W3 [h_0; ...; h_C-1]. Hence
no form adds parameters, and weights move between forms exactly (`convert_weights`).

`rewrite_forms(graph, form)` is a pure IR -> IR pass producing the same nodes (names, ops,
inputs, origins) that lowering the spec with that form produces.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

import numpy as np

from resnext_compiler.blocks import block_type
from resnext_compiler.blocks.bottleneck import FORMS, branch_norm_names
from resnext_compiler.ir import BlockRecord, Graph, GraphBuilder, Node
from resnext_compiler.ops import BN_STEP_COUNTER
from resnext_compiler.passes.manager import Pass, Weights
from resnext_compiler.passes.shapes import infer_shapes


def find_branches(graph: Graph) -> list[BlockRecord]:
    """The records of every block of `graph` whose type has forms A/B/C (the bottleneck)."""
    return [record for record in graph.block_records if block_type(record.type).forms == FORMS]


def _emit(graph: Graph, block: BlockRecord, form: str, x: str) -> tuple[list[Node], str]:
    """The branch of `block` in `form` reading `x`, as lowering emits it, and its output."""
    b = GraphBuilder(graph.name, graph.input_shape)
    b.stage, b.block, b.origin = block.stage, block.prefix, block.origin
    emit_branch = block_type(block.type).emit_branch
    assert emit_branch is not None  # find_branches keeps only block types with forms
    output = emit_branch(b, x, replace(block, form=form))
    return b.nodes, output


def rewrite_forms(graph: Graph, form: str) -> Graph:
    """`graph` with every bottleneck branch in `form` (A, B or C); shapes re-inferred if present.

    The branch a block holds now and the one it gets are both emitted by `emit_branch`, so the
    pass finds the nodes to replace from the block record, not from node names.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of A, B, C, got {form!r}")
    todo = {block.prefix: block for block in find_branches(graph) if block.form != form}
    if not todo:
        return graph
    nodes_by_name = {node.name: node for node in graph.nodes}
    replacements: dict[str, list[Node]] = {}
    dropped: set[str] = set()
    renamed: dict[str, str] = {}
    for block in todo.values():
        current, current_output = _emit(graph, block, block.form, "")
        members = [node.name for node in current]
        if any(n.name not in nodes_by_name or nodes_by_name[n.name].op != n.op for n in current):
            raise ValueError(f"{block.prefix}: the graph no longer holds the branch that lowering "
                             f"made (rewrite forms before other passes change it)")
        branch_input = nodes_by_name[members[0]].inputs[0]
        new_nodes, output = _emit(graph, block, form, branch_input)
        replacements[members[0]] = new_nodes
        dropped.update(members)
        renamed[current_output] = output
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.name in replacements:
            nodes += replacements[node.name]
        elif node.name not in dropped:
            inputs = tuple(renamed.get(i, i) for i in node.inputs)
            nodes.append(node if inputs == node.inputs else replace(node, inputs=inputs))
    records = tuple(replace(r, form=form) if r.prefix in todo else r for r in graph.block_records)
    rewritten = replace(graph, nodes=tuple(nodes), shapes={}, block_records=records,
                        output=renamed.get(graph.output, graph.output))
    return infer_shapes(rewritten) if graph.shapes else rewritten


def form_pass(form: str) -> Pass:
    """The form rewrite as a pass: every bottleneck branch in `form`, weights (if attached)
    converted with it. It reads the branches as lowering wrote them, so it runs before BN
    folding."""

    def rewrite(graph: Graph, weights: Weights) -> tuple[Graph, Weights]:
        rewritten = rewrite_forms(graph, form)
        return rewritten, None if weights is None else convert_weights(weights, rewritten)

    return Pass(f"rewrite_forms({form})", rewrite, requires=frozenset({"lowered_branches"}),
                ensures=frozenset({f"form_{form}"}))


# --- weights ------------------------------------------------------------------------------

_BN_SLICED = ("weight", "bias", "running_mean", "running_var")
_BN_SHARED = BN_STEP_COUNTER  # one counter per BN: the paths' counters are not sliced


def _source_form(tensors: Mapping[str, np.ndarray] | set[str], p: str) -> str | None:
    if f"{p}.paths.0.conv1.weight" in tensors:
        return "A" if f"{p}.paths.0.conv3.weight" in tensors else "B"
    if f"{p}.conv1.weight" in tensors and f"{p}.conv2.weight" in tensors:
        return "C"
    return None


def _grouped_tensors(tensors: Mapping[str, np.ndarray], br: BlockRecord, source: str,
                     used: set[str]) -> dict[str, np.ndarray]:
    """The branch's tensors in form C layout (names relative to the block prefix)."""
    p = br.prefix
    (bn_a, _), (bn_b, _) = branch_norm_names(br.preact)
    modules = ("conv1", bn_a, "conv2", bn_b)
    if source == "C":
        names = [f"{m}.{s}" for m in modules for s in _suffixes(m)] + ["conv3.weight"]
        out = {n: tensors[f"{p}.{n}"] for n in names if f"{p}.{n}" in tensors}
        used.update(f"{p}.{n}" for n in out)
        return out
    count = 0
    while f"{p}.paths.{count}.conv1.weight" in tensors:
        count += 1
    if count != br.cardinality:
        raise ValueError(f"{p}: the weights have {count} paths, the graph {br.cardinality}")
    out = {}
    for module in modules:
        for suffix in _suffixes(module):
            keys = [f"{p}.paths.{i}.{module}.{suffix}" for i in range(count)]
            if not all(k in tensors for k in keys):
                continue
            used.update(keys)
            if suffix == _BN_SHARED:
                out[f"{module}.{suffix}"] = np.max(np.stack([tensors[k] for k in keys]), axis=0)
            else:
                out[f"{module}.{suffix}"] = np.concatenate([tensors[k] for k in keys], axis=0)
    if source == "B":
        key = f"{p}.conv3.weight"
        if key in tensors:
            out["conv3.weight"] = tensors[key]
            used.add(key)
    else:
        keys = [f"{p}.paths.{i}.conv3.weight" for i in range(count)]
        if all(k in tensors for k in keys):
            out["conv3.weight"] = np.concatenate([tensors[k] for k in keys], axis=1)
            used.update(keys)
    return out


def _suffixes(module: str) -> tuple[str, ...]:
    return ("weight",) if module.startswith("conv") else (*_BN_SLICED, _BN_SHARED)


def _split(grouped: dict[str, np.ndarray], br: BlockRecord, form: str) -> dict[str, np.ndarray]:
    """Form C tensors of one branch -> `form`'s tensors (full names)."""
    p, d = br.prefix, br.path_width
    if form == "C":
        return {f"{p}.{name}": value for name, value in grouped.items()}
    out: dict[str, np.ndarray] = {}
    for name, value in grouped.items():
        module, suffix = name.split(".", 1)
        for i in range(br.cardinality):
            q = f"{p}.paths.{i}"
            rows = slice(i * d, (i + 1) * d)
            if module == "conv3":
                if form == "A":
                    out[f"{q}.conv3.{suffix}"] = np.ascontiguousarray(value[:, rows])
            elif suffix == _BN_SHARED:
                out[f"{q}.{name}"] = np.array(value)
            else:
                out[f"{q}.{name}"] = np.ascontiguousarray(value[rows])
        if module == "conv3" and form == "B":
            out[f"{p}.conv3.{suffix}"] = value
    return out


def convert_weights(tensors: Mapping[str, np.ndarray], graph: Graph) -> dict[str, np.ndarray]:
    """Tensors keyed by IR names in any mix of forms -> the forms `graph` uses.

    The source form of each block is read from the key names (`layer1.0.conv2.weight` is form C,
    `layer1.0.paths.0.conv3.weight` form A). Tensors outside bottleneck branches pass through.
    Pure: the input mapping is not modified. Raises ValueError if a block's path count differs.
    """
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for br in find_branches(graph):
        source = _source_form(tensors, br.prefix)
        if source is None or source == br.form:
            continue
        grouped = _grouped_tensors(tensors, br, source, used)
        out.update(_split(grouped, br, br.form))
    for key, value in tensors.items():
        if key not in used and key not in out:
            out[key] = value
    return out


def needs_conversion(names: Iterable[str], graph: Graph) -> bool:
    """Whether weights with these names hold some bottleneck in another form than `graph`'s.

    Cheap (names only), so a weights loader can call `convert_weights` only when needed.
    """
    keys = set(names)
    return any(_source_form(keys, br.prefix) not in (None, br.form)
               for br in find_branches(graph))
