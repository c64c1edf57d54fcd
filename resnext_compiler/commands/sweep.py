"""sweep: train a design space from a sweep file and report the answer (runtimes/sweep)."""

from __future__ import annotations

from pathlib import Path

import typer

from resnext_compiler.commands.options import number_range
from resnext_compiler.errors import ResnextError, UserError, sanitise


def sweep_command(
    sweep_file: Path | None = typer.Argument(
        None, metavar="SWEEP.yaml", help="Sweep file (see docs/sweep.md).", show_default=False
    ),
    jobs: int | None = typer.Option(
        None,
        "--jobs",
        "-j",
        help="Points at once (default: the file's run.jobs); locally "
        "each point gets cores / jobs threads.",
        callback=number_range(1, 1024),
    ),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        help="Sweep folder (default: runs/NAME). Re-running into it "
        "skips finished points and resumes interrupted ones.",
    ),
    report: Path | None = typer.Option(
        None,
        "--report",
        metavar="DIR",
        help="Rebuild the table and figures of the sweep "
        "folder DIR from its finished runs; trains nothing.",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the points and their cost; train nothing."
    ),
) -> None:
    """Train every point of a design space (cardinality at fixed complexity, explicit values,
    random samples) locally or on Slurm through submitit, then write the results table and
    figures (error vs cardinality, training curves, EDFs).

    Example: resnext-compile sweep specs/sweeps/digits_cardinality.yaml --jobs 2
    """
    if report is not None:
        if sweep_file is not None or output is not None or dry_run:
            raise UserError("--report DIR rebuilds an existing sweep folder; give it alone")
        _report(report)
        return
    if sweep_file is None:
        raise UserError("give a sweep file (resnext-compile sweep SWEEP.yaml), or --report DIR")
    from resnext_compiler.naming import file_stem
    from resnext_compiler.sweep import plan_sweep, seeds_of

    plan = plan_sweep(sweep_file)
    sweep = plan.sweep
    folder = output if output is not None else Path("runs") / file_stem(sweep.name)
    seeds = len(seeds_of(sweep))
    epochs = sum(point.epochs for point in plan.points)
    typer.echo(
        sanitise(
            f"sweep {sweep.name}: {len(plan.points) // seeds} point(s) x {seeds} "
            f"seed(s) = {len(plan.points)} run(s), {epochs:,} epochs in all "
            f"(limits: {plan.budget.points} points, {plan.budget.seeds} seeds, "
            f"{plan.budget.epochs:,} epochs); {sweep.run.executor} executor, "
            f"folder {folder}"
        )
    )
    if dry_run:
        for point in plan.points:
            typer.echo(
                sanitise(
                    f"  {point.key}: {point.spec.name}, seed {point.seed}, "
                    f"{point.params:,} params, {point.macs / 1e6:.2f} MMACs, "
                    f"{point.epochs} epochs"
                )
            )
        return
    from resnext_compiler.runtimes.sweep.launch import run_sweep

    try:
        result = run_sweep(
            plan,
            folder,
            jobs or sweep.run.jobs,
            lambda line: typer.echo(sanitise(line, keep_newlines=True)),
        )
    except KeyboardInterrupt:
        typer.echo(
            f"stopped; run the same command again to resume: resnext-compile sweep "
            f"{sweep_file}" + (f" -o {output}" if output is not None else ""),
            err=True,
        )
        raise
    built = _report(folder)
    if result.failed:
        keys = ", ".join(o.key for o in result.failed)
        raise ResnextError(
            f"{len(result.failed)} of {len(built.rows)} run(s) failed ({keys}); "
            "the others are in the table. Fix the cause and run the same "
            "command again: finished points are skipped."
        )


def _report(folder: Path):  # noqa: ANN202 - runtimes.sweep.report.Report
    from resnext_compiler.runtimes.sweep.report import build_report, results_markdown

    if not folder.is_dir():
        raise UserError(f"--report {folder}: no such sweep folder")
    built = build_report(folder)
    summary = results_markdown(built.rows).split("\n\n", 1)[-1]
    typer.echo(sanitise(summary.rstrip(), keep_newlines=True))
    for path in built.files:
        typer.echo(sanitise(f"wrote {path}"))
    return built


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep_command)
