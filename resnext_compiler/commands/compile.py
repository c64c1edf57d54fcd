"""compile (the default command), check, inspect, schema."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from typer.core import TyperCommand

from resnext_compiler.backends.base import (
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_OPSET,
    DTYPES,
    MIN_OPSET,
)
from resnext_compiler.commands.options import (
    MAX_BATCH,
    allow_root_option,
    form_option,
    number_range,
)
from resnext_compiler.errors import SpecError, UserError, error_text, sanitise
from resnext_compiler.named_files import WEIGHTS, named_file

if TYPE_CHECKING:
    from resnext_compiler.onnx_cost import OnnxStructure


class _CompileCommand(TyperCommand):
    """`compile`, whose `--backend` help lists the installed backends when help is shown
    (reading them imports every backend, which `resnext-compile SPEC` alone never needs)."""

    def format_help(self, ctx, formatter):  # noqa: ANN001, ANN201 - click's signature
        from resnext_compiler.backends.registry import backend_help

        for param in self.params:
            if param.name == "backend":
                param.help = f"One of the installed backends: {backend_help()}."
        return super().format_help(ctx, formatter)


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
          batch: int = 1):  # noqa: ANN202 - (Spec, CompiledModel)
    from resnext_compiler.budget import DEFAULT_BUDGET
    from resnext_compiler.pipeline import compile_model
    from resnext_compiler.spec import load_spec, with_form

    if spec_path.suffix.lower() == ".onnx":
        raise UserError(f"{spec_path} is a compiled model, not a spec: `resnext-compile inspect "
                        f"{spec_path}` shows it, `serve` and `evaluate` run it; compile a YAML "
                        "spec (specs/*.yaml)")
    limits = DEFAULT_BUDGET.raised(budget or [])
    spec = load_spec(spec_path)
    if form is not None:
        spec = with_form(spec, form)
    return spec, compile_model(spec, limits, batch)


def compile_command(
    spec: Path = typer.Argument(..., metavar="SPEC", help="Spec file (YAML).", show_default=False),
    backend: str = typer.Option("onnx", "--backend", "-b",
                                help="Backend (the list: resnext-compile compile --help)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output file or directory."),
    weights: Path | None = typer.Option(
        None,
        "--weights",
        "-w",
        help="safetensors file, train checkpoint, import-weights output, or pretrained "
        "ImageNet weights by name: torchvision:resnext50_32x4d, timm:seresnext50_32x4d, ... "
        "(downloaded once, hash-checked; default: fresh init).",
    ),
    opset: int | None = typer.Option(
        None, "--opset", min=MIN_OPSET, show_default=False,
        help=f"ONNX opset: {MIN_OPSET} up to the newest the installed onnx package knows "
        f"(default {DEFAULT_OPSET})."),
    batch: str = typer.Option("dynamic", "--batch", help="Static batch size, or 'dynamic'."),
    dtype: str = typer.Option(
        "fp32", "--dtype", help=f"{' | '.join(DTYPES)} (what each backend writes: its "
        "dtypes; int8 needs --calibrate)."
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
    validate: Path | None = typer.Option(
        None, "--validate",
        help="int8: folder of held-out images that measure int8 against float32 (default: every "
        "other image of --calibrate is held out instead of calibrating)."),
    int8_min_agreement: float = typer.Option(
        DEFAULT_MIN_AGREEMENT, "--int8-min-agreement", metavar="PERCENT",
        callback=number_range(0, 100),
        help="int8: least top-1 agreement with float32 on the held-out images; below it nodes "
        "are kept in float, and a file that still misses it is not written."),
    accept_int8_loss: bool = typer.Option(
        False, "--accept-int8-loss",
        help="int8: write the best attempt even when it stays below --int8-min-agreement."),
    form: str | None = form_option("Rewrite every bottleneck to block form A, B or C."),
    fold_bn: bool = typer.Option(True, "--fold-bn/--no-fold-bn", help="Fold BatchNorm into convs."),
    expand: bool = typer.Option(False, "--expand", help="dot: draw every node, not blocks."),
    max_batch: int = MAX_BATCH.option("triton: max_batch_size (most rows per model call)."),
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

    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    chosen = load_backend(backend)
    if dtype == "int8":
        _check_int8(chosen, calibrate)
    elif (calibrate is not None or calibration_images is not None or validate is not None
          or accept_int8_loss or int8_min_agreement != DEFAULT_MIN_AGREEMENT):
        raise UserError("--calibrate, --calibration-images, --validate, --int8-min-agreement "
                        "and --accept-int8-loss are for --dtype int8")
    from resnext_compiler.pretrained import weights_source, with_class_names

    weights, pretrained = weights_source(weights)
    if weights is not None:  # a FIFO or device is refused here, before any work
        named_file(weights, WEIGHTS, None, "--weights")
    static_batch = _parse_batch(batch)
    # memory is budgeted at the batch the artifact will run: the static one, else the most a
    # batching artifact (triton's) accepts
    budget_batch = static_batch or (max_batch if getattr(chosen, "reads_max_batch", False)
                                    else 1)
    parsed_spec, model = _load(spec, form, budget, budget_batch)
    parsed_spec = with_class_names(parsed_spec, pretrained)
    options = CompileOptions(
        weights=weights,
        opset=opset,
        batch=static_batch,
        dtype=dtype,
        calibrate=calibrate,
        calibration_images=(DEFAULT_CALIBRATION_IMAGES if calibration_images is None
                            else calibration_images),
        validate=validate,
        int8_min_agreement=int8_min_agreement,
        accept_int8_loss=accept_int8_loss,
        fold_bn=fold_bn,
        expand=expand,
        max_batch=max_batch,
        seed=seed,
        image_input=image_input,
    )
    target = output if output is not None else chosen.default_output(parsed_spec)
    if output is None and form is not None:  # another form never overwrites the spec's own
        target = target.with_name(f"{target.stem}_form{form}{target.suffix}")
    written = chosen.emit(model.graph, parsed_spec, options, target)
    for path in written:
        typer.echo(sanitise(f"wrote {path}"))
    if dtype == "int8":
        from resnext_compiler.onnx_cost import read_structure

        written_onnx = next(p for p in written if p.suffix == ".onnx")
        for line in _int8_lines(read_structure(written_onnx)):
            typer.echo(sanitise(line))


def _int8_report(structure: OnnxStructure) -> dict | None:
    """The measurements an int8 ONNX model records; None for other models."""
    from resnext_compiler.backends.int8_agreement import read_int8_report

    return read_int8_report(structure.metadata)


def _int8_lines(structure: OnnxStructure) -> list[str]:
    from resnext_compiler.backends.int8_agreement import describe_int8_report

    report = _int8_report(structure)
    return describe_int8_report(report) if report else []


def _check_int8(backend, calibrate: Path | None) -> None:  # noqa: ANN001 - a Backend
    """Refuse an int8 compile that could only calibrate on made-up data, before any work."""
    from resnext_compiler.backends.registry import backends_writing, writes_dtype

    if not writes_dtype(backend, "int8"):
        raise UserError(f"--dtype int8 is for the {' and '.join(backends_writing('int8'))} "
                        f"backends, not {backend.name!r}")
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
    failed = 0
    for path in specs:
        try:
            _, model = _load(path, budget=budget)
        except SpecError as exc:
            failed += 1
            print(error_text(exc), file=sys.stderr)
            continue
        cost = model.cost
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
    from resnext_compiler.report import report_dict, report_table

    if spec.is_dir() or spec.suffix.lower() == ".onnx":
        _inspect_artifact(spec, as_json)
        return
    parsed_spec, model = _load(spec, budget=budget)
    if as_json:
        typer.echo(json.dumps(report_dict(parsed_spec, model.graph, model.cost), indent=2))
    else:
        typer.echo(sanitise(report_table(parsed_spec, model.graph, model.cost),
                            keep_newlines=True))


def _inspect_artifact(path: Path, as_json: bool) -> None:
    from dataclasses import asdict

    from resnext_compiler.artifact_format import contract_of, find_onnx_file
    from resnext_compiler.onnx_cost import read_structure

    onnx_file = find_onnx_file(path)
    structure = read_structure(onnx_file)  # the opener's bounds; large weights never read
    contract = contract_of(structure)
    summary = onnx_summary(structure)
    if as_json:
        data = {"model": str(onnx_file), **summary,
                "contract": asdict(contract) if contract else None,
                "int8": _int8_report(structure)}
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(sanitise(f"{onnx_file}: {summary['params']:,} stored parameters (BatchNorm "
                        f"folded where it was), opset {summary['opset']}, dtype "
                        f"{summary['dtype']}, input {summary['input_dtype']} "
                        f"{summary['input_shape']} -> output {summary['output_shape']}"))
    if contract is None:
        typer.echo(sanitise(f"{onnx_file}: records no input contract (serve and evaluate use "
                            "the defaults of docs/serving.md)"))
    else:
        typer.echo("input contract")
        for line in contract.describe():  # class names come from the file: escape them
            typer.echo(f"  {sanitise(line)}")
    for line in _int8_lines(structure):  # node names come from the file too
        typer.echo(f"  {sanitise(line)}")


def onnx_summary(structure: OnnxStructure) -> dict:
    """Parameters (initializer elements), opset, element type and shapes of an ONNX model
    read by `onnx_cost.read_structure` (declared sizes: no weight data is read)."""
    import math

    import onnx

    from resnext_compiler.artifact_format import KEY_DTYPE

    model = structure.model
    graph = model.graph

    def shape(value: onnx.ValueInfoProto) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    inputs = structure.inputs
    element = inputs[0].type.tensor_type.elem_type if inputs else onnx.TensorProto.UNDEFINED
    stored = structure.metadata.get(KEY_DTYPE)
    dtype = (str(onnx.helper.tensor_dtype_to_np_dtype(element))
             if element != onnx.TensorProto.UNDEFINED else "unknown")
    return {
        "params": sum(math.prod(init.dims) for init in structure.initializers),
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                      None),
        "dtype": stored or dtype,  # the compile's --dtype (int8 files take float32 input)
        "input_dtype": dtype,
        "input_shape": shape(inputs[0]) if inputs else [],
        "output_shape": shape(graph.output[0]) if graph.output else [],
    }


def schema_command(
    sweep: bool = typer.Option(False, "--sweep", help="The schema of sweep files instead."),
) -> None:
    """Print the JSON Schema of spec v1 (for yaml-language-server completion)."""
    if sweep:
        from resnext_compiler.sweep import json_schema
    else:
        from resnext_compiler.spec import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


def register(app: typer.Typer) -> None:
    app.command("compile", cls=_CompileCommand)(compile_command)
    app.command("check")(check_command)
    app.command("inspect")(inspect_command)
    app.command("schema")(schema_command)
