"""`import-weights`: torchvision, timm, Torch7 and Caffe weights -> a safetensors file."""

from __future__ import annotations

from pathlib import Path

import typer

from resnext_compiler.commands.options import form_option
from resnext_compiler.errors import UserError, sanitise


def import_weights_command(
    source: Path = typer.Argument(..., metavar="SRC", show_default=False,
                                  help="torchvision/timm state dict (.pth, .safetensors), a "
                                       "Torch7 model (.t7) or a Caffe model (.caffemodel)."),
    spec_path: Path = typer.Option(..., "--spec", "-s", metavar="SPEC",
                                   help="Spec the weights belong to."),
    output: Path = typer.Option(..., "--output", "-o", help="Output .safetensors file."),
    form: str | None = form_option("Write the weights for block form A, B or C (default: the "
                                   "spec's)."),
    allow_partial: bool = typer.Option(
        False, "--allow-partial",
        help="Write only the tensors that fit instead of stopping at the first mismatches."),
) -> None:
    """Convert pretrained weights to a safetensors file keyed by the spec's IR names.

    Example: resnext-compile import-weights resnext101_32x8d.pth
    --spec specs/resnext101_32x8d.yaml -o r101.safetensors
    """
    from resnext_compiler.importers import import_weights, save_safetensors
    from resnext_compiler.spec import load_spec, with_form

    if output.suffix != ".safetensors":
        raise UserError(f"--output must end in .safetensors, got {output}")
    spec = load_spec(spec_path)
    if form is not None:
        spec = with_form(spec, form)
    result = import_weights(source, spec, allow_partial=allow_partial)
    for line in result.problems[:10]:
        typer.echo(sanitise(f"skipped {line}"), err=True)
    save_safetensors(output, result, {"source": source.name, "spec": str(spec_path)})
    typer.echo(sanitise(result.summary(), keep_newlines=True))
    typer.echo(f"wrote {output}")


def register(app: typer.Typer) -> None:
    app.command("import-weights")(import_weights_command)
