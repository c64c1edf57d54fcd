"""Sweep files: axes, seeds and budgets planned without training; located errors; the report
rebuilt from run directories; the Slurm path through submitit's own test doubles."""

from __future__ import annotations

import json
import re
import time
import tracemalloc
from pathlib import Path

import pytest
from conftest import REPO

SWEEP_HEAD = """\
sweep_version: 1
name: tiny
spec:
  name: tiny_digits
  input: {channels: 1, height: 8, width: 8}
  stem: cifar
  block: {type: bottleneck, cardinality: 1, base_width: 64}
  stages: [{depth: 1, width: 8}, {depth: 1, width: 16, stride: 2}]
  head: {num_classes: 10}
  train: {dataset: digits, epochs: 1, batch_size: 64, lr: 0.1}
"""


def write_sweep(folder: Path, tail: str, head: str = SWEEP_HEAD) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(head + tail)
    return path


def test_cardinality_axis_solves_the_width_at_the_templates_complexity():
    from resnext_compiler.sweep import plan_sweep

    plan = plan_sweep(REPO / "specs/sweeps/digits_cardinality.yaml")
    first_seed = [p for p in plan.points if p.seed == 0]
    # the digits ResNeXt-11 family, as `resnext-compile design --table` solves it
    assert [(p.axes["cardinality"], p.axes["base_width"]) for p in first_seed] == [
        (1, 64),
        (2, 41),
        (4, 25),
        (8, 15),
    ]
    assert [p.params for p in first_seed] == [127_498, 127_452, 126_254, 126_978]
    assert {p.axes["template_params"] for p in first_seed} == {127_498}
    assert [p.spec.resolved_stages()[1].group_width for p in first_seed] == [32, 40, 48, 56]
    assert sorted({p.seed for p in plan.points}) == [0, 1, 2]
    assert len({p.key for p in plan.points}) == 12


def test_values_axis_sets_any_spec_field_and_keys_are_stable(tmp_path):
    from resnext_compiler.sweep import plan_sweep

    path = write_sweep(
        tmp_path,
        "axes:\n  values:\n    train.lr: [0.05, 0.2]\n    stages[1].depth: [1, 2]\nseeds: [3, 7]\n",
    )
    plan = plan_sweep(path)
    assert len(plan.points) == 8
    chosen = {(p.spec.train.lr, p.spec.stages[1].depth, p.seed) for p in plan.points}
    assert chosen == {
        (lr, depth, seed) for lr in (0.05, 0.2) for depth in (1, 2) for seed in (3, 7)
    }
    assert plan.points[0].label == "lr0.05-depth1"
    assert [p.key for p in plan_sweep(path).points] == [p.key for p in plan.points]
    path.write_text(path.read_text().replace("epochs: 1", "epochs: 2"))
    assert not {p.key for p in plan_sweep(path).points} & {p.key for p in plan.points}


def test_sample_axis_draws_log_uniform_and_integer_values_from_its_seed(tmp_path):
    from resnext_compiler.sweep import plan_sweep

    path = write_sweep(
        tmp_path,
        "axes:\n  sample:\n    count: 6\n    seed: 1\n    ranges:\n"
        "      train.lr: {low: 0.01, high: 1.0, log: true}\n"
        "      stages[0].width: {low: 8, high: 32, quantum: 8}\n",
    )
    plan = plan_sweep(path)
    rates = [p.spec.train.lr for p in plan.points]
    widths = [p.spec.stages[0].width for p in plan.points]
    assert all(0.01 <= r <= 1.0 for r in rates) and len(set(rates)) == 6
    assert set(widths) <= {8, 16, 24, 32} and all(isinstance(w, int) for w in widths)
    assert plan.sampled and plan.points[5].label == "sample005"
    assert [p.spec.train.lr for p in plan_sweep(path).points] == rates


BAD = [
    (
        "unknown field",
        "axis:\n  cardinality: [1]\n",
        "unknown field 'axis'; did you mean 'axes'?",
        "sweep.yaml:11:1",
    ),
    ("unknown spec field in the template", "", "unknown field 'cardinalty'", "sweep.yaml:7:"),
    (
        "not a field path",
        "axes:\n  values:\n    'train lr': [1]\n",
        "not a spec field path",
        "sweep.yaml:13:5",
    ),
    (
        "unknown field set by an axis",
        "axes:\n  values:\n    block.widht: [1, 2]\n",
        "unknown field 'widht'",
        "sweep.yaml:13:19",
    ),
    (
        "a value the spec refuses",
        "axes:\n  values:\n    train.lr: [0.1, -1.0]\n",
        "greater than 0",
        "sweep.yaml:13:",
    ),
    (
        "a stage the template lacks",
        "axes:\n  values:\n    stages[4].depth: [2]\n",
        "the template has 2 item(s) there",
        "sweep.yaml:13:23",
    ),
    (
        "repeated cardinality",
        "axes:\n  cardinality: [2, 2]\n",
        "cardinality lists a value twice",
        "sweep.yaml:12:3",
    ),
    (
        "a range upside down",
        "axes:\n  sample:\n    count: 2\n    ranges:\n      train.lr: {low: 1.0, high: 0.1}\n",
        "must be below high",
        "sweep.yaml:15:7",
    ),
    ("missing data folder", "data: nowhere\n", "data folder not found", "sweep.yaml:11:1"),
    ("missing template", "", "base spec not found", "sweep.yaml:4:"),
]


@pytest.mark.parametrize("case,tail,message,where", BAD, ids=[b[0] for b in BAD])
def test_bad_sweep_file_is_refused_located(case, tail, message, where, tmp_path, run_cli):
    head = SWEEP_HEAD
    if case == "unknown spec field in the template":
        head = head.replace("cardinality: 1", "cardinalty: 1")
    if case == "missing template":
        head = head.replace("  name: tiny_digits\n", "  extends: nowhere.yaml\n")
    path = write_sweep(tmp_path, tail, head)
    result = run_cli("sweep", path, "--dry-run")
    assert result.code == 2, result
    assert message in result.err, result
    assert re.search(rf"(^|/){re.escape(where)}", result.err, re.M), result
    assert "Traceback" not in result.err and "internal error" not in result.err


def test_cardinality_axis_needs_a_bottleneck_template(tmp_path, run_cli):
    head = SWEEP_HEAD.replace("type: bottleneck", "type: basic")
    path = write_sweep(tmp_path, "axes:\n  cardinality: [1, 2]\n", head)
    result = run_cli("sweep", path, "--dry-run")
    assert result.code == 2
    assert (
        "sweep.yaml:12:17: axes.cardinality[0]: cardinality 1: design needs a bottleneck"
        in result.err.replace(str(tmp_path) + "/", "")
    )


OVER = [
    (
        "points",
        "axes:\n  values:\n    train.lr: [{v}]\n    head.dropout: [{v}]\n"
        "    train.weight_decay: [{v}]\n",
        "the axes make 1 x 100 x 100 x 100 = 1,000,000 points, over the sweep's limit of 64",
        "axes.values.train.lr",
    ),
    ("seeds", "seeds: 1000\n", "1000 seeds per point, over the sweep's limit of 10", "seeds"),
    (
        "epochs",
        "axes:\n  cardinality: [1, 2, 4, 8]\nseeds: 5\nlimits: {epochs: 10}\n",
        "4 point(s) x 5 seed(s) would train 20 epochs, over the sweep's limit of 10",
        "spec.train.epochs",
    ),
]


@pytest.mark.parametrize("case,tail,message,field", OVER, ids=[o[0] for o in OVER])
def test_sweep_over_budget_is_refused_located_before_any_work(
    case, tail, message, field, tmp_path, run_cli
):
    values = ", ".join(f"0.{i:03d}" for i in range(1, 101))
    path = write_sweep(tmp_path, tail.replace("{v}", values))
    assert run_cli("check", REPO / "specs/resnet18.yaml").code == 0  # imports warmed
    started = time.perf_counter()
    result = run_cli("sweep", path, "--dry-run")
    elapsed = time.perf_counter() - started
    tracemalloc.start()
    try:
        run_cli("sweep", path, "--dry-run")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.code == 2, result
    assert message in result.err, result
    assert re.search(rf"sweep\.yaml:\d+:\d+: {re.escape(field)}: ", result.err), result
    assert elapsed < 2.0 and peak < 50 * 2**20, (elapsed, peak)
    assert not (tmp_path / "runs").exists()


def test_limits_section_raises_the_budget(tmp_path, run_cli):
    path = write_sweep(tmp_path, "seeds: 12\nlimits: {seeds: 12}\n")
    result = run_cli("sweep", path, "--dry-run")
    assert result.code == 0, result
    assert (
        "1 point(s) x 12 seed(s) = 12 run(s), 12 epochs in all (limits: 64 points, "
        "12 seeds, 2,000 epochs)" in result.out
    )


def test_committed_schema_is_the_schema_command_output(run_cli):
    result = run_cli("schema", "--sweep")
    assert result.code == 0
    assert json.loads(result.out) == json.loads(
        (REPO / "specs/sweeps/sweep.schema.json").read_text()
    )
    assert "cardinality" in json.loads(result.out)["$defs"]["Axes"]["properties"]


# --- reports from run directories (no training) ------------------------------------------------


def _fake_finished_run(run_dir: Path, spec, errors: list[float]) -> None:
    """A run directory as the train runner leaves it, with the given validation errors."""
    from resnext_compiler.runtimes.train.checkpoint import CHECKPOINT
    from resnext_compiler.runtimes.train.config import TrainOverrides, resolve_config
    from resnext_compiler.runtimes.train.metrics import write_metrics

    run_dir.mkdir(parents=True)
    config = resolve_config(spec, TrainOverrides(epochs=len(errors)), run_dir)
    (run_dir / "train.json").write_text(config.to_json())
    (run_dir / "spec.yaml").write_text(spec.to_yaml())
    (run_dir / CHECKPOINT).parent.mkdir()
    (run_dir / CHECKPOINT).write_bytes(b"")
    write_metrics(
        run_dir,
        [
            {
                "epoch": i + 1,
                "train_top1_error": e + 5,
                "val_top1_error": e,
                "val_top5_error": 0.0,
                "epoch_time_s": 1.5,
            }
            for i, e in enumerate(errors)
        ],
    )
    (run_dir / "sweep_point.json").write_text('{"status": "finished", "wall_s": 3.25}')


def test_report_rebuilds_table_and_figures_from_finished_runs(tmp_path, run_cli):
    from resnext_compiler.runtimes.sweep.launch import POINTS, write_sweep_folder
    from resnext_compiler.sweep import plan_sweep

    path = write_sweep(
        tmp_path,
        "axes:\n  cardinality: [1, 2]\n  sample:\n    count: 2\n"
        "    ranges: {train.lr: {low: 0.01, high: 0.1}}\nseeds: 2\n",
    )
    plan = plan_sweep(path)
    out = tmp_path / "out"
    write_sweep_folder(plan, out, jobs=1)
    for number, point in enumerate(plan.points[:-1]):  # the last one never ran
        _fake_finished_run(out / POINTS / point.key, point.spec, [50.0, 40.0 - number])
    result = run_cli("sweep", "--report", out)
    assert result.code == 0, result
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[0] == ("point,seed,status,C,d,params,MACs,epochs,top1_error,time_s,train.lr,error")
    first = plan.points[0]
    assert lines[1].startswith(
        f"C1x64d-sample000,0,finished,1,64,{first.params},{first.macs},2,40.0000,3.2,"
    )
    assert lines[-1].startswith(f"{plan.points[-1].label},1,not run,2,43,")
    summary = (out / "results.md").read_text()
    assert (
        "| C1x64d-sample000 | 1 | 64 | 11,114 | 2 of 2 | 39.50 ± 0.71 | 39.00 | 40.00 |" in summary
    )
    for name in ("error_vs_cardinality.png", "curves.png", "edf.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
        assert f"wrote {out / name}" in result.out


def test_report_of_a_folder_that_is_not_a_sweep_is_refused(tmp_path, run_cli):
    result = run_cli("sweep", "--report", tmp_path)
    assert result.code == 2
    assert "is not a sweep folder (no plan.json" in result.err


# --- Slurm, through submitit's own test doubles ------------------------------------------------


def test_slurm_sweep_submits_one_array_with_the_files_settings_and_collects_it(tmp_path):
    from submitit.core import submission
    from submitit.slurm.test_slurm import mocked_slurm

    from resnext_compiler.errors import UserError
    from resnext_compiler.runtimes.sweep.launch import (
        collect,
        slurm_executor,
        submit_slurm,
        write_sweep_folder,
    )
    from resnext_compiler.runtimes.sweep.report import build_report
    from resnext_compiler.sweep import plan_sweep

    path = write_sweep(
        tmp_path,
        "axes:\n  cardinality: [1, 2]\nrun:\n  executor: slurm\n"
        "  jobs: 2\n  time_limit_min: 90\n  slurm: {partition: dev, "
        "cpus_per_point: 4, mem_gb: 16, account: lab}\n",
    )
    plan = plan_sweep(path)
    out = tmp_path / "out"
    with mocked_slurm() as mock:
        tasks, skipped = write_sweep_folder(plan, out, jobs=2)
        assert skipped == [] and {t.threads for t in tasks} == {4}
        jobs = submit_slurm(plan, out, tasks, jobs=2)
        sbatch = jobs[0].paths.submission_file.read_text()
        for line in (
            "#SBATCH --array=0-1%2",
            "#SBATCH --partition=dev",
            "#SBATCH --time=90",
            "#SBATCH --cpus-per-task=4",
            "#SBATCH --mem=16GB",
            "#SBATCH --account=lab",
            "#SBATCH --ntasks-per-node=1",
        ):
            assert line in sbatch, (line, sbatch)
        assert "gpus" not in sbatch
        with pytest.raises(UserError, match="still RUNNING"):  # a re-run does not resubmit
            submit_slurm(plan, out, tasks, jobs=2)
        for job in jobs:  # what each array task does on its node
            with mock.job_context(job.job_id):
                submission.process_job(job.paths.folder)
            mock.set_job_state(job.job_id, "COMPLETED")
        outcomes = collect(plan, out, list(zip(jobs, tasks, strict=True)), lambda _: None, 0)
    assert [o.status for o in outcomes] == ["finished", "finished"]
    assert [row.status for row in build_report(out).rows] == ["finished", "finished"]
    gpu_plan = plan_sweep(write_sweep(tmp_path, "run:\n  executor: slurm\n  gpus_per_point: 2\n"))
    with mocked_slurm():
        executor = slurm_executor(gpu_plan, tmp_path / "gpu", jobs=3)
        job = executor.submit(print, "x")
        assert "#SBATCH --gpus-per-node=2" in job.paths.submission_file.read_text()


def test_point_specs_carry_the_class_names_of_a_labels_file_the_template_names(tmp_path):
    from resnext_compiler.spec import parse_spec
    from resnext_compiler.sweep import plan_sweep

    (tmp_path / "labels.txt").write_text("".join(f"digit {i}\n" for i in range(10)))
    head = SWEEP_HEAD.replace(
        "  head: {num_classes: 10}\n",
        "  head: {num_classes: 10}\n  preprocess: {labels: labels.txt}\n",
    )
    plan = plan_sweep(write_sweep(tmp_path, "axes:\n  cardinality: [2]\n", head))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    point = parse_spec(plan.points[0].spec.to_yaml(), "point.yaml", elsewhere)
    assert point.labels == tuple(f"digit {i}" for i in range(10))
