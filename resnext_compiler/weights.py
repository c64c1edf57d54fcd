"""Model weights as numpy arrays keyed by IR parameter names (torchvision state-dict keys).

The one weights loader: `model_weights(graph, path)` reads a file, strips wrapper prefixes,
converts block forms, fills absent step counters and checks every name and shape, for
`compile --weights`, `evaluate`, training and `import-weights` alike. Sources, all read one
tensor at a time so an exporter can stream them:

- a `.safetensors` file (what `import-weights` and training write), parsed with numpy alone
  and read one tensor at a time (no torch);
- a PyTorch checkpoint (`.pt`/`.pth`): a plain state dict or a dict holding one under `"model"`
  or `"state_dict"`, with DDP/`torch.compile` prefixes stripped; torch is imported only here
  and `torch.load(..., weights_only=True)` never runs pickled code;
- `InitialWeights(graph, seed)`: deterministic initialisation by the one rule in
  `initialisation.py` (same seed, same bytes).

`compare_weights` is the one missing/unexpected/wrong-shape report.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from resnext_compiler import ops
from resnext_compiler.errors import UserError, shown
from resnext_compiler.initialisation import Constant, Normal, Start, parameter_starts
from resnext_compiler.ir import Graph, Param
from resnext_compiler.named_files import WEIGHTS, open_named

# BatchNorm's step counter: inference never reads it, so a weights file may leave it out
# (Torch7 and old PyTorch checkpoints have none); it is then filled with 0.
OPTIONAL_SUFFIXES = (ops.BN_STEP_COUNTER,)
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
SHOWN_PROBLEMS = 10


def strip_wrapper_prefixes(key: str) -> str:
    """`module._orig_mod.layer1.0.conv1.weight` -> `layer1.0.conv1.weight`."""
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key

_SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # widened to float32 on read: numpy has no bfloat16
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit


class SafetensorsWeights(Mapping[str, np.ndarray]):
    """A `.safetensors` file as a read-only mapping; each lookup reads one tensor from disk.

    Tensors are read into fresh arrays (not memory-mapped): a mapping's touched pages would
    count towards the process's resident memory until the whole model had been read.
    """

    fresh_arrays = True  # every lookup returns a new array that the caller may modify

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._entries, self._data_start = _read_safetensors_header(self.path)

    def __getitem__(self, name: str) -> np.ndarray:
        dtype_name, shape, (begin, end) = self._entries[name]
        dtype = _SAFETENSORS_DTYPES[dtype_name]
        array = np.empty(shape, dtype)
        with open_named(self.path, WEIGHTS, None) as handle:
            handle.seek(self._data_start + begin)
            if handle.readinto(memoryview(array).cast("B")) != end - begin:
                raise UserError(f"{shown(self.path)}: file ends inside tensor {name[:80]!r}")
        if dtype_name == "BF16":
            return (array.astype(np.uint32) << 16).view(np.float32)
        return array

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]


def _read_safetensors_header(path: Path) -> tuple[dict, int]:
    """Parse and check the header: 8-byte little-endian length, then JSON (safetensors spec)."""
    with open_named(path, WEIGHTS, None) as handle:
        size = os.fstat(handle.fileno()).st_size
        prefix = handle.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 2 <= length <= min(_MAX_HEADER_BYTES, size - 8):
            raise UserError(f"{shown(path)}: not a safetensors file (bad header length)")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"{shown(path)}: not a safetensors file (header is not JSON)") from None
        except RecursionError:
            raise UserError(f"{shown(path)}: not a safetensors file (header JSON nested too deeply)"
                            ) from None
    if not isinstance(header, dict):
        raise UserError(f"{shown(path)}: not a safetensors file (header is not a JSON object)")
    data_size = size - 8 - length
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info[
                "data_offsets"]
            itemsize = _SAFETENSORS_DTYPES[dtype_name].itemsize
            if not all(_is_count(n) for n in (*shape, begin, end)):
                raise ValueError("shape and offsets must be non-negative integers")
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{shown(path)}: tensor {name[:80]!r} has an unsupported or malformed "
                            f"entry {str(info)[:200]}") from None
        if not (0 <= begin <= end <= data_size and end - begin == math.prod(shape) * itemsize):
            raise UserError(f"{shown(path)}: tensor {name[:80]!r} has data offsets "
                            f"{begin}..{end} that do not fit its shape {list(shape)} or the file")
        entries[name] = (dtype_name, shape, (begin, end))
    _check_no_overlap(path, entries)
    return entries, 8 + length


def _check_no_overlap(path: Path, entries: dict) -> None:
    """The safetensors format lays tensors out one after another; two entries on one byte range
    (200 names on one 64 MiB range would read as 12.5 GiB) are refused before any is read."""
    spans = sorted((begin, end, name) for name, (_, _, (begin, end)) in entries.items()
                   if end > begin)
    for (_, first_end, first), (second_begin, _, second) in zip(spans, spans[1:], strict=False):
        if second_begin < first_end:
            raise UserError(f"{shown(path)}: tensors {first[:80]!r} and "
                            f"{second[:80]!r} overlap in the file (safetensors "
                            "tensors each have their own bytes)")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_torch_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """A state dict from a PyTorch checkpoint, as float32/int64 numpy arrays."""

    from resnext_compiler.extras import require

    torch = require("torch", f"reading the PyTorch checkpoint {shown(Path(path).name)}")

    try:
        with open_named(path, WEIGHTS, None) as handle:
            loaded = torch.load(handle, map_location="cpu", weights_only=True)
    except UserError:
        raise
    # pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError and any other
    # failure to unpickle a file are the file's fault
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{shown(path)}: cannot read as a PyTorch checkpoint: "
                        f"{shown(first_line)}") from None
    state = loaded
    if isinstance(loaded, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(loaded.get(key), dict):
                state = loaded[key]
                break
    if not isinstance(state, dict) or not state:
        raise UserError(f"{shown(path)}: expected a state dict (or a dict with a 'model' "
                        "state dict)")
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{shown(path)}: entry {str(key)[:80]!r} is a "
                            f"{type(value).__name__}, not a tensor")
        name = strip_wrapper_prefixes(key)
        if value.dtype == torch.bfloat16:
            value = value.float()
        out[name] = value.detach().cpu().numpy()
    return out


def read_weights(path: str | Path) -> Mapping[str, np.ndarray]:
    """Open a weights file: safetensors (detected by content) or a PyTorch checkpoint."""
    file = Path(path)
    with open_named(file, WEIGHTS, None) as handle:  # a FIFO or device is refused, not read
        head = handle.read(9)
    if head[:2] == b"PK" or head[:1] == b"\x80" or file.suffix in (".pt", ".pth", ".ckpt"):
        return read_torch_checkpoint(file)  # zip (torch.save) or legacy pickle
    if len(head) == 9 and head[8:9] == b"{":
        return SafetensorsWeights(file)
    raise UserError(f"{shown(file)}: not a safetensors file or a PyTorch checkpoint")


def list_problems(problems: list[str]) -> str:
    """The first SHOWN_PROBLEMS lines, indented, and how many more there are."""
    shown = "\n  ".join(problems[:SHOWN_PROBLEMS])
    more = (f"\n  ... and {len(problems) - SHOWN_PROBLEMS} more"
            if len(problems) > SHOWN_PROBLEMS else "")
    return f"  {shown}{more}"


@dataclass
class WeightsMismatch:
    """How a set of tensors differs from what a model expects, one line per tensor."""

    owner: str
    wrong_shapes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return self.wrong_shapes + self.missing + self.unexpected

    def counts(self) -> str:
        return (f"{len(self.wrong_shapes)} wrong shapes, {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected")

    def listing(self) -> str:
        return list_problems(self.problems)

    def error(self, source: str) -> UserError:
        return UserError(f"{source} do not fit {self.owner} ({self.counts()}):\n{self.listing()}")


def compare_weights(expected: Mapping[str, tuple[int, ...]], given: Mapping[str, tuple[int, ...]],
                    owner: str) -> WeightsMismatch:
    """Names and shapes of `given` against `expected` (step counters may be absent)."""
    report = WeightsMismatch(owner)
    for name, shape in expected.items():
        if name not in given:
            if not name.endswith(OPTIONAL_SUFFIXES):
                report.missing.append(f"{name}: missing (expected shape {list(shape)})")
        elif tuple(given[name]) != tuple(shape):
            report.wrong_shapes.append(f"{name}: expected shape {list(shape)}, "
                                       f"got {list(given[name])}")
    # only these names come from the file alone; the others are also the graph's
    report.unexpected = [f"{shown(name)}: not a parameter of {owner} (shape {list(shape)})"
                         for name, shape in given.items() if name not in expected]
    return report


def graph_shapes(graph: Graph) -> dict[str, tuple[int, ...]]:
    return {p.name: p.shape for p in graph.params()}


def weight_shapes(weights: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {name: weight_shape(weights, name) for name in weights}


def check_weights(graph: Graph, weights: Mapping[str, np.ndarray], source: str = "weights") -> None:
    """Raise UserError listing the first mismatching keys (with shapes) if `weights` do not fit."""
    report = compare_weights(graph_shapes(graph), weight_shapes(weights), graph.name)
    if report.problems:
        raise report.error(source)


def weight_shape(weights: Mapping[str, np.ndarray], name: str) -> tuple[int, ...]:
    """A tensor's shape, without reading it from a lazy mapping (one with a `shape` method)."""
    lazy_shape = getattr(weights, "shape", None)
    if callable(lazy_shape):
        return tuple(lazy_shape(name))
    return tuple(np.shape(weights[name]))


class InitialWeights(Mapping[str, np.ndarray]):
    """Deterministic initial weights by the one rule (`initialisation.parameter_starts`),
    generated on demand, one tensor at a time.

    Each random tensor has its own stream seeded by (seed, crc32(name)), so the bytes do not
    depend on the order tensors are asked for. The distributions are the torch module's; the
    bytes are not (numpy and torch draw differently).
    """

    fresh_arrays = True  # every lookup returns a new array that the caller may modify

    def __init__(self, graph: Graph, seed: int = 0):
        self.seed = seed
        self._starts: dict[str, tuple[Param, Start]] = {
            param.name: (param, start) for param, start in parameter_starts(graph)}

    def __iter__(self) -> Iterator[str]:
        return iter(self._starts)

    def __len__(self) -> int:
        return len(self._starts)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._starts[name][0].shape

    def __getitem__(self, name: str) -> np.ndarray:
        param, start = self._starts[name]
        if isinstance(start, Constant):
            return np.full(param.shape, start.value, np.dtype(param.dtype))
        seed = np.random.SeedSequence([self.seed % 2**64, zlib.crc32(name.encode())])
        generator = np.random.Generator(np.random.SFC64(seed))
        if isinstance(start, Normal):
            values = generator.standard_normal(param.shape, np.float32)
            values *= np.float32(start.std)  # in place: N(0, 1) -> N(0, std^2)
            return values
        values = generator.random(param.shape, np.float32)
        values *= np.float32(2 * start.bound)  # in place: U[0, 1) -> U[-bound, bound)
        values -= np.float32(start.bound)
        return values


def fit_form(weights: Mapping[str, np.ndarray], graph: Graph, source: str
             ) -> Mapping[str, np.ndarray]:
    """`weights` with every bottleneck in the block form `graph` uses (`passes.forms`)."""
    from resnext_compiler.passes.forms import convert_weights, needs_conversion

    if not needs_conversion(weights, graph):  # e.g. form-C weights compiled with --form A
        return weights
    check_declared_size(weights, graph, source)  # conversion reads every tensor
    try:
        return convert_weights(weights, graph)
    except ValueError as exc:
        raise UserError(f"{source} do not fit this spec: {shown(exc)}") from None


# A file in another block form holds the same parameters in other shapes; one that declares
# far more elements than the graph has is not a ResNeXt of this spec, whatever its names.
SIZE_SLACK_FACTOR = 4
SIZE_SLACK_ELEMENTS = 16 * 1024 * 1024


def check_declared_size(weights: Mapping[str, np.ndarray], graph: Graph, source: str) -> None:
    """UserError, before any tensor is read, when `weights` declare more elements than
    SIZE_SLACK_FACTOR times `graph`'s parameters (plus SIZE_SLACK_ELEMENTS)."""
    expected = sum(math.prod(p.shape) for p in graph.params())
    declared = 0
    limit = SIZE_SLACK_FACTOR * expected + SIZE_SLACK_ELEMENTS
    for name in weights:
        declared += math.prod(weight_shape(weights, name))
        if declared > limit:
            raise UserError(f"{source} declare more than {limit:,} elements (at "
                            f"{name[:80]!r}); {graph.name} has {expected:,}: not "
                            "weights of this spec")


def fill_step_counters(weights: Mapping[str, np.ndarray], graph: Graph
                       ) -> Mapping[str, np.ndarray]:
    """`weights` plus a 0 for every BatchNorm step counter it lacks."""
    absent = {p.name: np.zeros(p.shape, np.int64) for p in graph.params()
              if p.name.endswith(OPTIONAL_SUFFIXES) and p.name not in weights}
    if not absent:
        return weights
    return _Overlay(weights, absent)


class _Overlay(Mapping[str, np.ndarray]):
    """`base` with a few extra tensors, keeping `base` lazy."""

    def __init__(self, base: Mapping[str, np.ndarray], extra: dict[str, np.ndarray]):
        self._base, self._extra = base, extra
        self.fresh_arrays = getattr(base, "fresh_arrays", False)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._extra[name] if name in self._extra else self._base[name]

    def __iter__(self) -> Iterator[str]:
        yield from self._base
        yield from self._extra

    def __len__(self) -> int:
        return len(self._base) + len(self._extra)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._extra[name].shape if name in self._extra else weight_shape(self._base, name)


def _read_for(graph: Graph, path: str | Path) -> Mapping[str, np.ndarray]:
    """Tensors of any importable file (`importers.read_tensors`: state dicts, safetensors,
    Torch7, Caffe) keyed by `graph`'s names."""
    from resnext_compiler.importers import read_tensors

    file = Path(path)
    if not file.is_file():
        raise UserError(f"weights file not found: {shown(file)}")
    return read_tensors(file, graph)[0]


def model_weights(graph: Graph, path: str | Path | None, seed: int = 0) -> Mapping[str, np.ndarray]:
    """Weights for `graph`: read from `path`, fitted to its forms and checked, or initialised."""
    if path is None:
        return InitialWeights(graph, seed)
    source = f"weights {shown(Path(path).name)}"
    weights = fill_step_counters(fit_form(_read_for(graph, path), graph, source), graph)
    check_weights(graph, weights, source=source)
    return weights


def fine_tune_weights(graph: Graph, path: str | Path, seed: int = 0
                      ) -> tuple[Mapping[str, np.ndarray], list[str]]:
    """Weights to start training from: `path`, except a classifier whose class count differs
    (ImageNet weights fine-tuned on a 10-class folder), which is initialised from `seed`.
    Returns the weights and the names initialised afresh; anything else that does not fit is
    an error, as in `model_weights`."""
    source = f"weights {shown(Path(path).name)}"
    weights = fill_step_counters(fit_form(_read_for(graph, path), graph, source), graph)
    classifier = {p.name for node in graph.nodes if isinstance(node.op, ops.Linear)
                  for p in graph.params() if p.node == node.name}
    report = compare_weights(graph_shapes(graph), weight_shapes(weights), graph.name)
    fresh = [line.split(":")[0] for line in report.wrong_shapes]
    if report.missing or report.unexpected or not set(fresh) <= classifier:
        check_weights(graph, weights, source=source)  # raises with the full listing
    initial = InitialWeights(graph, seed)
    return {name: initial[name] if name in fresh else weights[name] for name in weights}, fresh
