"""IR -> standalone PyTorch source (`resnext-compile SPEC --backend torch -o model.py`).

The file imports only torch, defines a class named after the spec and `build()`. Spec text
never reaches the code unescaped: identifiers are sanitised, free text is written only
as `ascii()` literals, and the template receives nothing but identifiers, numbers and such
literals.
"""

from __future__ import annotations

import re
from pathlib import Path

import jinja2

from resnext_compiler import __version__, ops
from resnext_compiler.artifacts import write_text_atomic
from resnext_compiler.backends.base import CompileOptions, SingleFileBackend
from resnext_compiler.blocks import block_type
from resnext_compiler.errors import UserError
from resnext_compiler.initialisation import parameter_starts
from resnext_compiler.input_contract import resolve_contract
from resnext_compiler.ir import INPUT, BlockRecord, Graph
from resnext_compiler.naming import class_name
from resnext_compiler.spec import Spec

_PATH_PART = re.compile(r"^[A-Za-z0-9_]+$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _module_expr(op: ops.Op) -> str | None:
    if isinstance(op, ops.Conv):
        extra = f", stride={op.stride}" if op.stride != 1 else ""
        extra += f", padding={op.padding}" if op.padding else ""
        extra += f", dilation={op.dilation}" if op.dilation != 1 else ""
        extra += f", groups={op.groups}" if op.groups != 1 else ""
        extra += f", bias={op.bias}"
        return f"nn.Conv2d({op.in_channels}, {op.out_channels}, {op.kernel_size}{extra})"
    if isinstance(op, ops.BatchNorm):
        default = (op.eps, op.momentum) == (1e-5, 0.1)
        extra = "" if default else f", eps={float(op.eps)!r}, momentum={float(op.momentum)!r}"
        return f"nn.BatchNorm2d({op.num_features}{extra})"
    if isinstance(op, ops.Linear):
        return f"nn.Linear({op.in_features}, {op.out_features}, bias={op.bias})"
    if isinstance(op, ops.Dropout):
        return f"nn.Dropout(p={float(op.p)!r})"
    return None


def _function_expr(op: ops.Op, args: list[str]) -> str:
    a = args[0]
    match op:
        case ops.ReLU():
            return f"F.relu({a})"
        case ops.Sigmoid():
            return f"torch.sigmoid({a})"
        case ops.MaxPool():
            return (
                f"F.max_pool2d({a}, kernel_size={op.kernel_size}, stride={op.stride}, "
                f"padding={op.padding})"
            )
        case ops.AvgPool():
            return (
                f"F.avg_pool2d({a}, {op.kernel_size}, {op.stride}, {op.padding}, "
                f"ceil_mode={op.ceil_mode}, count_include_pad={op.count_include_pad})"
            )
        case ops.GlobalAvgPool():
            return f"F.adaptive_avg_pool2d({a}, 1)"
        case ops.Flatten():
            return f"torch.flatten({a}, 1)"
        case ops.Add():
            return " + ".join(args)
        case ops.Mul():
            return f"{args[0]} * {args[1]}"
        case ops.Concat():
            return f"torch.cat([{', '.join(args)}], dim=1)"
        case ops.PathSoftmax():
            return f"{a}.unflatten(1, ({op.paths}, -1)).softmax(1).flatten(1, 2)"
        case ops.Slice():
            return f"{a}[:, {op.start}:{op.stop}]"
        case ops.PadChannels():
            return f"F.pad({a}, (0, 0, 0, 0, 0, {op.extra}))"
        case ops.Subsample():
            return f"{a}[:, :, ::{op.stride}, ::{op.stride}]"
    raise UserError(f"the torch source backend cannot emit op {op.kind!r}")


def _access(path: str) -> str:
    """`layer1.0.conv1` -> `self.layer1[0].conv1`."""
    out = "self"
    for part in path.split("."):
        if not _PATH_PART.match(part):
            raise UserError(f"node name {path!r} cannot become a Python attribute path")
        out += (
            f".{part}"
            if _IDENT.match(part)
            else f"[{int(part)}]"
            if part.isdigit()
            else f"[{part!r}]"
        )
    return out


def _init_lines(graph: Graph) -> list[str]:
    """`self.x = ...` lines building the module tree in node order."""
    tree: dict[str, object] = {}
    for node in graph.nodes:
        expr = _module_expr(node.op)
        if expr is None:
            continue
        *parents, leaf = node.name.split(".")
        level = tree
        for part in parents:
            level = level.setdefault(part, {})  # type: ignore[assignment]
        level[leaf] = expr

    def render(value: object, indent: int) -> list[str]:
        if isinstance(value, str):
            return [value]
        pad = "    " * (indent + 1)
        lines = ["Scope({"]
        for key, child in value.items():  # type: ignore[attr-defined]
            child_lines = render(child, indent + 1)
            lines.append(f"{pad}{key!r}: {child_lines[0]}")
            lines.extend(child_lines[1:])
            lines[-1] += ","
        lines.append("    " * indent + "})")
        return lines

    out = []
    for key, value in tree.items():
        rendered = render(value, 0)
        out.append(f"self.{key} = {rendered[0]}")
        out.extend(rendered[1:])
    return out


def _reset_lines(graph: Graph) -> list[str]:
    """One statement per parameter, written from the one rule (`initialisation`): the file
    imports nothing of ours, so it gets the rule's values, not a copy of its code. Buffers
    (running statistics, step counters) start at their constructors' values, which are the
    rule's."""
    lines = []
    for param, start in parameter_starts(graph, include_buffers=False):
        method, args = start.torch_call()
        suffix = param.name[len(param.node) + 1 :]
        values = ", ".join(repr(float(value)) for value in args)
        lines.append(f"{_access(param.node)}.{suffix}.{method}({values})")
    return lines


def _forward_lines(graph: Graph) -> list[str]:
    """Straight-line forward; variables are reused once their value is dead."""
    last_use: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for name in node.inputs:
            last_use[name] = i
    free: list[str] = []
    counter = iter(range(10**6))
    names = ["y", "z", "w", "v", "u"]
    var: dict[str, str] = {INPUT: "x"}
    lines: list[str] = []
    block = None
    for i, node in enumerate(graph.nodes):
        if node.block != block:
            block = node.block
            record = graph.block_record(block)
            lines.append(f"# {block}" if record is None else f"# {block}: {_block_summary(record)}")
        args = [var[name] for name in node.inputs]
        dead = [name for name in dict.fromkeys(node.inputs) if last_use.get(name) == i]
        for name in dead:
            free.append(var[name])
        if free:
            out = free.pop(0) if var[node.inputs[0]] not in free else var[node.inputs[0]]
            if out in free:
                free.remove(out)
        else:
            out = names.pop(0) if names else f"t{next(counter)}"
        var[node.name] = out
        if _module_expr(node.op) is not None:
            lines.append(f"{out} = {_access(node.name)}({args[0]})")
        else:
            lines.append(f"{out} = {_function_expr(node.op, args)}")
    lines.append(f"return {var[graph.output]}")
    return lines


def _block_summary(block: BlockRecord) -> str:
    """`bottleneck C=32 d=4 (form C), stride 2`: the block type's summary of the record."""
    form = f" (form {block.form})" if block_type(block.type).forms else ""
    return f"{block_type(block.type).summary(block)}{form}, stride {block.stride}"


def _chunks(text: str, size: int = 60) -> list[str]:
    pieces = [text[i : i + size] for i in range(0, len(text), size)] or [""]
    return [ascii(piece) for piece in pieces]


def render_source(graph: Graph, spec: Spec) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=False,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    from resnext_compiler.passes.complexity import analyse

    cost = analyse(graph)
    shape = graph.input_shape
    contract = resolve_contract(spec)
    return env.get_template("torch_module.py.j2").render(
        colour_literal=ascii(contract.colour),
        resize_literal=ascii(contract.resize),
        crop_fraction=repr(float(contract.crop_fraction)),
        mean_literal=ascii(tuple(float(v) for v in contract.mean)),
        std_literal=ascii(tuple(float(v) for v in contract.std)),
        scale_literal=ascii(contract.scale),
        class_names_literal=ascii(contract.labels),
        version=__version__,
        spec_name_literal=ascii(spec.name),
        spec_hash=spec.spec_hash(),
        spec_hash_literal=ascii(spec.spec_hash()),
        description_chunks=_chunks(spec.description),
        class_name=class_name(spec.name),
        input_shape=(shape.channels, shape.height, shape.width),
        input_text=f"{shape.channels}x{shape.height}x{shape.width}",
        num_classes=graph.output_shape.channels,
        params_text=f"{cost.params:,}",
        reset_lines=_reset_lines(graph),
        init_lines=_init_lines(graph),
        forward_lines=_forward_lines(graph),
    )


class TorchSourceBackend(SingleFileBackend):
    name = "torch"
    description = "standalone PyTorch source defining build() -> nn.Module"
    suffix = ".py"

    def emit(self, graph: Graph, spec: Spec, options: CompileOptions, output: Path) -> list[Path]:
        if options.weights is not None:
            raise UserError(
                "the torch backend writes source only; load weights into build() "
                "with model.load_state_dict(...)"
            )
        output = self.output_file(spec, output)
        return [write_text_atomic(output, render_source(graph, spec))]
