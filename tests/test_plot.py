"""`resnext-compile plot RUN...`: the paper's Figure 5 style, train dashed and val solid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def fake_run(root: Path, name: str, spec_name: str, epochs: int = 4) -> Path:
    run = root / name
    run.mkdir()
    (run / "spec.yaml").write_text(f"spec_version: 1\nname: {spec_name}\nstages: [1]\n")
    rows = [{"epoch": e, "train_top1_error": 60.0 / e, "val_top1_error": 70.0 / e}
            for e in range(1, epochs + 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_plot_overlays_runs_with_their_spec_names(tmp_path, monkeypatch, run_cli):
    import matplotlib.axes

    a = fake_run(tmp_path, "a", "resnet50")
    b = fake_run(tmp_path, "b", "resnext50_32x4d", epochs=3)
    drawn = []
    original = matplotlib.axes.Axes.plot

    def spy(self, *args, **kwargs):
        drawn.append((kwargs["label"], args[2], list(args[0]), list(args[1])))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    out = tmp_path / "curves.png"
    result = run_cli("plot", a, b, "-o", out)
    assert result.code == 0, result.err
    assert result.out == f"wrote {out}\n"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [(label, style) for label, style, _, _ in drawn] == [
        ("resnet50 (train)", "--"), ("resnet50 (val)", "-"),
        ("resnext50_32x4d (train)", "--"), ("resnext50_32x4d (val)", "-")]
    assert drawn[3][2] == [1, 2, 3]
    assert drawn[3][3] == pytest.approx([70.0, 35.0, 70.0 / 3])


def test_plot_of_one_run_defaults_to_its_directory(tmp_path, run_cli):
    run = fake_run(tmp_path, "only", "resnet18")
    result = run_cli("plot", run)
    assert result.code == 0, result.err
    assert (run / "curves.png").stat().st_size > 1000


def test_plot_tells_apart_two_runs_of_the_same_spec(tmp_path):
    from resnext_compiler.runtimes.train import plot

    a, b = fake_run(tmp_path, "seed0", "resnet18"), fake_run(tmp_path, "seed1", "resnet18")
    c = fake_run(tmp_path, "other", "resnet34")
    assert plot.run_labels([a, b, c]) == ["resnet18 (seed0)", "resnet18 (seed1)", "resnet34"]
    import matplotlib.pyplot as plt

    plot.plot_runs([a, b], tmp_path / "c.png")
    assert not plt.get_fignums()  # the figure was closed
    assert (tmp_path / "c.png").is_file()


def test_plot_of_a_run_without_metrics_is_a_user_error(tmp_path, run_cli):
    (tmp_path / "empty").mkdir()
    result = run_cli("plot", tmp_path / "empty")
    assert result.code == 2
    assert result.err == (f"error: {tmp_path / 'empty'}: no finished epochs to plot (expected "
                          f"{tmp_path / 'empty' / 'metrics.jsonl'} written by `resnext-compile "
                          "train`)\n")


def test_a_one_epoch_run_is_drawn_with_markers_and_the_legend_sits_beside_the_axes(
        tmp_path, monkeypatch):
    """Issue 22, item 7: one point per curve is visible (a marker), and long run names in the
    legend do not cover the curves."""
    import matplotlib.pyplot as plt

    from resnext_compiler.runtimes.train import plot

    run = fake_run(tmp_path, "one", "a_rather_long_spec_name_resnext29_16x64d_variant", epochs=1)
    closed = []
    original = plt.close
    monkeypatch.setattr(plt, "close", lambda figure: (closed.append(figure),
                                                      original(figure)))
    plot.plot_runs([run], tmp_path / "one.png")
    (figure,) = closed
    axes = figure.axes[0]
    assert [line.get_marker() for line in axes.get_lines()] == ["o", "o"]
    assert [len(line.get_xdata()) for line in axes.get_lines()] == [1, 1]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()
    legend = axes.get_legend().get_window_extent(renderer)
    assert legend.x0 >= axes.get_window_extent(renderer).x1
