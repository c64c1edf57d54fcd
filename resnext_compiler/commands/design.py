"""`design`: the 1x-complexity solver (Xie et al. 2017, Sec. 3.3, Table 2)."""

from __future__ import annotations

from pathlib import Path

import typer

from resnext_compiler.errors import UserError, sanitise


def _format_design(design, verbose: bool = True) -> str:  # noqa: ANN001 - design.Design
    criterion = "whole-network parameters" if design.criterion == "params" else (
        "whole-network multiply-accumulates")
    lines = [
        f"template {design.template}: {design.target_params:,} params, "
        f"{design.target_macs / 1e9:.3f} GMACs",
        f"criterion: {criterion} (--match {design.criterion}; Xie et al. 2017 keep parameters)",
        f"cardinality {design.cardinality}: base width d = {design.base_width} "
        f"(grouped width {design.cardinality * design.base_width} at stage width 64)",
        "",
        f"{'d':>5}  {'params':>12}  {'GMACs':>7}  {'vs template':>11}",
    ]
    for cand in design.neighbours:
        mark = "  <- chosen" if cand.base_width == design.base_width else ""
        lines.append(f"{cand.base_width:>5}  {cand.params:>12,}  {cand.macs / 1e9:>7.3f}  "
                     f"{design.deviation(cand):>+10.2%}{mark}")
    return "\n".join(lines)


def _format_table(designs: list) -> str:
    first = designs[0]
    lines = [
        f"1x-complexity table from {first.template} ({first.target_params:,} params, "
        f"{first.target_macs / 1e9:.3f} GMACs), matching "
        f"{'parameters' if first.criterion == 'params' else 'MACs'}:",
        "",
        f"{'C':>4}  {'d':>4}  {'C x d':>6}  {'params':>12}  {'GMACs':>7}  {'vs template':>11}",
    ]
    for design in designs:
        cand = design.chosen
        lines.append(f"{design.cardinality:>4}  {cand.base_width:>4}  "
                     f"{design.cardinality * cand.base_width:>6}  {cand.params:>12,}  "
                     f"{cand.macs / 1e9:>7.3f}  {design.deviation(cand):>+10.2%}")
    return "\n".join(lines)


def design_command(
    template: Path = typer.Option(..., "--template", "-t", metavar="SPEC",
                                  help="Spec whose complexity to keep (e.g. specs/resnet50.yaml)."),
    cardinality: int | None = typer.Option(
        None, "--cardinality", "-c", min=1, help="Number of paths C of the new network."),
    match: str = typer.Option("params", "--match",
                              help="params (the paper's rule, default) | macs"),
    output: Path | None = typer.Option(None, "--output", "-o",
                                       help="Write the designed spec here (YAML)."),
    name: str | None = typer.Option(None, "--name", help="Name of the designed spec."),
    table: bool = typer.Option(False, "--table",
                               help="Print the table for C = 1, 2, 4, 8, 16, 32, 64."),
) -> None:
    """Find the base width d at cardinality C that keeps the template's complexity (Table 2).

    Example: resnext-compile design --template specs/resnet50.yaml --cardinality 8 -o r50_8x.yaml
    """
    from resnext_compiler.design import design_spec, design_table, solve
    from resnext_compiler.spec import load_spec

    if match not in ("params", "macs"):
        raise UserError(f"--match must be params or macs, got {match!r}")
    spec = load_spec(template)
    if table:
        typer.echo(sanitise(_format_table(design_table(spec, match=match)), keep_newlines=True))  # type: ignore[arg-type]
        if cardinality is None:
            if output is not None:
                raise UserError("--output needs --cardinality (which row to write)")
            return
        typer.echo("")
    if cardinality is None:
        raise UserError("give --cardinality C (or --table for the whole table)")
    design = solve(spec, cardinality, match)  # type: ignore[arg-type]
    typer.echo(sanitise(_format_design(design), keep_newlines=True))
    designed = design_spec(spec, design, name=name)
    if output is None:
        typer.echo(f"\n# {sanitise(designed.name)}.yaml (write it with -o)\n{designed.to_yaml()}",
                   nl=False)
        return
    from resnext_compiler.artifacts import write_text_atomic

    write_text_atomic(output, designed.to_yaml())
    typer.echo(f"wrote {output}")


def register(app: typer.Typer) -> None:
    app.command("design")(design_command)
