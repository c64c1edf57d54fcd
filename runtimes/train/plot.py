"""Training curves like Xie et al. 2017, Figure 5: top-1 error (%) against epochs, training
error dashed and validation error solid, one colour per run, labelled with the spec's name.
"""

from __future__ import annotations

import io
from pathlib import Path

from resnext_compiler.artifacts import write_bytes_atomic
from resnext_compiler.errors import UserError


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

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, rows) in enumerate(zip(run_labels(runs), curves, strict=True)):
        colour = colours[i % len(colours)]
        epochs = [row["epoch"] for row in rows]
        axes.plot(epochs, [row["train_top1_error"] for row in rows], "--", color=colour,
                  label=f"{label} (train)")
        axes.plot(epochs, [row["val_top1_error"] for row in rows], "-", color=colour,
                  label=f"{label} (val)")
    axes.set_xlabel("epochs")
    axes.set_ylabel("top-1 error (%)")
    axes.set_title(title or "training curves")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return write_bytes_atomic(output, buffer.getvalue())
