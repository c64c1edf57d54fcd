"""IR -> in-memory `torch.nn.Module` (a `torch.fx.GraphModule`), built by walking the graph.

Submodules sit at the IR node names (`layer1.0.conv2`), so `state_dict()` keys are
torchvision's. Initialisation is the one rule of `resnext_compiler.initialisation`
(torchvision's ResNet: Kaiming normal fan_out convs, BN 1 and 0, PyTorch's default classifier).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from resnext_compiler import ops
from resnext_compiler.initialisation import parameter_starts
from resnext_compiler.ir import INPUT, Graph, Node
from resnext_compiler.naming import class_name
from resnext_compiler.weights import compare_weights


def make_module(op: ops.Op) -> nn.Module | None:
    """The PyTorch module holding an operator's parameters, or None for stateless ops."""
    if isinstance(op, ops.Conv):
        return nn.Conv2d(
            op.in_channels,
            op.out_channels,
            op.kernel_size,
            op.stride,
            op.padding,
            dilation=op.dilation,
            groups=op.groups,
            bias=op.bias,
        )
    if isinstance(op, ops.BatchNorm):
        return nn.BatchNorm2d(op.num_features, eps=op.eps, momentum=op.momentum)
    if isinstance(op, ops.Linear):
        return nn.Linear(op.in_features, op.out_features, bias=op.bias)
    if isinstance(op, ops.Dropout):
        return nn.Dropout(op.p)
    return None


def _pad_channels(x: torch.Tensor, extra: int) -> torch.Tensor:
    return F.pad(x, (0, 0, 0, 0, 0, extra))


def _subsample(x: torch.Tensor, stride: int) -> torch.Tensor:
    return x[:, :, ::stride, ::stride]


def _channel_slice(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    return x[:, start:stop]


def _path_softmax(x: torch.Tensor, paths: int) -> torch.Tensor:
    """Softmax across `paths` blocks of channels (ops.PathSoftmax)."""
    return x.unflatten(1, (paths, -1)).softmax(1).flatten(1, 2)


fx.wrap("_path_softmax")
fx.wrap("_pad_channels")
fx.wrap("_subsample")
fx.wrap("_channel_slice")


def _emit_function(g: fx.Graph, node: Node, args: list[fx.Node]) -> fx.Node:
    op = node.op
    kind = op.kind
    if kind == "relu":
        return g.call_function(F.relu, (args[0],))
    if kind == "sigmoid":
        return g.call_function(torch.sigmoid, (args[0],))
    if kind == "maxpool":
        return g.call_function(F.max_pool2d, (args[0], op.kernel_size, op.stride, op.padding))
    if kind == "avgpool":
        return g.call_function(
            F.avg_pool2d,
            (args[0], op.kernel_size, op.stride, op.padding, op.ceil_mode, op.count_include_pad),
        )
    if kind == "global_avgpool":
        return g.call_function(F.adaptive_avg_pool2d, (args[0], 1))
    if kind == "flatten":
        return g.call_function(torch.flatten, (args[0], 1))
    if kind == "add":
        out = args[0]
        for other in args[1:]:
            out = g.call_function(operator.add, (out, other))
        return out
    if kind == "mul":
        return g.call_function(operator.mul, (args[0], args[1]))
    if kind == "concat":
        return g.call_function(torch.cat, (list(args), 1))
    if kind == "path_softmax":
        return g.call_function(_path_softmax, (args[0], op.paths))
    if kind == "slice":
        return g.call_function(_channel_slice, (args[0], op.start, op.stop))
    if kind == "pad_channels":
        return g.call_function(_pad_channels, (args[0], op.extra))
    if kind == "subsample":
        return g.call_function(_subsample, (args[0], op.stride))
    raise NotImplementedError(f"the torch backend has no lowering for op {kind!r}")


def _attach(root: nn.Module, path: str, module: nn.Module) -> None:
    *parents, leaf = path.split(".")
    current = root
    for part in parents:
        child = current._modules.get(part)
        if child is None:
            child = nn.Module()
            current.add_module(part, child)
        current = child
    current.add_module(leaf, module)


def initialise(model: nn.Module, graph: Graph) -> None:
    """Every tensor of `model` as the one rule says (`initialisation.parameter_starts`), drawn
    from torch's generator in `graph.params()` order."""
    tensors = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for param, start in parameter_starts(graph):
            method, args = start.torch_call()
            getattr(tensors[param.name], method)(*args)


def build_module(graph: Graph, seed: int | None = 0) -> fx.GraphModule:
    """An `nn.Module` computing `graph`; `seed` makes the initial weights reproducible."""
    if not graph.shapes:
        raise ValueError("build_module needs a shaped graph (run compile_spec / infer_shapes)")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        root = nn.Module()
        g = fx.Graph()
        env: dict[str, fx.Node] = {INPUT: g.placeholder("x")}
        for node in graph.nodes:
            args = [env[name] for name in node.inputs]
            module = make_module(node.op)
            if module is not None:
                _attach(root, node.name, module)
                env[node.name] = g.call_module(node.name, tuple(args))
            else:
                env[node.name] = _emit_function(g, node, args)
        g.output(env[graph.output])
        model = fx.GraphModule(root, g, class_name=class_name(graph.name))
        initialise(model, graph)
    model.ir_name = graph.name  # type: ignore[assignment]
    return model


def load_weights(
    model: nn.Module, tensors: Mapping[str, torch.Tensor | np.ndarray], strict: bool = True
) -> None:
    """Copy tensors (torch or numpy) into `model`, checking names and shapes; list mismatches.

    Absent BatchNorm step counters keep the model's own (inference never reads them).
    """
    own = model.state_dict()
    report = compare_weights({k: tuple(v.shape) for k, v in own.items()},
                             {k: tuple(v.shape) for k, v in tensors.items()},
                             getattr(model, "ir_name", "the model"))
    if report.wrong_shapes or (strict and (report.missing or report.unexpected)):
        raise report.error("the weights")
    with torch.no_grad():
        for key, value in tensors.items():
            if key in own:
                own[key].copy_(torch.as_tensor(value).to(own[key].dtype))
