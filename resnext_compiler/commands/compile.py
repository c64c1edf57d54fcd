"""compile (the default command), check, inspect, schema."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from resnext_compiler.backends.base import DEFAULT_CALIBRATION_IMAGES
from resnext_compiler.commands.options import allow_root_option
from resnext_compiler.errors import SpecError, UserError, error_text, sanitise
from resnext_compiler.named_files import WEIGHTS, named_file

BACKEND_HELP = (
    "onnx | torch (standalone source) | triton (model repository) | dot (picture) | "
    "caffe (prototxt + caffemodel)"
)


BUDGET_HELP = ("Raise a cost limit checked before compiling: NAME=VALUE with NAME blocks, "
               "nodes, params, macs or memory (bytes of activations at the batch; units k, M, G, "
               "GiB). Repeatable. Defaults: blocks=2000 nodes=200k params=4G macs=2T "
               "memory=64GiB.")


def budget_option() -> list[str]:
    return typer.Option([], "--budget", metavar="NAME=VALUE", help=BUDGET_HELP)


def _parse_batch(value: str) -> int | None:
    from resnext_compiler.limits import MAX_BATCH

    if value == "dynamic":
        return None
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_BATCH:
        raise UserError(f"--batch must be an integer in 1..{MAX_BATCH} or 'dynamic', got "
                        f"{value[:40]!r}")
    return int(value)


def _load(spec_path: Path, form: str | None = None, budget: list[str] | None = None,
          batch: int = 1):  # noqa: ANN202 - (Spec, Graph)
    from resnext_compiler.budget import DEFAULT_BUDGET
    from resnext_compiler.pipeline import compile_spec
    from resnext_compiler.spec import load_spec, with_form

    limits = DEFAULT_BUDGET.raised(budget or [])
    spec = load_spec(spec_path)
    if form is not None:
        spec = with_form(spec, form)
    return spec, compile_spec(spec, limits, batch)


def compile_command(
    spec: Path = typer.Argument(..., metavar="SPEC", help="Spec file (YAML).", show_default=False),
    backend: str = typer.Option("onnx", "--backend", "-b", help=BACKEND_HELP),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output file or directory."),
    weights: Path | None = typer.Option(
        None,
        "--weights",
        "-w",
        help="safetensors file, train checkpoint or import-weights output (default: fresh init).",
    ),
    opset: int | None = typer.Option(None, "--opset", min=1, max=1000,
                                     help="ONNX opset (default: backend's)."),
    batch: str = typer.Option("dynamic", "--batch", help="Static batch size, or 'dynamic'."),
    dtype: str = typer.Option(
        "fp32", "--dtype", help="fp32 | fp16 | int8 (onnx and triton; needs --calibrate)."
    ),
    calibrate: Path | None = typer.Option(
        None,
        "--calibrate",
        help="int8: folder of images (searched recursively) that calibrates the ranges.",
    ),
    calibration_images: int | None = typer.Option(
        None,
        "--calibration-images",
        help=f"int8: how many images of --calibrate to use (default {DEFAULT_CALIBRATION_IMAGES}).",
        show_default=False,
    ),
    form: str | None = typer.Option(None, "--form", help="Rewrite every block to form A, B or C."),
    fold_bn: bool = typer.Option(True, "--fold-bn/--no-fold-bn", help="Fold BatchNorm into convs."),
    expand: bool = typer.Option(False, "--expand", help="dot: draw every node, not blocks."),
    max_batch: int = typer.Option(32, "--max-batch", min=1, max=1 << 20,
                                  help="triton: max_batch_size."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**63 - 1,
                             help="Seed of the initial weights without --weights."),
    image_input: bool = typer.Option(
        False, "--image-input",
        help="onnx/triton: take uint8 images [N, H, W, C] (already resized and cropped) and "
        "normalise them inside the graph."),
    budget: list[str] = budget_option(),
    allow_root: list[Path] = allow_root_option(),
) -> None:
    """Compile SPEC with a backend (the default command: `resnext-compile SPEC`)."""
    from resnext_compiler.backends.base import CompileOptions
    from resnext_compiler.backends.registry import load_backend

    if dtype not in ("fp32", "fp16", "int8"):
        raise UserError(f"--dtype must be fp32, fp16 or int8, got {dtype!r}")
    if dtype == "int8":
        _check_int8(backend, calibrate)
    elif calibrate is not None or calibration_images is not None:
        raise UserError("--calibrate and --calibration-images are for --dtype int8")
    if form is not None and form not in ("A", "B", "C"):
        raise UserError(f"--form must be A, B or C, got {form!r}")
    if weights is not None:  # a FIFO or device is refused here, before any work
        named_file(weights, WEIGHTS, None, "--weights")
    chosen = load_backend(backend)
    static_batch = _parse_batch(batch)
    # memory is budgeted at the batch the artifact will run: the static one, else triton's max
    budget_batch = static_batch or (max_batch if backend == "triton" else 1)
    parsed_spec, graph = _load(spec, form, budget, budget_batch)
    options = CompileOptions(
        weights=weights,
        opset=opset,
        batch=static_batch,
        dtype=dtype,
        calibrate=calibrate,
        calibration_images=(DEFAULT_CALIBRATION_IMAGES if calibration_images is None
                            else calibration_images),
        fold_bn=fold_bn,
        expand=expand,
        max_batch=max_batch,
        seed=seed,
        image_input=image_input,
    )
    target = output if output is not None else chosen.default_output(parsed_spec)
    if output is None and form is not None:  # another form never overwrites the spec's own
        target = target.with_name(f"{target.stem}_form{form}{target.suffix}")
    written = chosen.emit(graph, parsed_spec, options, target)
    for path in written:
        typer.echo(sanitise(f"wrote {path}"))


def _check_int8(backend: str, calibrate: Path | None) -> None:
    """Refuse an int8 compile that could only calibrate on made-up data, before any work."""
    if backend not in ("onnx", "triton"):
        raise UserError(f"--dtype int8 is for the onnx and triton backends, not {backend!r}")
    if calibrate is None:
        raise UserError("--dtype int8 needs --calibrate DIR: a folder of images like the ones "
                        "the model will see (a few dozen are enough); int8 ranges are measured "
                        "on real images, never guessed")


def check_command(
    specs: list[Path] = typer.Argument(
        ..., metavar="SPEC...", help="Spec files to lint.", show_default=False
    ),
    budget: list[str] = budget_option(),
    allow_root: list[Path] = allow_root_option(),
) -> None:
    """Validate specs: schema, shapes, groups. Exit 2 with FILE:LINE:COL messages on problems."""
    from resnext_compiler.passes.complexity import analyse

    failed = 0
    for path in specs:
        try:
            _, graph = _load(path, budget=budget)
        except SpecError as exc:
            failed += 1
            print(error_text(exc), file=sys.stderr)
            continue
        cost = analyse(graph)
        typer.echo(sanitise(f"ok {path}: {cost.params:,} params, {cost.macs / 1e9:.2f} GMACs"))
    if failed:
        print(f"{failed} of {len(specs)} spec(s) have problems", file=sys.stderr)
        raise typer.Exit(2)


def inspect_command(
    spec: Path = typer.Argument(..., metavar="SPEC|MODEL.onnx|REPO", show_default=False,
                                help="Spec file, or a compiled ONNX file / Triton repository."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object instead of a table."),
    budget: list[str] = budget_option(),
    allow_root: list[Path] = allow_root_option(),
) -> None:
    """Per-stage shapes, parameters, MACs and memory of a spec; a compiled model's input
    contract (preprocessing and class names)."""
    from resnext_compiler.passes.complexity import analyse
    from resnext_compiler.report import report_dict, report_table

    if spec.is_dir() or spec.suffix.lower() == ".onnx":
        _inspect_artifact(spec, as_json)
        return
    parsed_spec, graph = _load(spec, budget=budget)
    cost = analyse(graph)
    if as_json:
        typer.echo(json.dumps(report_dict(parsed_spec, graph, cost), indent=2))
    else:
        typer.echo(sanitise(report_table(parsed_spec, graph, cost), keep_newlines=True))


def _inspect_artifact(path: Path, as_json: bool) -> None:
    from dataclasses import asdict

    from resnext_compiler.input_contract import find_onnx_file, read_contract

    contract = read_contract(path)
    onnx_file = find_onnx_file(path)
    if as_json:
        data = {"model": str(onnx_file), "contract": asdict(contract) if contract else None}
        typer.echo(json.dumps(data, indent=2))
        return
    if contract is None:
        typer.echo(sanitise(f"{onnx_file}: records no input contract (serve and evaluate use "
                            "the defaults of docs/serving.md)"))
        return
    typer.echo(sanitise(f"{onnx_file}: input contract"))
    for line in contract.describe():  # class names come from the file: escape them
        typer.echo(f"  {sanitise(line)}")


def schema_command() -> None:
    """Print the JSON Schema of spec v1 (for yaml-language-server completion)."""
    from resnext_compiler.spec import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


def register(app: typer.Typer) -> None:
    app.command("compile")(compile_command)
    app.command("check")(check_command)
    app.command("inspect")(inspect_command)
    app.command("schema")(schema_command)
