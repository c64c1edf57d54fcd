"""How a network's tensors start: the one initialisation rule, declared per parameter.

torchvision's ResNet initialisation, read from the IR's ops:

- conv weight: Kaiming normal, fan_out, ReLU gain (He et al. 2015, eq. 10 written for the
  backward pass): N(0, 2 / (out_channels * k * k)); conv bias 0;
- BatchNorm weight 1, bias 0, running mean 0, running variance 1, step counter 0; the weight
  is 0 for a block's last BN under `zero_init_last_bn` (Goyal et al. 2017, section 5.1);
- linear weight and bias: PyTorch's `nn.Linear` default, U(-1/sqrt(in_features),
  1/sqrt(in_features)).

Every path that makes initial weights reads `parameter_starts`: the numpy weights
(`weights.InitialWeights`), the in-memory torch module (`backends.torch_module.initialise`) and
the standalone source (`backends.torch_source` writes one statement per parameter from
`Start.torch_call`, since that file imports nothing of ours).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from resnext_compiler import ops
from resnext_compiler.ir import Graph, Param


@dataclass(frozen=True)
class Constant:
    """Every element `value`."""

    value: float

    def torch_call(self) -> tuple[str, tuple[float, ...]]:
        return "fill_", (self.value,)


@dataclass(frozen=True)
class Normal:
    """N(0, std^2)."""

    std: float

    def torch_call(self) -> tuple[str, tuple[float, ...]]:
        return "normal_", (0.0, self.std)


@dataclass(frozen=True)
class Uniform:
    """U(-bound, bound)."""

    bound: float

    def torch_call(self) -> tuple[str, tuple[float, ...]]:
        return "uniform_", (-self.bound, self.bound)


Start = Constant | Normal | Uniform


def kaiming_normal_std(fan_out: int) -> float:
    """He et al. 2015 with the ReLU gain sqrt(2), written as `torch.nn.init.kaiming_normal_`
    computes it (gain / sqrt(fan)), so both give the same float."""
    return math.sqrt(2.0) / math.sqrt(fan_out)


def start_of(op: ops.Op, suffix: str) -> Start:
    """How the tensor `suffix` (`weight`, `bias`, `running_var`, ...) of `op` starts."""
    if isinstance(op, ops.Conv):
        if suffix == "bias":
            return Constant(0.0)
        return Normal(kaiming_normal_std(op.out_channels * op.kernel_size**2))
    if isinstance(op, ops.BatchNorm):
        one = suffix == "running_var" or (suffix == "weight" and not op.zero_init)
        return Constant(1.0 if one else 0.0)
    if isinstance(op, ops.Linear):
        return Uniform(1.0 / math.sqrt(op.in_features))
    raise KeyError(f"no initialisation rule for {op.kind} tensor {suffix!r}")


def parameter_starts(graph: Graph, include_buffers: bool = True
                     ) -> Iterator[tuple[Param, Start]]:
    """Each of `graph`'s tensors, in `graph.params()` order, with how it starts."""
    ops_by_node = {node.name: node.op for node in graph.nodes}
    for param in graph.params(include_buffers):
        yield param, start_of(ops_by_node[param.node], param.name[len(param.node) + 1:])
