"""The seed's Torch7 models (`.t7`, facebookresearch/ResNeXt, fb.resnet.torch layout).

A model is a tree of containers (`nn.Sequential`, `nn.ConcatTable`, `nn.Concat`,
`nn.DataParallelTable`) whose leaves are layers. Walking it depth first, children in order,
visits the parameterised layers (`SpatialConvolution`, `SpatialBatchNormalization`, `Linear`,
from `nn` or `cudnn`) in the same order as the IR's conv/batchnorm/linear nodes: stem, then per
block the residual branch before the shortcut (the seed's `ConcatTable():add(s):add(shortcut)`),
then the classifier. The seed builds form B (`resnext_bottleneck_B`: a ConcatTable of C paths
and a JoinTable) or form C (grouped `cudnn.SpatialConvolution`); the walk is matched against
the spec lowered in each form and the weights are then converted to the spec's own form.

Conv biases (fb.resnet keeps zero biases under cuDNN < 4) are folded into the BN that follows
(running_mean -= bias), exact in inference; a BN `eps` other than the IR's is folded into
running_var; legacy `running_std` (1/sqrt(var + eps)) is converted to a variance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resnext_compiler.errors import UserError
from resnext_compiler.ir import Graph, Node
from resnext_compiler.ops import BN_STEP_COUNTER, Add, BatchNorm, Conv, Linear
from resnext_compiler.weights import list_problems

LAYER_KINDS = {
    "SpatialConvolution": "conv",
    "SpatialConvolutionMM": "conv",
    "SpatialBatchNormalization": "batchnorm",
    "BatchNormalization": "batchnorm",
    "Linear": "linear",
}
OP_KINDS = {Conv: "conv", BatchNorm: "batchnorm", Linear: "linear"}


@dataclass(frozen=True)
class Torch7Layer:
    """One parameterised layer; `path` is its position as Lua's `model:get(i):get(j)` indices."""

    kind: str
    typename: str
    path: str
    fields: dict[str, Any]

    def array(self, name: str) -> np.ndarray | None:
        value = self.fields.get(name)
        if isinstance(value, np.ndarray) and value.size:
            return np.array(value, dtype=np.float64)
        return None

    @property
    def shape(self) -> tuple[int, ...]:
        key = "running_mean" if self.kind == "batchnorm" else "weight"
        value = self.array(key)
        if value is None and self.kind == "batchnorm":
            value = self.array("running_var")
        return () if value is None else tuple(value.shape)

    def describe(self) -> str:
        return f"{self.typename} at [{self.path}] {list(self.shape)}"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _fields(obj: Any) -> dict[str, Any]:
    raw = getattr(obj, "_obj", None)
    return {_text(k): v for k, v in raw.items()} if isinstance(raw, dict) else {}


def _children(fields: dict[str, Any]) -> list[Any] | None:
    modules = fields.get("modules")
    if isinstance(modules, list):
        return modules
    if isinstance(modules, dict):  # a table that is not a plain list: order by Lua index
        return [modules[k] for k in sorted(k for k in modules if isinstance(k, int))]
    return None


def walk(obj: Any, path: str = "") -> list[Torch7Layer]:
    """Parameterised layers of a Torch7 module tree, depth first, children in order."""
    if not hasattr(obj, "torch_typename"):
        raise UserError(f"Torch7 object at [{path or 'top'}] is a {type(obj).__name__}, "
                        "not an nn module")
    typename = _text(obj.torch_typename())
    fields = _fields(obj)
    children = _children(fields)
    if children is not None:
        out: list[Torch7Layer] = []
        for i, child in enumerate(children, start=1):
            out += walk(child, f"{path}.{i}" if path else str(i))
        return out
    kind = LAYER_KINDS.get(typename.rsplit(".", 1)[-1])
    if kind is not None:
        return [Torch7Layer(kind, typename, path, fields)]
    weight = fields.get("weight")
    if isinstance(weight, np.ndarray) and weight.size:
        raise UserError(f"unsupported Torch7 layer {typename} at [{path}] with weights "
                        f"{list(weight.shape)}; the importer maps SpatialConvolution, "
                        "SpatialBatchNormalization and Linear")
    return []


def read_torch7(path: str | Path) -> list[Torch7Layer]:
    """Parse a `.t7` file with torchfile and return its parameterised layers in order."""
    import torchfile

    try:
        model = torchfile.load(str(path))
    except Exception as exc:  # torchfile raises bare struct/ValueErrors on foreign files
        raise UserError(f"{path}: cannot read as a Torch7 file: {type(exc).__name__}: "
                        f"{exc}") from None
    if isinstance(model, dict):  # a checkpoint table holding the model
        model = {_text(k): v for k, v in model.items()}.get("model", model)
    layers = walk(model)
    if not layers:
        raise UserError(f"{path}: the Torch7 model has no convolution, batch-norm or linear "
                        "layers")
    return layers


def _param_nodes(graph: Graph) -> list[Node]:
    return [n for n in graph.nodes if type(n.op) in OP_KINDS]


def _fits(layer: Torch7Layer, node: Node) -> bool:
    op = node.op
    if layer.kind != OP_KINDS[type(op)]:
        return False
    if isinstance(op, BatchNorm):
        return layer.shape == (op.num_features,)
    expected = op.params()[0].shape
    weight = layer.array("weight")
    return (weight is not None and weight.size == int(np.prod(expected))
            and weight.shape[0] == expected[0])


def _match(layers: list[Torch7Layer], graph: Graph) -> list[str]:
    """Problems pairing `layers` with the graph's parameterised nodes ([] when they fit)."""
    nodes = _param_nodes(graph)
    problems = []
    if len(layers) != len(nodes):
        problems.append(f"the .t7 has {len(layers)} conv/BN/linear layers, {graph.name} needs "
                        f"{len(nodes)}")
    for i, (layer, node) in enumerate(zip(layers, nodes, strict=False)):
        if not _fits(layer, node):
            expected = [list(p.shape) for p in node.op.params() if p.suffix == "weight"]
            problems.append(f"layer {i + 1}: {layer.describe()} does not fit {node.name} "
                            f"({node.op.kind} {expected[0] if expected else ''})")
    return problems


def _consumers(graph: Graph) -> dict[str, list[Node]]:
    out: dict[str, list[Node]] = {}
    for node in graph.nodes:
        for value in node.inputs:
            out.setdefault(value, []).append(node)
    return out


def _following_bn(node: Node, consumers: dict[str, list[Node]]) -> Node | None:
    """The BN a conv's bias can fold into: its only consumer, or after form A's sum."""
    after = consumers.get(node.name, [])
    if len(after) == 1 and isinstance(after[0].op, Add):
        after = consumers.get(after[0].name, [])
    return after[0] if len(after) == 1 and isinstance(after[0].op, BatchNorm) else None


def _batchnorm(layer: Torch7Layer, op: BatchNorm) -> dict[str, np.ndarray]:
    channels = op.num_features
    eps = float(layer.fields.get("eps") or 1e-5)
    mean = layer.array("running_mean")
    var = layer.array("running_var")
    if var is None and layer.array("running_std") is not None:
        var = 1.0 / np.square(layer.array("running_std")) - eps  # type: ignore[operator]
    if mean is None or var is None:
        raise UserError(f"{layer.describe()} has no running statistics")
    weight, bias = layer.array("weight"), layer.array("bias")
    return {
        "weight": np.ones(channels) if weight is None else weight.reshape(channels),
        "bias": np.zeros(channels) if bias is None else bias.reshape(channels),
        "running_mean": mean.reshape(channels),
        "running_var": var.reshape(channels) + (eps - op.eps),
        BN_STEP_COUNTER: np.zeros((), np.int64),
    }


def layers_to_tensors(layers: list[Torch7Layer], graph: Graph) -> dict[str, np.ndarray]:
    """IR-named tensors from layers already matched one-to-one with `graph`'s nodes."""
    consumers = _consumers(graph)
    out: dict[str, np.ndarray] = {}
    mean_shift: dict[str, np.ndarray] = {}
    for layer, node in zip(layers, _param_nodes(graph), strict=True):
        op = node.op
        if isinstance(op, BatchNorm):
            for suffix, value in _batchnorm(layer, op).items():
                out[f"{node.name}.{suffix}"] = value
            continue
        specs = {p.suffix: p.shape for p in op.params()}
        weight = layer.array("weight")
        assert weight is not None  # checked by _fits
        out[f"{node.name}.weight"] = weight.reshape(specs["weight"])
        bias = layer.array("bias")
        if "bias" in specs:
            out[f"{node.name}.bias"] = (np.zeros(specs["bias"]) if bias is None
                                        else bias.reshape(specs["bias"]))
        elif bias is not None and np.any(bias):
            bn = _following_bn(node, consumers)
            if bn is None:
                raise UserError(f"{layer.describe()} has a non-zero bias and {node.name} has "
                                "neither a bias nor a following BatchNorm to fold it into")
            mean_shift[bn.name] = mean_shift.get(bn.name, 0) + bias
    for bn_name, shift in mean_shift.items():
        out[f"{bn_name}.running_mean"] = out[f"{bn_name}.running_mean"] - shift
    return out


def read_torch7_model(path: str | Path, graph: Graph) -> tuple[dict[str, np.ndarray], str]:
    """IR-named tensors of a `.t7` model for the compiled `graph`, in the form whose layout
    the file has.

    The graph as compiled is tried first, then its bottlenecks in the other forms by the
    form-rewrite pass (no second compile). Returns the tensors (form conversion to the graph's
    form is left to `passes.forms`) and a short description (`form B, 161 layers`). Raises
    UserError listing the first mismatches.
    """
    from resnext_compiler.passes.forms import find_branches, rewrite_forms

    layers = read_torch7(path)
    branches = find_branches(graph)
    own = branches[0].form if branches else ""
    candidates = [(own, graph)] + [(form, rewrite_forms(graph, form))
                                   for form in "CBA" if branches and form != own]
    first_problems: list[str] = []
    for form, candidate in candidates:
        problems = _match(layers, candidate)
        if not problems:
            what = f"form {form}, " if form else ""
            return layers_to_tensors(layers, candidate), f"{what}{len(layers)} layers"
        if not first_problems:
            first_problems = problems
    tried = [form for form, _ in candidates]
    where = f"in block forms {', '.join(tried)}" if len(tried) > 1 else "(layers in order)"
    raise UserError(f"{Path(path).name} does not fit {graph.name} {where}:\n"
                    f"{list_problems(first_problems)}")
