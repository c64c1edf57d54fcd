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

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resnext_compiler.errors import UserError, shown
from resnext_compiler.ir import Graph, Node
from resnext_compiler.named_files import WEIGHTS, open_named
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
        return f"{shown(self.typename)} at [{self.path}] {list(self.shape)}"


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


MAX_DEPTH = 64  # containers inside containers; the seed's models nest 4 deep
MAX_MODULES = 60_000  # module visits; ResNeXt-101 64x4d in form B has about 16,000 modules
MAX_TENSOR_DIMS = 8


class _Walk:
    """Bounds on one walk: a module inside itself is refused, and shared references (a module
    listed in many containers) count every time they are visited, so a 4 KB file of tables
    that list one another 40 deep cannot expand to 2**40 visits."""

    def __init__(self) -> None:
        self.visits = 0
        self.open: set[int] = set()  # ids of the containers on the current path
        self.read: dict[int, tuple[str, dict[str, Any]]] = {}  # id -> (typename, fields)

    def typename_and_fields(self, obj: Any) -> tuple[str, dict[str, Any]]:
        """Each object's fields are decoded once, however often it is referenced."""
        key = id(obj)
        if key not in self.read:
            self.read[key] = (_text(obj.torch_typename()), _fields(obj))
        return self.read[key]


def walk(obj: Any, path: str = "", bounds: _Walk | None = None) -> list[Torch7Layer]:
    """Parameterised layers of a Torch7 module tree, depth first, children in order."""
    bounds = bounds or _Walk()
    bounds.visits += 1
    where = path or "top"
    if bounds.visits > MAX_MODULES:
        raise UserError(f"the Torch7 model has more than {MAX_MODULES:,} modules (counting "
                        f"each shared reference where it is used; at [{where}])")
    if path.count(".") >= MAX_DEPTH:
        raise UserError(f"Torch7 containers nest more than {MAX_DEPTH} deep at [{where}]")
    if id(obj) in bounds.open:
        raise UserError(f"the Torch7 module at [{where}] contains itself")
    if not hasattr(obj, "torch_typename"):
        raise UserError(f"Torch7 object at [{path or 'top'}] is a {type(obj).__name__}, "
                        "not an nn module")
    typename, fields = bounds.typename_and_fields(obj)
    children = _children(fields)
    if children is not None:
        out: list[Torch7Layer] = []
        bounds.open.add(id(obj))
        for i, child in enumerate(children, start=1):
            out += walk(child, f"{path}.{i}" if path else str(i), bounds)
        bounds.open.discard(id(obj))
        return out
    kind = LAYER_KINDS.get(typename.rsplit(".", 1)[-1])
    if kind is not None:
        return [Torch7Layer(kind, typename, path, fields)]
    weight = fields.get("weight")
    if isinstance(weight, np.ndarray) and weight.size:
        raise UserError(f"unsupported Torch7 layer {shown(typename)} at [{path}] with weights "
                        f"{list(weight.shape)}; the importer maps SpatialConvolution, "
                        "SpatialBatchNormalization and Linear")
    return []


def _checked_tensor_reader(dtype: type) -> Any:
    """torchfile's tensor reader, with the view checked against its storage first: torchfile
    would hand any sizes and strides to `as_strided`, reading outside the storage (a crash or
    a leak of memory) or repeating it (stride 0: 2**64 elements from 4 bytes)."""

    def read(reader: Any, version: Any) -> np.ndarray:
        ndim = reader.read_int()
        if not 0 <= ndim <= MAX_TENSOR_DIMS:
            raise ValueError(f"a tensor with {ndim} dimensions")
        size = [int(v) for v in reader.read_long_array(ndim)]
        stride = [int(v) for v in reader.read_long_array(ndim)]
        offset = reader.read_long() - 1
        storage = reader.read_obj()
        if storage is None or ndim == 0:
            return np.empty(0, dtype)
        if not isinstance(storage, np.ndarray) or storage.dtype != np.dtype(dtype):
            raise ValueError("a tensor whose storage is not a storage of its type")
        elements = math.prod(size)
        if min(size) < 0 or min(stride) < 0 or offset < 0:
            raise ValueError(f"a tensor with sizes {size}, strides {stride}, offset {offset}")
        if elements == 0:
            return np.empty(size, dtype)
        last = offset + sum((n - 1) * step for n, step in zip(size, stride, strict=True))
        if last >= storage.size or elements > storage.size:
            raise ValueError(f"a tensor of sizes {size} and strides {stride} reaches outside "
                             f"(or repeats) its storage of {storage.size} elements")
        itemsize = storage.dtype.itemsize
        return np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                               strides=[itemsize * step for step in stride])

    return read


def _checked_storage_reader(dtype: type) -> Any:
    """torchfile's storage reader, with the declared length checked against the file."""

    def read(reader: Any, version: Any) -> np.ndarray:
        count = reader.read_long()
        handle = reader.f
        here = handle.tell()
        left = os.fstat(handle.fileno()).st_size - here
        if not 0 <= count * np.dtype(dtype).itemsize <= left:
            raise ValueError(f"a storage of {count} elements in the {left} bytes left")
        storage = np.empty(count, dtype)  # a fresh, writable array, as np.fromfile gave
        if handle.readinto(memoryview(storage).cast("B")) != storage.nbytes:
            raise ValueError(f"the file ends inside a storage of {count} elements")
        return storage

    return read


def install_checked_readers(torchfile: Any) -> None:
    """Replace torchfile's tensor and storage readers with the checked ones above."""
    handlers = torchfile.type_handlers
    for name, handler in list(handlers.items()):
        text = name.decode() if isinstance(name, bytes) else str(name)
        kind = text.removeprefix("torch.").removeprefix("Cuda")
        dtype = TORCH7_DTYPES.get(kind.removesuffix("Tensor").removesuffix("Storage") or "Float")
        if dtype is None or getattr(handler, "checked", False):
            continue
        if text.endswith("Tensor"):
            handlers[name] = _checked_tensor_reader(dtype)
        elif text.endswith("Storage"):
            handlers[name] = _checked_storage_reader(dtype)
        handlers[name].checked = True


TORCH7_DTYPES = {"Byte": np.uint8, "Char": np.int8, "Short": np.int16, "Int": np.int32,
                 "Long": np.int64, "Float": np.float32, "Double": np.float64}


def read_torch7(path: str | Path) -> list[Torch7Layer]:
    """Parse a `.t7` file with torchfile and return its parameterised layers in order."""
    import torchfile

    install_checked_readers(torchfile)
    try:
        # torchfile.load(path) would open a FIFO and wait: the opener refuses it first
        with open_named(path, WEIGHTS, None) as handle:
            model = torchfile.T7Reader(handle).read_obj()
    except UserError:
        raise
    except Exception as exc:  # torchfile raises bare struct/ValueErrors on foreign files
        raise UserError(f"{shown(path)}: cannot read as a Torch7 file: "
                        f"{type(exc).__name__}: {shown(exc)}") from None
    if isinstance(model, dict):  # a checkpoint table holding the model
        model = {_text(k): v for k, v in model.items()}.get("model", model)
    layers = walk(model)
    if not layers:
        raise UserError(f"{shown(path)}: the Torch7 model has no convolution, batch-norm or linear "
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
    raise UserError(f"{shown(Path(path).name)} does not fit {graph.name} {where}:\n"
                    f"{list_problems(first_problems)}")
