"""The answer of a sweep, rebuilt from its folder alone (`plan.json` and the run directories):
a results table (CSV and Markdown), top-1 error against cardinality at fixed complexity with
the spread over seeds (Xie et al. 2017, Table 3's comparison), training curves (Figure 5's
style, `runtimes/train/plot.py`) and, for sampled design spaces, error distribution functions
(EDFs, Radosavovic et al. 2019: the fraction of models below each error).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnext_compiler.artifacts import write_text_atomic
from resnext_compiler.errors import UserError
from resnext_compiler.named_files import RUN_SETTINGS, read_named_text
from resnext_compiler.runtimes.sweep.launch import PLAN_FILE, POINTS
from resnext_compiler.runtimes.sweep.point import FAILED, FINISHED, point_state, read_status

RESULTS_CSV, RESULTS_MD = "results.csv", "results.md"
ERROR_FIGURE, CURVES_FIGURE, EDF_FIGURE = "error_vs_cardinality.png", "curves.png", "edf.png"
COLUMNS = ("point", "seed", "status", "C", "d", "params", "MACs", "epochs", "top1_error", "time_s")
# what the cardinality axis records besides C and d (not a separate axis in the table)
_DESIGN_KEYS = ("cardinality", "base_width", "template_params", "template_macs")


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    seed: int
    status: str  # finished | interrupted | failed | not run
    cardinality: int
    base_width: int
    params: int
    macs: int
    epochs: int  # epochs trained so far
    top1_error: float | None  # final validation top-1 error (%), finished runs only
    time_s: float | None
    axes: dict[str, Any]
    error: str = ""

    def other_axes(self) -> dict[str, Any]:
        return {k: v for k, v in self.axes.items() if k not in _DESIGN_KEYS}


@dataclass(frozen=True)
class Report:
    rows: list[Row]
    files: list[Path]

    @property
    def failed(self) -> list[Row]:
        return [row for row in self.rows if row.status == FAILED]


def read_plan(out: Path) -> dict[str, Any]:
    path = out / PLAN_FILE
    if not path.is_file():
        raise UserError(
            f"{out} is not a sweep folder (no {PLAN_FILE}; `resnext-compile sweep "
            "SWEEP.yaml` makes one)"
        )
    try:
        plan = json.loads(read_named_text(path, RUN_SETTINGS, out))
        points = plan["points"]
        if not isinstance(points, list):
            raise TypeError("points is not a list")
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise UserError(
            f"{path}: corrupt sweep plan ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    return plan


def collect_rows(out: Path, plan: dict[str, Any]) -> list[Row]:
    from resnext_compiler.runtimes.train.metrics import read_metrics

    rows = []
    for point in plan["points"]:
        run = out / POINTS / str(point["key"])
        history = read_metrics(run) if run.is_dir() else []
        record = read_status(run)
        state = point_state(run)
        if state == FINISHED:
            status = FINISHED
        elif record.get("status") == FAILED:
            status = FAILED
        else:
            status = state if state != "new" else "not run"
        rows.append(
            Row(
                key=str(point["key"]),
                label=str(point["label"]),
                seed=int(point["seed"]),
                status=status,
                cardinality=int(point["cardinality"]),
                base_width=int(point["base_width"]),
                params=int(point["params"]),
                macs=int(point["macs"]),
                epochs=len(history),
                top1_error=float(history[-1]["val_top1_error"]) if state == FINISHED else None,
                time_s=float(record["wall_s"]) if record.get("wall_s") else None,
                axes=dict(point.get("axes") or {}),
                error=str(record.get("error") or ""),
            )
        )
    return rows


def build_report(out: Path) -> Report:
    """Write the table and figures into the sweep folder `out` from what is on disk."""
    plan = read_plan(out)
    rows = collect_rows(out, plan)
    files = [
        write_text_atomic(out / RESULTS_CSV, results_csv(rows)),
        write_text_atomic(out / RESULTS_MD, results_markdown(rows)),
    ]
    finished = [row for row in rows if row.status == FINISHED]
    if finished and plan.get("match"):
        files.append(plot_error_vs_cardinality(finished, out / ERROR_FIGURE, plan["match"]))
    if finished:
        from resnext_compiler.runtimes.train.plot import plot_runs

        first_seed = min(row.seed for row in finished)
        runs = [out / POINTS / row.key for row in finished if row.seed == first_seed]
        files.append(plot_runs(runs, out / CURVES_FIGURE, f"training curves (seed {first_seed})"))
    if finished and plan.get("sampled"):
        files.append(plot_edf(finished, out / EDF_FIGURE))
    return Report(rows, files)


def _axis_columns(rows: list[Row]) -> list[str]:
    return list(dict.fromkeys(name for row in rows for name in row.other_axes()))


def results_csv(rows: list[Row]) -> str:
    extra = _axis_columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*COLUMNS, *extra, "error"])
    for row in rows:
        writer.writerow(
            [
                row.label,
                row.seed,
                row.status,
                row.cardinality,
                row.base_width,
                row.params,
                row.macs,
                row.epochs,
                "" if row.top1_error is None else f"{row.top1_error:.4f}",
                "" if row.time_s is None else f"{row.time_s:.1f}",
                *(json.dumps(row.axes.get(name)) if name in row.axes else "" for name in extra),
                row.error,
            ]
        )
    return buffer.getvalue()


def results_markdown(rows: list[Row]) -> str:
    """One line per run, then one per point with the spread over seeds."""
    extra = _axis_columns(rows)
    head = [
        "point",
        "seed",
        "C",
        "d",
        "params",
        "MMACs",
        "epochs",
        "top-1 error (%)",
        "time (s)",
        *extra,
        "status",
    ]
    lines = [_md_row(head), _md_row(["---"] * len(head))]
    for row in rows:
        lines.append(
            _md_row(
                [
                    row.label,
                    row.seed,
                    row.cardinality,
                    row.base_width,
                    f"{row.params:,}",
                    f"{row.macs / 1e6:.2f}",
                    row.epochs,
                    _number(row.top1_error),
                    _number(row.time_s, 0),
                    *(_cell(row.axes.get(name)) for name in extra),
                    row.status if not row.error else f"{row.status}: {row.error}",
                ]
            )
        )
    by_point: dict[str, list[Row]] = {}
    for row in rows:
        by_point.setdefault(row.label, []).append(row)
    lines += [
        "",
        _md_row(
            [
                "point",
                "C",
                "d",
                "params",
                "finished seeds",
                "top-1 error (%) mean ± sd",
                "min",
                "max",
            ]
        ),
        _md_row(["---"] * 8),
    ]
    for label, group in by_point.items():
        errors = [row.top1_error for row in group if row.top1_error is not None]
        spread = (
            f"{statistics.mean(errors):.2f} ± "
            f"{statistics.stdev(errors) if len(errors) > 1 else 0:.2f}"
            if errors
            else "-"
        )
        first = group[0]
        lines.append(
            _md_row(
                [
                    label,
                    first.cardinality,
                    first.base_width,
                    f"{first.params:,}",
                    f"{len(errors)} of {len(group)}",
                    spread,
                    _number(min(errors, default=None)),
                    _number(max(errors, default=None)),
                ]
            )
        )
    return "\n".join(lines) + "\n"


def _md_row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cell(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def plot_error_vs_cardinality(rows: list[Row], output: Path, match: str) -> Path:
    """Top-1 error against C at fixed complexity: every seed as a dot, the mean as a line,
    the min-max band shaded; one line per setting of the other axes."""
    from resnext_compiler.runtimes.train.plot import colour_cycle, new_figure, save_figure

    figure, axes = new_figure()
    groups: dict[str, list[Row]] = {}
    for row in rows:
        name = ", ".join(f"{k}={_cell(v)}" for k, v in row.other_axes().items())
        groups.setdefault(name, []).append(row)
    ticks: dict[int, str] = {}
    for index, (name, group) in enumerate(groups.items()):
        colour = colour_cycle(index)
        by_c: dict[int, list[float]] = {}
        for row in group:
            by_c.setdefault(row.cardinality, []).append(row.top1_error)  # type: ignore[arg-type]
            ticks[row.cardinality] = f"{row.cardinality}x{row.base_width}d"
        cs = sorted(by_c)
        axes.scatter(
            [c for c in cs for _ in by_c[c]],
            [e for c in cs for e in by_c[c]],
            color=colour,
            alpha=0.5,
            s=16,
        )
        seeds = max(len(v) for v in by_c.values())
        axes.plot(
            cs,
            [statistics.mean(by_c[c]) for c in cs],
            "-o",
            color=colour,
            label=f"{name + ': ' if name else ''}mean of {seeds} seed(s), band min-max",
        )
        axes.fill_between(
            cs, [min(by_c[c]) for c in cs], [max(by_c[c]) for c in cs], color=colour, alpha=0.15
        )
    axes.set_xscale("log", base=2)
    axes.set_xticks(sorted(ticks), [ticks[c] for c in sorted(ticks)])
    axes.minorticks_off()
    what = "parameters" if match == "params" else "multiply-accumulates"
    targets = {row.axes.get(f"template_{match}") for row in rows} - {None}
    if len(targets) == 1:
        what = f"{what} ({targets.pop():,})"
    return save_figure(
        figure,
        axes,
        output,
        f"top-1 error vs cardinality at fixed {what}",
        "cardinality C x bottleneck width d",
    )


def plot_edf(rows: list[Row], output: Path) -> Path:
    """Error distribution function: the fraction of finished runs with error below e (one
    curve per cardinality when the sweep also varies it)."""
    from resnext_compiler.runtimes.train.plot import colour_cycle, new_figure, save_figure

    figure, axes = new_figure()
    groups: dict[str, list[float]] = {}
    several = len({row.cardinality for row in rows}) > 1
    for row in rows:
        name = f"C = {row.cardinality}" if several else "all runs"
        groups.setdefault(name, []).append(row.top1_error)  # type: ignore[arg-type]
    for index, (name, errors) in enumerate(groups.items()):
        errors = sorted(errors)
        fractions = [(i + 1) / len(errors) for i in range(len(errors))]
        axes.step(
            errors,
            fractions,
            where="post",
            color=colour_cycle(index),
            label=f"{name} (n={len(errors)})",
        )
    axes.set_ylim(0, 1.02)
    return save_figure(
        figure,
        axes,
        output,
        "error distribution function",
        "top-1 error (%)",
        "fraction of runs with lower error",
    )
