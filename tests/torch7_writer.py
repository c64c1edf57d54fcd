"""Test helper: a minimal Torch7 binary serialiser, and the seed's model layout built with it.

Writes what torch7's `File.lua` writeObject writes (binary, little-endian, 8-byte longs): numbers
as doubles, strings as length + bytes, tables as (index, size, key/value pairs), torch objects as
(index, "V 1", class name, payload), tensors as (ndim, sizes, strides, 1-based offset, storage).
`seed_model` lays out a network like facebookresearch/ResNeXt's models/resnext.lua (form B:
`resnext_bottleneck_B`, form C: `resnext_bottleneck_C`), so the importer is tested on the real
container structure. Modules carry the fields torch7's constructors set (every module's
`output`, `gradInput`, `train` and `_type`; pooling's `dW`/`dH`/`padW`/`padH`/`ceil_mode`/
`count_include_pad`; `nn.View`'s `size` as a `torch.LongStorage`), and nil fields are left out
as a Lua table cannot hold them, so readers written against real torch7 files (OpenCV's
`readNetFromTorch`) read these too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TYPE_NIL, TYPE_NUMBER, TYPE_STRING, TYPE_TABLE, TYPE_TORCH, TYPE_BOOLEAN = 0, 1, 2, 3, 4, 5
_EMPTY = np.zeros((0,), np.float32)
TENSOR_TYPES = {np.dtype(np.float32): "Float", np.dtype(np.float64): "Double",
                np.dtype(np.int64): "Long"}


@dataclass(frozen=True)
class LongStorage:
    """A `torch.LongStorage` (what nn.View keeps its size in)."""

    values: tuple[int, ...]


@dataclass(eq=False)
class Module:
    """An `nn.*`/`cudnn.*` object: its Lua class name and its fields table."""

    typename: str
    fields: dict[str, Any] = field(default_factory=dict)


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()
        self.index = 0
        self.written: dict[int, int] = {}  # id(Module) -> its index: later uses are references

    def int(self, value: int) -> None:
        self.out += struct.pack("<i", value)

    def long(self, value: int) -> None:
        self.out += struct.pack("<q", value)

    def string(self, text: str) -> None:
        data = text.encode()
        self.int(len(data))
        self.out += data

    def _next_index(self) -> int:
        self.index += 1
        return self.index

    def obj(self, value: Any) -> None:
        if value is None:
            self.int(TYPE_NIL)
        elif isinstance(value, bool):
            self.int(TYPE_BOOLEAN)
            self.int(1 if value else 0)
        elif isinstance(value, (int, float)):
            self.int(TYPE_NUMBER)
            self.out += struct.pack("<d", float(value))
        elif isinstance(value, str):
            self.int(TYPE_STRING)
            self.string(value)
        elif isinstance(value, np.ndarray):
            self._tensor(value)
        elif isinstance(value, LongStorage):
            self._torch("torch.LongStorage")
            self.long(len(value.values))
            self.out += struct.pack(f"<{len(value.values)}q", *value.values)
        elif isinstance(value, Module) and id(value) in self.written:
            self.int(TYPE_TORCH)  # a reference to an object written before (torch7's File.lua)
            self.int(self.written[id(value)])
        elif isinstance(value, Module):
            self._torch(value.typename)
            self.written[id(value)] = self.index
            # Every nn.Module has these (nn.Module.__init__ and :evaluate()).
            base = {"output": _EMPTY, "gradInput": _EMPTY, "train": False,
                    "_type": "torch.FloatTensor"}
            self.obj({**base, **value.fields})
        elif isinstance(value, (list, tuple)):
            self.obj({i + 1: v for i, v in enumerate(value)})
        elif isinstance(value, dict):
            self.int(TYPE_TABLE)
            self.int(self._next_index())
            present = {k: v for k, v in value.items() if v is not None}  # Lua drops nils
            self.int(len(present))
            for key, item in present.items():
                self.obj(key)
                self.obj(item)
        else:
            raise TypeError(f"cannot serialise {type(value).__name__}")

    def _torch(self, class_name: str) -> None:
        self.int(TYPE_TORCH)
        self.int(self._next_index())
        self.string("V 1")
        self.string(class_name)

    def _tensor(self, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        kind = TENSOR_TYPES[array.dtype]
        self._torch(f"torch.{kind}Tensor")
        if array.size == 0:  # torch.Tensor(): no dims, offset 1, no storage
            self.int(0)
            self.long(1)
            self.int(TYPE_NIL)
            return
        self.int(array.ndim)
        for size in array.shape:
            self.long(size)
        for stride in array.strides:
            self.long(stride // array.itemsize)
        self.long(1)  # storage offset, 1-based
        self._torch(f"torch.{kind}Storage")
        self.long(array.size)
        self.out += array.tobytes()


def write_t7(path: str | Path, obj: Any) -> Path:
    writer = _Writer()
    writer.obj(obj)
    Path(path).write_bytes(bytes(writer.out))
    return Path(path)


# --- the seed's layout (facebookresearch/ResNeXt models/resnext.lua) ----------------------


def sequential(*modules: Module) -> Module:
    return Module("nn.Sequential", {"modules": list(modules), "train": False})


def concat_table(*modules: Module) -> Module:
    return Module("nn.ConcatTable", {"modules": list(modules)})


def conv(weight: np.ndarray, stride: int = 1, pad: int = 0, groups: int = 1,
         bias: np.ndarray | None = None, typename: str = "cudnn.SpatialConvolution") -> Module:
    n_out, n_in, kh, kw = weight.shape
    if typename.endswith("MM"):  # nn.SpatialConvolutionMM keeps a 2-D weight matrix
        weight = weight.reshape(n_out, -1)
    return Module(typename, {
        "weight": weight, "bias": bias, "nInputPlane": n_in * groups, "nOutputPlane": n_out,
        "kW": kw, "kH": kh, "dW": stride, "dH": stride, "padW": pad, "padH": pad,
        "groups": groups,
    })


def batchnorm(weights: dict[str, np.ndarray], name: str, eps: float = 1e-5,
              mean_shift: np.ndarray | float = 0.0) -> Module:
    return Module("cudnn.SpatialBatchNormalization", {
        "weight": weights[f"{name}.weight"], "bias": weights[f"{name}.bias"],
        "running_mean": weights[f"{name}.running_mean"] + mean_shift,
        "running_var": weights[f"{name}.running_var"] - (eps - 1e-5),
        "eps": eps, "momentum": 0.1, "affine": True,
    })


def average_pooling(kernel: int, stride: int = 1) -> Module:
    """`cudnn.SpatialAveragePooling(kW, kH, dW, dH)` with nn's defaults for the rest."""
    return Module("cudnn.SpatialAveragePooling", {
        "kW": kernel, "kH": kernel, "dW": stride, "dH": stride, "padW": 0, "padH": 0,
        "ceil_mode": False, "count_include_pad": True, "divide": True,
        "mode": "CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING"})


def relu() -> Module:
    return Module("cudnn.ReLU", {"inplace": True})


def _conv_bn(weights: dict[str, np.ndarray], conv_name: str, bn_name: str, stride: int = 1,
             pad: int = 0, groups: int = 1, rng: np.random.Generator | None = None) -> list[Module]:
    """conv + BN; with `rng`, the conv gets a random bias that the BN's mean compensates."""
    weight = weights[f"{conv_name}.weight"]
    bias = None if rng is None else rng.normal(size=weight.shape[0]).astype(weight.dtype)
    return [conv(weight, stride, pad, groups, bias),
            batchnorm(weights, bn_name, mean_shift=0.0 if bias is None else bias)]


def seed_block(weights: dict[str, np.ndarray], p: str, form: str, cardinality: int,
               stride: int, projection: bool, rng: np.random.Generator | None) -> Module:
    """`resnext_bottleneck_B` / `resnext_bottleneck_C` of the seed, from IR-named weights."""
    if form == "B":
        paths = []
        for i in range(cardinality):
            q = f"{p}.paths.{i}"
            paths.append(sequential(
                *_conv_bn(weights, f"{q}.conv1", f"{q}.bn1", rng=rng), relu(),
                *_conv_bn(weights, f"{q}.conv2", f"{q}.bn2", stride, 1, rng=rng), relu()))
        branch = sequential(concat_table(*paths), Module("nn.JoinTable", {"dimension": 2}),
                            *_conv_bn(weights, f"{p}.conv3", f"{p}.bn3", rng=rng))
    else:
        branch = sequential(
            *_conv_bn(weights, f"{p}.conv1", f"{p}.bn1", rng=rng), relu(),
            *_conv_bn(weights, f"{p}.conv2", f"{p}.bn2", stride, 1, cardinality, rng=rng),
            relu(), *_conv_bn(weights, f"{p}.conv3", f"{p}.bn3", rng=rng))
    if projection:
        shortcut = sequential(*_conv_bn(weights, f"{p}.downsample.0", f"{p}.downsample.1",
                                        stride, rng=rng))
    else:
        shortcut = Module("nn.Identity", {})
    return sequential(concat_table(branch, shortcut), Module("nn.CAddTable", {"inplace": True}),
                      relu())


def seed_model(weights: dict[str, np.ndarray], stages: list[tuple[int, int, bool]], form: str,
               cardinality: int, rng: np.random.Generator | None = None) -> Module:
    """A CIFAR-style seed model (3x3 stem): `stages` = [(depth, stride, first block projects)].

    The stem conv is an `nn.SpatialConvolutionMM` (2-D weight) and the stem BN uses eps 1e-3,
    so the importer's reshape and eps folding are exercised too.
    """
    stem_weight = weights["conv1.weight"]
    modules = [conv(stem_weight, 1, 1, typename="nn.SpatialConvolutionMM"),
               batchnorm(weights, "bn1", eps=1e-3), relu()]
    for index, (depth, stride, projection) in enumerate(stages):
        blocks = [seed_block(weights, f"layer{index + 1}.{i}", form, cardinality,
                             stride if i == 0 else 1, projection and i == 0, rng)
                  for i in range(depth)]
        modules.append(sequential(*blocks))
    features = weights["fc.weight"].shape[1]
    modules += [average_pooling(8),  # the seed's cudnn.SpatialAveragePooling(8, 8, 1, 1)
                Module("nn.View", {"size": LongStorage((features,)), "numElements": features,
                                   "numInputDims": 3}),  # nn.View(nFeatures):setNumInputDims(3)
                Module("nn.Linear", {"weight": weights["fc.weight"], "bias": weights["fc.bias"]})]
    return sequential(*modules)
