"""What an ONNX model costs in memory, known before it runs.

A model file of a few hundred bytes can ask onnxruntime for any amount of memory: a
`ConstantOfShape` of [2**31], an `Expand` to [1, 2**31], an initializer that declares 2**40
elements of external data, a static input of 30000x30000. So before a session is created or a
warm-up runs (`serve`, `evaluate`, `inspect`), the file is read here:

- it is opened by the one opener (`named_files`: a regular file of at most protobuf's 2 GiB,
  inside its repository when one names it), and the bytes parsing keeps are checked against
  the budget (parsing holds the bytes and the message);
- it is walked at the wire level, so initializer *data* is never held: each initializer
  contributes its declared size (dims x element size, whether stored inline or externally),
  and large ones are handed to shape inference as typed graph inputs instead of values;
- ONNX shape inference with data propagation (shapes computed from constants: Shape, Concat,
  Gather, ... feeding Expand, Reshape, Tile, ConstantOfShape) gives every node output's size
  at the batch the model will run;
- the total (weights + every node output, a bound: onnxruntime reuses activation buffers) is
  compared with a budget derived from the machine (`memory_budget`), and a model over it is
  refused naming the largest node or initializer and its bytes.

Outputs whose size cannot be known before running (data-dependent shapes: NonZero, a Range
over computed bounds) are listed in `ModelCost.unknown`; the runtime then warms the model up
in a child process with an address-space limit (`runtimes/serve/warmup.py`).
"""

from __future__ import annotations

import math
import mmap
import os
import resource
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnext_compiler.errors import UserError, sanitise, shown
from resnext_compiler.limited_process import run_limited
from resnext_compiler.named_files import (
    ONNX_EXTERNAL_DATA,
    ONNX_MODEL,
    NamedFileError,
    named_file,
    open_named,
    read_named_bytes,
)
from resnext_compiler.protobuf_wire import (
    LENGTH_DELIMITED,
    WireError,
    frame,
    read_varint,
    varint,
)
from resnext_compiler.protobuf_wire import fields as wire_fields

GiB = 1024**3
BUDGET_SHARE = 0.5  # of the machine's memory, when no --max-memory-gb is given
KEEP_INITIALIZER_BYTES = 64 * 1024  # small initializers stay whole: shape inference reads them
MAX_RANK = 64
# data propagation handles shape-sized vectors: an interpreter, onnx and a few MB are enough
DATA_PROP_ADDRESS_SPACE = 2 * GiB
DATA_PROP_TIMEOUT_S = 60.0  # dims of one tensor; onnxruntime's own kernels stop far below

# field numbers of onnx.proto (ModelProto, GraphProto, TensorProto, SparseTensorProto)
MODEL_GRAPH = 7
GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_SPARSE_INITIALIZER = 5, 11, 15
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_NAME = 1, 2, 8
TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 13, 14
SPARSE_VALUES, SPARSE_DIMS = 1, 3
TENSOR_HEADER_FIELDS = (TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_NAME, TENSOR_EXTERNAL_DATA,
                        TENSOR_DATA_LOCATION)


def machine_memory() -> tuple[int, str]:
    """(bytes, where the number comes from): the least of physical memory, the cgroup's limit
    and this process's address-space limit."""
    found = [(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "physical memory")]
    for limit_file in ("/sys/fs/cgroup/memory.max",
                       "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text()[:32].strip()
        except OSError:
            continue
        if text.isascii() and text.isdigit():
            found.append((int(text), f"the cgroup limit ({limit_file})"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        found.append((soft, "the address-space limit (ulimit -v)"))
    return min(found)


def memory_budget(max_memory_bytes: int | None = None) -> tuple[int, str]:
    """(bytes a model may take, how that was decided): `max_memory_bytes` when given, else
    half of `machine_memory()` (room for the process, its requests and the rest)."""
    if max_memory_bytes is not None:
        return max_memory_bytes, "--max-memory-gb"
    total, where = machine_memory()
    return int(total * BUDGET_SHARE), f"half of {where}, {total / GiB:.1f} GiB"


@dataclass(frozen=True)
class Initializer:
    """An initializer as declared: its name, element type and dims (data never read), and
    the file holding its data when that is stored outside the model (relative to it)."""

    name: str
    elem_type: int
    dims: tuple[int, ...]
    external: str | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.dims) * element_size(self.elem_type)


@dataclass
class OnnxStructure:
    """An ONNX file without its large initializers' data: enough to cost and inspect it."""

    path: Path
    model: Any  # onnx.ModelProto; large initializers replaced by typed graph inputs
    initializers: list[Initializer]
    file_bytes: int

    @property
    def metadata(self) -> dict[str, str]:
        return {entry.key: entry.value for entry in self.model.metadata_props}

    @property
    def inputs(self) -> list[Any]:
        """The graph inputs a caller feeds (initializers excluded)."""
        initialized = {init.name for init in self.initializers}
        return [value for value in self.model.graph.input if value.name not in initialized]


@dataclass
class ModelCost:
    """Bytes a model takes at one batch, and what dominates them."""

    batch: int
    initializer_bytes: int
    activation_bytes: int  # every node output at the batch (an upper bound)
    largest: tuple[str, int]  # (what, bytes)
    unknown: list[str] = field(default_factory=list)  # node outputs of unknown size

    @property
    def total(self) -> int:
        return self.initializer_bytes + self.activation_bytes


def element_size(elem_type: int) -> int:
    """Bytes per element of an ONNX tensor type (strings: a pointer's worth, a lower bound)."""
    from onnx import helper

    try:
        return max(1, helper.tensor_dtype_to_np_dtype(elem_type).itemsize)
    except (KeyError, TypeError, ValueError):
        return 8


def read_structure(path: str | Path, max_memory_bytes: int | None = None) -> OnnxStructure:
    """The model in `path` without large initializer data (UserError when it is not one)."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    budget, origin = memory_budget(max_memory_bytes)
    initializers: list[Initializer] = []
    try:
        # the opener: a regular file (a FIFO is refused, not waited on) of protobuf's 2 GiB
        with open_named(path, ONNX_MODEL, None) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                raise UserError(f"cannot load ONNX model {path}: empty file")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                data = memoryview(mapped)
                try:
                    kept, stand_ins = _without_large_initializers(data, size, initializers,
                                                                  budget // 2)
                finally:
                    data.release()
        model = onnx.ModelProto()
        model.ParseFromString(bytes(kept))
    except NamedFileError as exc:
        if exc.too_large:  # say why there is a limit at all
            raise NamedFileError(f"{exc}: over protobuf's 2 GiB limit for an ONNX file (larger "
                                 "models keep their weights as external data)",
                                 too_large=True) from None
        raise
    except _TooBig as exc:
        raise UserError(f"{path}: its graph without the initializers' data is over "
                        f"{exc.args[0]:,} bytes; parsing it takes about twice that, over the "
                        f"memory budget of {budget:,} bytes ({origin})") from None
    except (WireError, DecodeError, RecursionError) as exc:
        raise UserError(f"cannot load ONNX model {path}: not readable ({exc})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    model.graph.input.extend(stand_ins)
    _check_external_data(path, initializers)
    structure = OnnxStructure(path, model, initializers, size)
    _check_signature(structure)
    return structure


class _TooBig(Exception):
    """The bytes kept of a model passed the limit (args[0])."""


def _without_large_initializers(data: memoryview, size: int, initializers: list[Initializer],
                                max_kept: int) -> tuple[bytearray, list[Any]]:
    """The model's bytes with every initializer over KEEP_INITIALIZER_BYTES cut out of the
    top-level graph; returns them and typed graph inputs standing in for the ones cut. What is
    kept (nodes, small constants, metadata) is read and parsed: over `max_kept` -> _TooBig."""
    from onnx import TensorProto, helper

    kept = bytearray()
    stand_ins = []
    for number, wire, start, end, field_start in wire_fields(data, 0, size):
        if number != MODEL_GRAPH or wire != LENGTH_DELIMITED:
            if len(kept) + end - field_start > max_kept:
                raise _TooBig(max_kept)
            kept += data[field_start:end]
            continue
        graph = bytearray()
        for g_number, g_wire, g_start, g_end, g_field_start in wire_fields(data, start, end):
            sparse = g_number == GRAPH_SPARSE_INITIALIZER
            if g_wire != LENGTH_DELIMITED or g_number not in (GRAPH_INITIALIZER,
                                                               GRAPH_SPARSE_INITIALIZER):
                if len(kept) + len(graph) + g_end - g_field_start > max_kept:
                    raise _TooBig(max_kept)
                graph += data[g_field_start:g_end]
                continue
            header = _tensor_header(data, g_start, g_end, sparse, TensorProto)
            external = None
            if header.data_location == TensorProto.EXTERNAL:
                external = next((entry.value for entry in header.external_data
                                 if entry.key == "location"), "")
            initializers.append(Initializer(header.name, header.data_type, tuple(header.dims),
                                            external))
            if not sparse and g_end - g_start <= KEEP_INITIALIZER_BYTES:
                graph += data[g_field_start:g_end]
                continue
            stand_ins.append(helper.make_tensor_value_info(header.name, header.data_type,
                                                           list(header.dims)))
        kept += _frame(MODEL_GRAPH, graph)
    return kept, stand_ins


def _check_external_data(path: Path, initializers: list[Initializer]) -> None:
    """Every external data file the model names is a regular file of bounded size under the
    model's folder (onnxruntime reads them; a location of `../x`, `/etc/passwd`, a symlink out
    or a FIFO is refused here first)."""
    folder = path.resolve().parent
    checked: set[str] = set()
    for init in initializers:
        if init.external is None or init.external in checked:
            continue
        checked.add(init.external)
        where = f"{shown(path)}: initializer {sanitise(init.name[:80])!r}'s external data"
        if not init.external:
            raise UserError(f"{where} names no file (no 'location')")
        named_file(folder / init.external, ONNX_EXTERNAL_DATA, folder, where)


def _tensor_header(data: memoryview, start: int, end: int, sparse: bool,
                   tensor_class: type) -> Any:
    """A TensorProto holding only the name, type and dims of the tensor at data[start:end]
    (for a SparseTensorProto: its dense dims and its values' type)."""
    header = bytearray()
    if sparse:
        for number, wire, a, b, field_start in wire_fields(data, start, end):
            if number == SPARSE_DIMS:
                header += _retag(data, field_start, b, TENSOR_DIMS, number, wire)
            elif number == SPARSE_VALUES and wire == LENGTH_DELIMITED:
                for v_number, _, _, v_end, v_start in wire_fields(data, a, b):
                    if v_number in (TENSOR_DATA_TYPE, TENSOR_NAME):
                        header += data[v_start:v_end]
    else:
        for number, _, _, b, field_start in wire_fields(data, start, end):
            if number in TENSOR_HEADER_FIELDS:
                header += data[field_start:b]
    tensor = tensor_class()
    tensor.ParseFromString(bytes(header))
    if len(tensor.dims) > MAX_RANK or any(d < 0 for d in tensor.dims):
        raise WireError(f"initializer {tensor.name[:80]!r} declares dims "
                        f"{list(tensor.dims)[:8]}")
    return tensor


def _retag(data: memoryview, field_start: int, end: int, new_number: int, number: int,
           wire: int) -> bytes:
    """The field at data[field_start:end] with its field number changed to `new_number`."""
    _, payload_start = read_varint(data, field_start, end)
    return varint(new_number << 3 | wire) + bytes(data[payload_start:end])


def _frame(number: int, payload: bytearray) -> bytes:
    return frame(number, len(payload)) + bytes(payload)


def _check_signature(structure: OnnxStructure) -> None:
    graph = structure.model.graph
    if not graph.output:
        raise UserError(f"{structure.path}: the model has no outputs")
    if not structure.inputs:
        raise UserError(f"{structure.path}: the model has no inputs (nothing to feed it)")


def _dims(value_type: Any) -> list[int] | None:
    """Static dims of a tensor type, or None when any is unknown."""
    tensor = value_type.tensor_type
    if not tensor.HasField("shape"):
        return None
    dims = []
    for dim in tensor.shape.dim:
        if not dim.HasField("dim_value") or dim.dim_value < 0:
            return None
        dims.append(dim.dim_value)
    return dims


def model_cost(structure: OnnxStructure, batch: int, budget: int | None = None) -> ModelCost:
    """Weights and every node output of `structure` at `batch` (symbolic or zero first dims
    of the inputs are set to it), by ONNX shape inference.

    Plain shape inference runs here. Data propagation (shapes computed from constants) runs
    only when that leaves sizes unknown and the known ones fit `budget`, and then in a child
    process (`limited_process`): onnx materialises the values it propagates, so a
    ConstantOfShape of [2**36] feeding a Concat would take hundreds of GB in this process."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(structure.model)
    fed = {value.name for value in structure.inputs}
    for value in model.graph.input:
        if value.name not in fed:
            continue
        shape = value.type.tensor_type.shape
        if shape.dim and not shape.dim[0].dim_value:
            shape.dim[0].Clear()
            shape.dim[0].dim_value = batch
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # onnx raises its own error types, or RuntimeError from C++
        raise UserError(f"{structure.path}: shape inference failed: {sanitise(str(exc))[:300]}"
                        ) from None
    cost = _cost_of(inferred.graph, structure, fed, batch)
    if not cost.unknown or (budget is not None and cost.total > budget):
        return cost
    with tempfile.TemporaryDirectory(prefix="resnext-shapes-") as folder:
        given, result = Path(folder) / "model.onnx", Path(folder) / "inferred.onnx"
        given.write_bytes(model.SerializeToString())
        outcome = run_limited(__name__, [str(given), str(result)], DATA_PROP_ADDRESS_SPACE,
                              DATA_PROP_TIMEOUT_S)
        if not outcome.ok:
            raise UserError(f"{structure.path}: the size of {cost.unknown[0]} depends on "
                            "values computed from constants, and propagating them in a child "
                            f"process limited to {DATA_PROP_ADDRESS_SPACE:,} bytes "
                            f"{outcome.what}: a shape computed from constants is too large")
        propagated = onnx.ModelProto()  # written by the child, in the folder made above
        propagated.ParseFromString(read_named_bytes(result, ONNX_MODEL, Path(folder)))
    return _cost_of(propagated.graph, structure, fed, batch)


def _cost_of(graph: Any, structure: OnnxStructure, fed: set[str], batch: int) -> ModelCost:
    """Bytes of the initializers and of every node output and input of an inferred graph."""
    types: dict[str, Any] = {}
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name not in types or _dims(value.type) is not None:  # inferred shapes win
            types[value.name] = value.type
    largest = ("nothing", 0)
    for init in structure.initializers:
        if init.nbytes > largest[1]:
            largest = (f"initializer {init.name!r} {list(init.dims)}", init.nbytes)
    activations = 0
    unknown = []
    for index, node in enumerate(graph.node):
        for output in node.output:
            if not output:
                continue
            value_type = types.get(output)
            dims = _dims(value_type) if value_type is not None else None
            where = (f"node {node.name or f'#{index}'!r} ({sanitise(node.op_type)}) "
                     f"output {output!r}")
            if dims is None:
                unknown.append(where)
                continue
            nbytes = math.prod(dims) * element_size(value_type.tensor_type.elem_type)
            activations += nbytes
            if nbytes > largest[1]:
                largest = (f"{where} {dims}", nbytes)
    for value in graph.input:
        dims = _dims(value.type) if value.name in fed else None
        if dims is not None:
            nbytes = math.prod(dims) * element_size(value.type.tensor_type.elem_type)
            activations += nbytes
            if nbytes > largest[1]:
                largest = (f"input {value.name!r} {dims}", nbytes)
    weights = sum(init.nbytes for init in structure.initializers)
    return ModelCost(batch, weights, activations, largest, unknown)


def check_cost(cost: ModelCost, path: Path, budget: int, budget_origin: str,
               advice: str) -> None:
    """UserError when `cost` is over `budget`, naming the largest node or initializer."""
    if cost.total <= budget:
        return
    what, nbytes = cost.largest
    raise UserError(f"{path}: running it at batch {cost.batch} needs about {cost.total:,} "
                    f"bytes ({cost.initializer_bytes:,} of weights, {cost.activation_bytes:,} "
                    f"of activations; the largest is {what}, {nbytes:,} bytes), over the "
                    f"memory budget of {budget:,} ({budget_origin}); {advice}")


def main(argv: list[str]) -> int:
    """Child process: shape inference with data propagation of the model in argv[0], written
    to argv[1] (see `model_cost`)."""
    import onnx

    model = onnx.ModelProto()
    model.ParseFromString(read_named_bytes(argv[0], ONNX_MODEL, None))
    onnx.save(onnx.shape_inference.infer_shapes(model, data_prop=True), argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
