"""Training curves like Xie et al. 2017, Figure 5: top-1 error (%) against epochs, training
error dashed and validation error solid, one colour per run, labelled with the spec's name.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from resnext_compiler.artifacts import write_bytes_atomic
from resnext_compiler.errors import UserError

MARKED_EPOCHS = 20  # runs this short or shorter get a marker on every epoch


def _run_label(run_dir: Path) -> str:
    spec_file = run_dir / "spec.yaml"
    if spec_file.is_file():
        from resnext_compiler.yaml_source import read_yaml_file

        # the bounded spec reader (size, nesting, aliases; under the run folder): a run
        # folder is an input too, and a hostile spec.yaml is a located error
        data, _ = read_yaml_file(spec_file, root=run_dir)
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            return data["name"]
    return run_dir.name


def run_labels(runs: list[Path]) -> list[str]:
    """Spec names; runs of the same spec are told apart by their directory names."""
    names = [_run_label(run) for run in runs]
    return [f"{name} ({run.name})" if names.count(name) > 1 else name
            for name, run in zip(names, runs, strict=True)]


def plot_runs(runs: list[Path], output: Path, title: str | None = None) -> Path:
    """Write a PNG of every run's curves to `output`; returns the path written."""
    from resnext_compiler.runtimes.train.metrics import read_metrics

    curves = []
    for run in runs:
        if not run.is_dir():
            raise UserError(f"{run}: no such run directory")
        rows = read_metrics(run)
        if not rows:
            raise UserError(f"{run}: no finished epochs to plot (expected {run / 'metrics.jsonl'}"
                            " written by `resnext-compile train`)")
        curves.append(rows)

    labels = run_labels(runs)  # reads each run's spec: a bad one is refused before drawing
    figure, axes = new_figure()
    for i, (label, rows) in enumerate(zip(labels, curves, strict=True)):
        colour = colour_cycle(i)
        epochs = [row["epoch"] for row in rows]
        # a line needs two points: short runs (one epoch above all) get a marker per epoch
        marker = {"marker": "o", "markersize": 4} if len(epochs) <= MARKED_EPOCHS else {}
        axes.plot(epochs, [row["train_top1_error"] for row in rows], "--", color=colour,
                  label=f"{label} (train)", **marker)
        axes.plot(epochs, [row["val_top1_error"] for row in rows], "-", color=colour,
                  label=f"{label} (val)", **marker)
    return save_figure(figure, axes, output, title or "training curves", "epochs")


def new_figure() -> tuple[Any, Any]:
    """A figure and axes in the project's style (also used by sweep reports)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6.4, 4.8), dpi=120)


def colour_cycle(index: int) -> str:
    import matplotlib.pyplot as plt

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return colours[index % len(colours)]


def save_figure(figure: Any, axes: Any, output: Path, title: str, xlabel: str,
                ylabel: str = "top-1 error (%)") -> Path:
    """Label, grid and legend the axes, then write the PNG atomically; returns its path."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.grid(True, alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            # beside the axes, never over the curves, however long the run names are
            axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0),
                        borderaxespad=0.0)
        figure.savefig(buffer, format="png", bbox_inches="tight")
    finally:
        plt.close(figure)  # a failed drawing leaves no figure behind
    return write_bytes_atomic(output, buffer.getvalue())
