"""Human and JSON reports of a compiled network (`resnext-compile inspect`)."""

from __future__ import annotations

from typing import Any

from resnext_compiler.blocks import block_type
from resnext_compiler.ir import Graph
from resnext_compiler.ops import TensorShape
from resnext_compiler.passes.complexity import Complexity
from resnext_compiler.spec import Spec


def _shape(shape: TensorShape, flat: bool = False) -> list[int]:
    """Batch-1 shape as PyTorch reports it: [1, C, H, W], or [1, C] for the logits."""
    return [1, shape.channels] if flat else [1, *shape.as_list()]


def report_dict(spec: Spec, graph: Graph, cost: Complexity) -> dict[str, Any]:
    widths = {s.name: (s.width, s.base_width) for s in spec.resolved_stages()}
    first_block = {}
    for record in graph.block_records:
        first_block.setdefault(record.stage, record)
    stages = []
    for stage in cost.stages:
        entry: dict[str, Any] = {
            "name": stage.name,
            "blocks": stage.blocks,
            "output_shape": _shape(stage.output_shape, flat=stage.name == "head"),
            "params": stage.params,
            "macs": stage.macs,
            "activation_bytes": stage.activation_bytes,
        }
        block = first_block.get(stage.name)
        if block is not None:
            grouped = block_type(block.type).grouped
            width, base_width = widths[stage.name]
            entry.update(
                block=block.type,
                cardinality=block.cardinality,
                base_width=base_width,
                group_width=block.group_width if grouped else None,
                path_width=block.path_width if grouped else None,
                width=width,
                stride=block.stride,
                form=block.form,
            )
        stages.append(entry)
    return {
        "name": spec.name,
        "spec": spec.path,
        "spec_hash": spec.spec_hash(),
        "input_shape": _shape(graph.input_shape),
        "output_shape": _shape(graph.output_shape, flat=True),
        "params": cost.params,
        "buffers": cost.buffers,
        "macs": cost.macs,
        "gmacs": round(cost.macs / 1e9, 4),
        "param_bytes": cost.param_bytes,
        "activation_bytes": cost.activation_bytes,
        "nodes": len(graph.nodes),
        "stages": stages,
    }


def report_table(spec: Spec, graph: Graph, cost: Complexity) -> str:
    data = report_dict(spec, graph, cost)
    header = ["stage", "blocks", "C x d", "output", "params", "GMACs", "act. MiB"]
    rows = []
    for st in data["stages"]:
        cxd = st.get("block", "")
        if st.get("path_width") is not None:  # a grouped block: the paper's C x d
            cxd = f"{st['cardinality']} x {st['path_width']}d"
        rows.append(
            [
                st["name"],
                str(st["blocks"] or ""),
                cxd,
                "x".join(str(d) for d in st["output_shape"][1:]),
                f"{st['params']:,}",
                f"{st['macs'] / 1e9:.3f}",
                f"{st['activation_bytes'] / 2**20:.1f}",
            ]
        )
    rows.append(
        [
            "total",
            str(sum(s["blocks"] for s in data["stages"])),
            "",
            "x".join(str(d) for d in data["output_shape"][1:]),
            f"{data['params']:,}",
            f"{data['macs'] / 1e9:.3f}",
            f"{data['activation_bytes'] / 2**20:.1f}",
        ]
    )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 4 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [
        f"{spec.name}: {data['params']:,} parameters, {data['macs'] / 1e9:.2f} GMACs "
        f"(batch 1, input {'x'.join(str(d) for d in data['input_shape'][1:])})",
        f"parameters {data['param_bytes'] / 2**20:.1f} MiB fp32, activations "
        f"{data['activation_bytes'] / 2**20:.1f} MiB per image (all node outputs)",
        "",
        line(header),
        line(["-" * w for w in widths]),
        *[line(r) for r in rows[:-1]],
        line(["-" * w for w in widths]),
        line(rows[-1]),
    ]
    return "\n".join(out)
