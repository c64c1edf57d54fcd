"""The IR's operators: typed attributes, shape rules, parameters and multiply-accumulates.

Every operator is a frozen dataclass. Shapes are (channels, height, width); the batch
dimension is symbolic and never appears here. Parameter names are the suffixes PyTorch
uses (`weight`, `bias`, `running_mean`, ...), so `node.name + "." + suffix` is the
torchvision state-dict key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar


class ShapeError(ValueError):
    """An operator cannot accept the shapes it is given."""


@dataclass(frozen=True)
class TensorShape:
    """Per-sample activation shape (C, H, W); N is symbolic."""

    channels: int
    height: int
    width: int

    @property
    def numel(self) -> int:
        return self.channels * self.height * self.width

    def as_list(self) -> list[int]:
        return [self.channels, self.height, self.width]

    def __str__(self) -> str:
        return f"{self.channels}x{self.height}x{self.width}"


@dataclass(frozen=True)
class ParamSpec:
    """A tensor owned by an operator: `trainable` ones are parameters, others buffers."""

    suffix: str
    shape: tuple[int, ...]
    trainable: bool = True
    dtype: str = "float32"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _conv_out(size: int, kernel: int, stride: int, padding: int, ceil: bool = False) -> int:
    span = size + 2 * padding - kernel
    if span < 0:
        return 0
    steps = -(-span // stride) if ceil else span // stride
    return steps + 1


def _spatial(
    op_name: str, shape: TensorShape, kernel: int, stride: int, padding: int, ceil: bool = False,
    dilation: int = 1,
) -> tuple[int, int]:
    if stride > 1 and (shape.height < stride or shape.width < stride):
        raise ShapeError(
            f"stride {stride} is too large: a {op_name} with stride {stride} needs a feature map "
            f"of at least {stride}x{stride} and receives {shape.height}x{shape.width}; "
            f"use a larger input or a smaller stride"
        )
    span = dilation * (kernel - 1) + 1  # a dilated kernel's reach
    height = _conv_out(shape.height, span, stride, padding, ceil)
    width = _conv_out(shape.width, span, stride, padding, ceil)
    if height < 1 or width < 1:
        reach = f", dilation {dilation}" if dilation != 1 else ""
        raise ShapeError(
            f"{op_name} (kernel {kernel}, stride {stride}, padding {padding}{reach}) "
            f"shrinks a {shape.height}x{shape.width} feature map below 1x1"
        )
    return height, width


@dataclass(frozen=True)
class Op:
    """Base class. `kind` names the operator in the IR, DOT and JSON dumps."""

    kind: ClassVar[str] = ""
    arity: ClassVar[tuple[int, int | None]] = (1, 1)

    def infer(self, inputs: list[TensorShape]) -> TensorShape:
        return inputs[0]

    def params(self) -> list[ParamSpec]:
        return []

    def macs(self, inputs: list[TensorShape], output: TensorShape) -> int:
        """Multiply-accumulates per sample (only conv and linear count, like torchvision)."""
        return 0

    def attrs(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Conv(Op):
    """2-D convolution; `dilation` > 1 spaces the kernel taps (Yu and Koltun 2016), as the
    selective-kernel block's second path does."""

    kind: ClassVar[str] = "conv"
    in_channels: int
    out_channels: int
    kernel_size: int = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1
    bias: bool = False
    dilation: int = 1

    def infer(self, inputs: list[TensorShape]) -> TensorShape:
        (x,) = inputs
        if x.channels != self.in_channels:
            raise ShapeError(f"conv expects {self.in_channels} input channels, got {x.channels}")
        for name, channels in (("input", self.in_channels), ("output", self.out_channels)):
            if channels % self.groups:
                raise ShapeError(
                    f"{name} channels {channels} are not divisible by {self.groups} groups"
                )
        height, width = _spatial("conv", x, self.kernel_size, self.stride, self.padding,
                                 dilation=self.dilation)
        return TensorShape(self.out_channels, height, width)

    def params(self) -> list[ParamSpec]:
        k = self.kernel_size
        out = [ParamSpec("weight", (self.out_channels, self.in_channels // self.groups, k, k))]
        if self.bias:
            out.append(ParamSpec("bias", (self.out_channels,)))
        return out

    def macs(self, inputs: list[TensorShape], output: TensorShape) -> int:
        per_output = (self.in_channels // self.groups) * self.kernel_size**2
        return output.numel * per_output


# BatchNorm's training step counter (PyTorch's buffer name); inference never reads it.
BN_STEP_COUNTER = "num_batches_tracked"


@dataclass(frozen=True)
class BatchNorm(Op):
    kind: ClassVar[str] = "batchnorm"
    num_features: int
    eps: float = 1e-5
    momentum: float = 0.1
    # Zero-init of a block's last BN (Goyal et al. 2017), applied at initialisation only.
    zero_init: bool = False

    def infer(self, inputs: list[TensorShape]) -> TensorShape:
        (x,) = inputs
        if x.channels != self.num_features:
            raise ShapeError(f"batchnorm expects {self.num_features} channels, got {x.channels}")
        return x

    def params(self) -> list[ParamSpec]:
        c = (self.num_features,)
        return [
            ParamSpec("weight", c),
            ParamSpec("bias", c),
            ParamSpec("running_mean", c, trainable=False),
            ParamSpec("running_var", c, trainable=False),
            ParamSpec(BN_STEP_COUNTER, (), trainable=False, dtype="int64"),
        ]


@dataclass(frozen=True)
class ReLU(Op):
    kind: ClassVar[str] = "relu"


@dataclass(frozen=True)
class Sigmoid(Op):
    kind: ClassVar[str] = "sigmoid"


@dataclass(frozen=True)
class MaxPool(Op):
    kind: ClassVar[str] = "maxpool"
    kernel_size: int = 3
    stride: int = 2
    padding: int = 1

    def infer(self, inputs: list[TensorShape]) -> TensorShape:
        (x,) = inputs
        height, width = _spatial("maxpool", x, self.kernel_size, self.stride, self.padding)
        return TensorShape(x.channels, height, width)


@dataclass(frozen=True)
class AvgPool(Op):
    """Strided average pooling (ResNet-D shortcut, shortcut A subsampling)."""

    kind: ClassVar[str] = "avgpool"
    kernel_size: int = 2
    stride: int = 2
    padding: int = 0
    ceil_mode: bool = False
    count_include_pad: bool = True

    def infer(self, inputs: list[TensorShape]) -> TensorShape:
        (x,) = inputs
        height, width = _spatial(
            "avgpool", x, self.kernel_size, self.stride, self.padding, self.ceil_mode
        )
        return TensorShape(x.channels, height, width)


@dataclass(frozen=True)
class GlobalAvgPool(Op):
    kind: ClassVar[str] = "global_avgpool"

    def infer(self, inputs: list[TensorShape]) -> TensorShape:
        return TensorShape(inputs[0].channels, 1, 1)


@dataclass(frozen=True)
class Flatten(Op):
    """(C, H, W) -> (C*H*W, 1, 1); the IR keeps every value 4-D."""

    kind: ClassVar[str] = "flatten"

    def infer(self, inputs: list[TensorShape]) -> TensorShape:
        return TensorShape(inputs[0].numel, 1, 1)


@dataclass(frozen=True)
class Dropout(Op):
    kind: ClassVar[str] = "dropout"
    p: float = 0.0


@dataclass(frozen=True)
class Linear(Op):
    kind: ClassVar[str] = "linear"
    in_features: int
    out_features: int
    bias: bool = True

    def infer(self, inputs: list[TensorShape]) -> TensorShape:
        (x,) = inputs
        if (x.height, x.width) != (1, 1) or x.channels != self.in_features:
            raise ShapeError(f"linear expects {self.in_features} features, got {x}")
        return TensorShape(self.out_features, 1, 1)

    def params(self) -> list[ParamSpec]:
        out = [ParamSpec("weight", (self.out_features, self.in_features))]
        if self.bias:
            out.append(ParamSpec("bias", (self.out_features,)))
        return out

    def macs(self, inputs: list[TensorShape], output: TensorShape) -> int:
        return self.in_features * self.out_features


def _same_shapes(kind: str, inputs: list[TensorShape]) -> TensorShape:
    first = inputs[0]
    for other in inputs[1:]:
        if other != first:
            raise ShapeError(f"{kind} needs equal shapes, got {first} and {other}")
    return first


@dataclass(frozen=True)
class Add(Op):
    kind: ClassVar[str] = "add"
    arity: ClassVar[tuple[int, int | None]] = (2, None)

    def infer(self, inputs: list[TensorShape]) -> TensorShape:
        return _same_shapes("add", inputs)


@dataclass(frozen=True)
class Mul(Op):
    """Channel-wise scaling: input 0 (C, H, W) times input 1 (C, 1, 1) (squeeze-excitation)."""

    kind: ClassVar[str] = "mul"
    arity: ClassVar[tuple[int, int | None]] = (2, 2)

    def infer(self, inputs: list[TensorShape]) -> TensorShape:
        x, scale = inputs
        if scale.channels != x.channels or (scale.height, scale.width) not in (
            (1, 1),
            (x.height, x.width),
        ):
            raise ShapeError(f"mul cannot broadcast {scale} onto {x}")
        return x


@dataclass(frozen=True)
class PathSoftmax(Op):
    """Softmax across `paths` groups of channels, per channel and pixel: the input's channels
    are `paths` blocks of C, and output channel (i, c) is exp(x[i, c]) / sum_j exp(x[j, c])
    (the selective-kernel attention, Li et al. 2019, Eq. 5)."""

    kind: ClassVar[str] = "path_softmax"
    paths: int = 2

    def infer(self, inputs: list[TensorShape]) -> TensorShape:
        (x,) = inputs
        if self.paths < 1 or x.channels % self.paths:
            raise ShapeError(f"{x.channels} channels do not split into {self.paths} paths")
        return x


@dataclass(frozen=True)
class Concat(Op):
    """Channel concatenation (block form B)."""

    kind: ClassVar[str] = "concat"
    arity: ClassVar[tuple[int, int | None]] = (1, None)

    def infer(self, inputs: list[TensorShape]) -> TensorShape:
        first = inputs[0]
        for other in inputs[1:]:
            if (other.height, other.width) != (first.height, first.width):
                raise ShapeError(f"concat needs equal spatial sizes, got {first} and {other}")
        return TensorShape(sum(x.channels for x in inputs), first.height, first.width)


@dataclass(frozen=True)
class Slice(Op):
    """Channels [start, stop) of the input (one path of a split)."""

    kind: ClassVar[str] = "slice"
    start: int
    stop: int

    def infer(self, inputs: list[TensorShape]) -> TensorShape:
        (x,) = inputs
        if not 0 <= self.start < self.stop <= x.channels:
            raise ShapeError(f"slice [{self.start}, {self.stop}) out of {x.channels} channels")
        return TensorShape(self.stop - self.start, x.height, x.width)


@dataclass(frozen=True)
class PadChannels(Op):
    """Zero channels appended after the input's (shortcut A, the paper's parameter-free option)."""

    kind: ClassVar[str] = "pad_channels"
    extra: int = 0

    def infer(self, inputs: list[TensorShape]) -> TensorShape:
        (x,) = inputs
        if self.extra < 0:
            raise ShapeError("shortcut A cannot drop channels")
        return TensorShape(x.channels + self.extra, x.height, x.width)


@dataclass(frozen=True)
class Subsample(Op):
    """Strided identity: keeps every `stride`-th pixel (shortcut A, like a 1x1 pool of stride s)."""

    kind: ClassVar[str] = "subsample"
    stride: int = 2

    def infer(self, inputs: list[TensorShape]) -> TensorShape:
        (x,) = inputs
        height, width = _spatial("subsample", x, 1, self.stride, 0)
        return TensorShape(x.channels, height, width)


OPS: dict[str, type[Op]] = {
    cls.kind: cls
    for cls in (
        Conv,
        BatchNorm,
        ReLU,
        Sigmoid,
        MaxPool,
        AvgPool,
        GlobalAvgPool,
        Flatten,
        Dropout,
        Linear,
        Add,
        Mul,
        Concat,
        PathSoftmax,
        Slice,
        PadChannels,
        Subsample,
    )
}
