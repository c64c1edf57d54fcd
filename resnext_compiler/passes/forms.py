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
from dataclasses import dataclass, replace

import numpy as np

from resnext_compiler.ir import Graph, Node
from resnext_compiler.ops import Add, BatchNorm, Concat, Conv, ReLU
from resnext_compiler.passes.shapes import infer_shapes

FORMS = ("A", "B", "C")


@dataclass(frozen=True)
class Branch:
    """The residual branch of one bottleneck block, in whichever form the graph holds it."""

    prefix: str  # module path of the block, e.g. "layer2.0"
    form: str
    cardinality: int
    path_width: int  # d
    in_channels: int
    out_channels: int
    stride: int
    norm_names: tuple[str, str]  # BN after conv1 and conv2 ("bn1", "bn2"; "bn2", "bn3" preact)
    act_names: tuple[str, str]
    members: tuple[str, ...]  # node names making up the branch
    input: str  # value feeding conv1
    output: str  # value the rest of the block reads
    conv1: Node
    conv2: Node
    norm: Node  # a template BN (eps, momentum, origin)

    @property
    def group_width(self) -> int:
        return self.cardinality * self.path_width


class _Index:
    """Nodes by name and each value's consumers, built once per graph."""

    def __init__(self, graph: Graph):
        self.nodes = {n.name: n for n in graph.nodes}
        self.consumers: dict[str, list[Node]] = {}
        for n in graph.nodes:
            for value in n.inputs:
                self.consumers.setdefault(value, []).append(n)

    def get(self, name: str) -> Node | None:
        return self.nodes.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.nodes

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]


def _chain(nodes: _Index, conv1: str, conv2: str) -> tuple[Node, Node, Node, Node] | None:
    """(bn_a, relu_a, bn_b, relu_b) when conv1 -> BN -> ReLU -> conv2 -> BN -> ReLU, else None."""
    c2 = nodes.get(conv2)
    if c2 is None or not isinstance(c2.op, Conv):
        return None
    relu_a = nodes.get(c2.inputs[0])
    bn_a = nodes.get(relu_a.inputs[0]) if relu_a and isinstance(relu_a.op, ReLU) else None
    if bn_a is None or not isinstance(bn_a.op, BatchNorm) or bn_a.inputs[0] != conv1:
        return None
    consumers = nodes.consumers.get(c2.name, [])
    if len(consumers) != 1 or not isinstance(consumers[0].op, BatchNorm):
        return None
    bn_b = consumers[0]
    consumers = nodes.consumers.get(bn_b.name, [])
    if len(consumers) != 1 or not isinstance(consumers[0].op, ReLU):
        return None
    return bn_a, relu_a, bn_b, consumers[0]


def _suffix(name: str) -> str:
    return name.rsplit(".", 1)[1]


def find_branches(graph: Graph) -> list[Branch]:
    """Every bottleneck branch of `graph` (basic blocks and stems are not branches)."""
    nodes = _Index(graph)
    out: list[Branch] = []
    for node in graph.nodes:
        name = node.name
        if name.endswith(".paths.0.conv1"):
            branch = _paths_branch(nodes, name[: -len(".paths.0.conv1")])
        elif name.endswith(".conv1") and ".paths." not in name:
            branch = _grouped_branch(nodes, name[: -len(".conv1")])
        else:
            continue
        if branch is not None:
            out.append(branch)
    return out


def _grouped_branch(nodes: _Index, p: str) -> Branch | None:
    conv1, conv2, conv3 = (nodes.get(f"{p}.conv{i}") for i in (1, 2, 3))
    if conv1 is None or conv2 is None or conv3 is None:
        return None
    chain = _chain(nodes, conv1.name, conv2.name)
    if chain is None or conv3.inputs != (chain[3].name,) or conv2.op.kernel_size != 3:
        return None
    bn_a, relu_a, bn_b, relu_b = chain
    groups = conv2.op.groups
    return Branch(
        prefix=p, form="C", cardinality=groups, path_width=conv2.op.out_channels // groups,
        in_channels=conv1.op.in_channels, out_channels=conv3.op.out_channels,
        stride=conv2.op.stride,
        norm_names=(_suffix(bn_a.name), _suffix(bn_b.name)),
        act_names=(_suffix(relu_a.name), _suffix(relu_b.name)),
        members=(conv1.name, bn_a.name, relu_a.name, conv2.name, bn_b.name, relu_b.name,
                 conv3.name),
        input=conv1.inputs[0], output=conv3.name, conv1=conv1, conv2=conv2, norm=bn_a,
    )


def _paths_branch(nodes: _Index, p: str) -> Branch | None:
    members: list[str] = []
    cardinality = 0
    chain = None
    while f"{p}.paths.{cardinality}.conv1" in nodes:
        q = f"{p}.paths.{cardinality}"
        chain = _chain(nodes, f"{q}.conv1", f"{q}.conv2")
        if chain is None:
            return None
        members += [f"{q}.conv1", chain[0].name, chain[1].name, f"{q}.conv2", chain[2].name,
                    chain[3].name]
        if f"{q}.conv3" in nodes:
            members.append(f"{q}.conv3")
        cardinality += 1
    assert chain is not None
    form = "A" if f"{p}.paths.0.conv3" in nodes else "B"
    conv1, conv2 = nodes[f"{p}.paths.0.conv1"], nodes[f"{p}.paths.0.conv2"]
    if form == "A":
        out_channels = nodes[f"{p}.paths.0.conv3"].op.out_channels
        output = f"{p}.sum" if cardinality > 1 else f"{p}.paths.0.conv3"
    else:
        out_channels = nodes[f"{p}.conv3"].op.out_channels
        output = f"{p}.conv3"
        members.append(f"{p}.conv3")
    if cardinality > 1:
        members.append(f"{p}.sum" if form == "A" else f"{p}.concat")
    bn_a, relu_a, bn_b, relu_b = _chain(nodes, conv1.name, conv2.name)  # type: ignore[misc]
    return Branch(
        prefix=p, form=form, cardinality=cardinality, path_width=conv2.op.out_channels,
        in_channels=conv1.op.in_channels, out_channels=out_channels, stride=conv2.op.stride,
        norm_names=(_suffix(bn_a.name), _suffix(bn_b.name)),
        act_names=(_suffix(relu_a.name), _suffix(relu_b.name)),
        members=tuple(members), input=conv1.inputs[0], output=output, conv1=conv1, conv2=conv2,
        norm=bn_a,
    )


def _branch_nodes(br: Branch, form: str) -> tuple[list[Node], str]:
    """Nodes of `br` in `form` (as `blocks/bottleneck.py` lowers them) and its output value."""
    card_origin, stride_origin, origin = br.conv1.origin, br.conv2.origin, br.norm.origin
    stage, block = br.conv1.stage, br.conv1.block
    (bn_a, bn_b), (relu_a, relu_b) = br.norm_names, br.act_names
    d, dc, c = br.path_width, br.group_width, br.cardinality

    def node(name: str, op: object, inputs: tuple[str, ...], node_origin: str = origin) -> Node:
        return Node(name, op, inputs, stage, block, node_origin)  # type: ignore[arg-type]

    def bn(channels: int) -> BatchNorm:
        return replace(br.norm.op, num_features=channels)  # type: ignore[type-var]

    def path(q: str, width: int, groups: int) -> list[Node]:
        return [
            node(f"{q}.conv1", Conv(br.in_channels, width, 1), (br.input,), card_origin),
            node(f"{q}.{bn_a}", bn(width), (f"{q}.conv1",)),
            node(f"{q}.{relu_a}", ReLU(), (f"{q}.{bn_a}",)),
            node(f"{q}.conv2", Conv(width, width, 3, br.stride, 1, groups), (f"{q}.{relu_a}",),
                 stride_origin),
            node(f"{q}.{bn_b}", bn(width), (f"{q}.conv2",)),
            node(f"{q}.{relu_b}", ReLU(), (f"{q}.{bn_b}",)),
        ]

    p = br.prefix
    if form == "C":
        out = path(p, dc, c)
        out.append(node(f"{p}.conv3", Conv(dc, br.out_channels, 1), (f"{p}.{relu_b}",),
                        card_origin))
        return out, f"{p}.conv3"
    out = []
    ends = []
    for i in range(c):
        q = f"{p}.paths.{i}"
        out += path(q, d, 1)
        ends.append(f"{q}.{relu_b}")
        if form == "A":
            out.append(node(f"{q}.conv3", Conv(d, br.out_channels, 1), (f"{q}.{relu_b}",),
                            card_origin))
            ends[-1] = f"{q}.conv3"
    if form == "A":
        if c == 1:
            return out, ends[0]
        out.append(node(f"{p}.sum", Add(), tuple(ends)))
        return out, f"{p}.sum"
    joined = ends[0]
    if c > 1:
        out.append(node(f"{p}.concat", Concat(), tuple(ends)))
        joined = f"{p}.concat"
    out.append(node(f"{p}.conv3", Conv(dc, br.out_channels, 1), (joined,), card_origin))
    return out, f"{p}.conv3"


def rewrite_forms(graph: Graph, form: str) -> Graph:
    """`graph` with every bottleneck branch in `form` (A, B or C); shapes re-inferred if present."""
    if form not in FORMS:
        raise ValueError(f"form must be one of A, B, C, got {form!r}")
    branches = {br.members[0]: br for br in find_branches(graph) if br.form != form}
    if not branches:
        return graph
    dropped = {name for br in branches.values() for name in br.members}
    renamed: dict[str, str] = {}
    nodes: list[Node] = []
    for node in graph.nodes:
        br = branches.get(node.name)
        if br is not None:
            new_nodes, output = _branch_nodes(br, form)
            nodes += new_nodes
            renamed[br.output] = output
        elif node.name not in dropped:
            inputs = tuple(renamed.get(i, i) for i in node.inputs)
            nodes.append(node if inputs == node.inputs else replace(node, inputs=inputs))
    rewritten = replace(graph, nodes=tuple(nodes), shapes={},
                        output=renamed.get(graph.output, graph.output))
    return infer_shapes(rewritten) if graph.shapes else rewritten


# --- weights ------------------------------------------------------------------------------

_BN_SLICED = ("weight", "bias", "running_mean", "running_var")
_BN_SHARED = "num_batches_tracked"


def _source_form(tensors: Mapping[str, np.ndarray] | set[str], p: str) -> str | None:
    if f"{p}.paths.0.conv1.weight" in tensors:
        return "A" if f"{p}.paths.0.conv3.weight" in tensors else "B"
    if f"{p}.conv1.weight" in tensors and f"{p}.conv2.weight" in tensors:
        return "C"
    return None


def _grouped_tensors(tensors: Mapping[str, np.ndarray], br: Branch, source: str,
                     used: set[str]) -> dict[str, np.ndarray]:
    """The branch's tensors in form C layout (names relative to the block prefix)."""
    p = br.prefix
    modules = ("conv1", br.norm_names[0], "conv2", br.norm_names[1])
    if source == "C":
        names = [f"{m}.{s}" for m in modules for s in _suffixes(m, br)] + ["conv3.weight"]
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
        for suffix in _suffixes(module, br):
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


def _suffixes(module: str, br: Branch) -> tuple[str, ...]:
    return ("weight",) if module.startswith("conv") else (*_BN_SLICED, _BN_SHARED)


def _split(grouped: dict[str, np.ndarray], br: Branch, form: str) -> dict[str, np.ndarray]:
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
