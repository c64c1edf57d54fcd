"""The DOT backend: a Graphviz picture of the IR.

By default each residual block is one box that states what the paper's tables state
(`layer2.0  bottleneck C=32 d=4 stride 2`: cardinality C and path width d, Xie et al. 2017,
Table 1), read from the graph's block records, grouped into one cluster per stage, so the
stages and the cardinality of every block are visible at a glance. `--expand` draws every IR
node (nested clusters per stage and block). If Graphviz's `dot` program is installed the
picture is also rendered to SVG and PNG.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from resnext_compiler import ops
from resnext_compiler.artifacts import write_bytes_atomic, write_text_atomic
from resnext_compiler.backends.base import CompileOptions, SingleFileBackend
from resnext_compiler.blocks import block_type
from resnext_compiler.errors import ResnextError, UserError
from resnext_compiler.ir import INPUT, BlockRecord, Graph, Node
from resnext_compiler.spec import Spec

OUTPUT = "logits"
RENDER_FORMATS = (".svg", ".png")
RENDER_TIMEOUT_S = 300
_COLOURS = {
    "conv": "#cfe2f3", "batchnorm": "#fff2cc", "relu": "#eeeeee", "sigmoid": "#eeeeee",
    "add": "#f4cccc", "mul": "#f4cccc", "concat": "#f4cccc", "linear": "#d9ead3",
}


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _group(node: Node) -> str:
    return node.block or node.stage or node.name


def _op_text(op: ops.Op) -> str:
    """A short description of one operator (`conv 3x3/2 g32 128->256`)."""
    if isinstance(op, ops.Conv):
        groups = f" g{op.groups}" if op.groups > 1 else ""
        stride = f"/{op.stride}" if op.stride > 1 else ""
        stride += f" dilation {op.dilation}" if op.dilation > 1 else ""
        return (f"conv {op.kernel_size}x{op.kernel_size}{stride}{groups} "
                f"{op.in_channels}->{op.out_channels}")
    if isinstance(op, (ops.MaxPool, ops.AvgPool)):
        return f"{op.kind} {op.kernel_size}x{op.kernel_size}/{op.stride}"
    if isinstance(op, ops.Linear):
        return f"fc {op.in_features}->{op.out_features}"
    if isinstance(op, ops.Slice):
        return f"slice [{op.start}:{op.stop}]"
    if isinstance(op, ops.Subsample):
        return f"subsample /{op.stride}"
    if isinstance(op, ops.PadChannels):
        return f"pad +{op.extra} channels"
    if isinstance(op, ops.Dropout):
        return f"dropout {op.p:g}"
    return op.kind


def describe_block(block: BlockRecord) -> str:
    """One line for a residual block, read from the graph's record of it."""
    form = "" if block.form == "C" else f" (form {block.form})"
    summary = block_type(block.type).summary(block)
    text = f"{block.prefix}  {summary} stride {block.stride}{form}"
    extras = []
    if block.preact:
        extras.append("pre-activation")
    if block.squeeze_excitation:
        extras.append("squeeze-excitation")
    if block.shortcut in ("projection", "avg-pool + projection", "zero-pad"):
        extras.append(f"{block.shortcut} shortcut")
    return text + ("\n" + ", ".join(extras) if extras else "")


def _summary(nodes: list[Node]) -> str:
    """Stem and head: the operators that shape the tensor (convs, pools, fc)."""
    shown = [n for n in nodes if isinstance(n.op, (ops.Conv, ops.MaxPool, ops.AvgPool,
                                                   ops.GlobalAvgPool, ops.Linear, ops.Dropout))]
    return ", ".join(_op_text(n.op) for n in shown)


def to_dot(graph: Graph, expand: bool = False) -> str:
    """Graphviz DOT text of `graph`: blocks collapsed, or every node with `expand`."""
    title = f"{graph.name}  (input {graph.input_shape})"
    input_label = f"input\n{graph.input_shape}"
    output_label = f"logits\n{graph.output_shape.channels} classes"
    lines = [
        f"digraph {_quote(graph.name)} {{",
        f"  label={_quote(title)}; labelloc=t; fontsize=20;",
        '  rankdir=TB; fontname="Helvetica";',
        '  node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
        f"  {_quote(INPUT)} [label={_quote(input_label)}, shape=oval];",
        f"  {_quote(OUTPUT)} [label={_quote(output_label)}, shape=oval];",
    ]
    body = _expanded(graph) if expand else _collapsed(graph)
    return "\n".join(lines + body + ["}"]) + "\n"


def _stages(graph: Graph) -> list[tuple[str, list[Node]]]:
    stages: dict[str, list[Node]] = {}
    for node in graph.nodes:
        stages.setdefault(node.stage or node.name, []).append(node)
    return list(stages.items())


def _collapsed(graph: Graph) -> list[str]:
    lines: list[str] = []
    members: dict[str, list[Node]] = {}
    for node in graph.nodes:
        members.setdefault(_group(node), []).append(node)
    for stage, nodes in _stages(graph):
        groups = list(dict.fromkeys(_group(n) for n in nodes))
        out = graph.shape_of(nodes[-1].name)
        residual = any(record.stage == stage for record in graph.block_records)
        if residual:
            lines.append(f"  subgraph {_quote('cluster_' + stage)} {{")
            title = f"{stage}: {len(groups)} blocks, output {out}"
            lines.append(f"    label={_quote(title)}; labeljust=l; style=\"rounded,filled\"; "
                         f"fillcolor=\"#f7f7f7\";")
        for group in groups:
            block_nodes = members[group]
            last = graph.shape_of(block_nodes[-1].name)
            record = graph.block_record(group)
            if residual and record is not None:
                label = f"{describe_block(record)}\n-> {last}"
                style = ", penwidth=2" if record.stride > 1 else ""
                lines.append(f'    {_quote(group)} [label={_quote(label)}, fillcolor="#cfe2f3"'
                             f"{style}];")
            else:
                label = f"{group}\n{_summary(block_nodes)}\n-> {last}"
                lines.append(f'  {_quote(group)} [label={_quote(label)}, fillcolor="#d9ead3"];')
        if residual:
            lines.append("  }")
    group_of = {n.name: _group(n) for n in graph.nodes}
    group_of[INPUT] = INPUT
    edges: dict[tuple[str, str], None] = {}
    for node in graph.nodes:
        for src in node.inputs:
            if group_of[src] != group_of[node.name]:
                edges[(group_of[src], group_of[node.name])] = None
    edges[(group_of[graph.output], OUTPUT)] = None
    lines += [f"  {_quote(a)} -> {_quote(b)};" for a, b in edges]
    return lines


def _expanded(graph: Graph) -> list[str]:
    lines: list[str] = []
    for stage, nodes in _stages(graph):
        lines.append(f"  subgraph {_quote('cluster_' + stage)} {{")
        lines.append(f'    label={_quote(stage)}; style="rounded"; color="#999999";')
        blocks: dict[str, list[Node]] = {}
        for node in nodes:
            blocks.setdefault(_group(node), []).append(node)
        for block, block_nodes in blocks.items():
            nested = block != stage and len(blocks) > 1
            if nested:
                lines.append(f"    subgraph {_quote('cluster_' + block)} {{")
                lines.append(f'      label={_quote(block)}; style="dashed";')
            for node in block_nodes:
                label = f"{node.name}\n{_op_text(node.op)}\n{graph.shape_of(node.name)}"
                colour = _COLOURS.get(node.op.kind, "#ffffff")
                lines.append(f'      {_quote(node.name)} [label={_quote(label)}, '
                             f'fillcolor="{colour}"];')
            if nested:
                lines.append("    }")
        lines.append("  }")
    for node in graph.nodes:
        lines += [f"  {_quote(src)} -> {_quote(node.name)};" for src in node.inputs]
    lines.append(f"  {_quote(graph.output)} -> {_quote(OUTPUT)};")
    return lines


def dot_program() -> str | None:
    return shutil.which("dot")


def render(dot_path: Path, fmt: str, program: str) -> Path:
    """Run Graphviz on `dot_path`; write `dot_path` with suffix `.fmt`, atomically."""
    target = dot_path.with_suffix(f".{fmt}")
    try:
        result = subprocess.run([program, f"-T{fmt}", str(dot_path)], capture_output=True,
                                timeout=RENDER_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ResnextError(f"dot took over {RENDER_TIMEOUT_S} s to render {target.name}; "
                           f"{dot_path} is written") from None
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip()
        raise ResnextError(f"dot failed to render {target.name}: {message}")
    return write_bytes_atomic(target, result.stdout)


class DotBackend(SingleFileBackend):
    """`--backend dot -o NAME.dot` (or NAME.svg / NAME.png, which need Graphviz)."""

    name = "dot"
    description = "Graphviz picture of the graph (blocks collapsed; --expand for every node)"
    suffix = ".dot"

    def emit(self, graph: Graph, spec: Spec, options: CompileOptions, output: Path) -> list[Path]:
        output = self.output_file(spec, output)
        program = dot_program()
        wanted = [output.suffix] if output.suffix in RENDER_FORMATS else list(RENDER_FORMATS)
        if output.suffix in RENDER_FORMATS and program is None:
            raise UserError(f"rendering {output.name} needs Graphviz's `dot` program, which is "
                            f"not installed; install graphviz or write {output.stem}.dot")
        dot_path = output.with_suffix(".dot")
        written = [write_text_atomic(dot_path, to_dot(graph, options.expand))]
        if program is not None:
            written += [render(dot_path, fmt.lstrip("."), program) for fmt in wanted]
        return written
