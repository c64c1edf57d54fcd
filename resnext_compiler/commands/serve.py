"""serve: the ONNX form over HTTP (Open Inference Protocol v2 + /v1/classify + /metrics)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from resnext_compiler.commands.options import DEVICE, MAX_BATCH, allow_root_option, number_range
from resnext_compiler.errors import UserError, escape_log_arguments
from resnext_compiler.runtimes.serve.config import GiB, MiB, ServeConfig

DEFAULTS = ServeConfig()  # the settings' one statement of every default


def serve_command(
    model: Path = typer.Argument(..., help="model.onnx, a Triton model directory, or a Triton "
                                 "model repository (REPO/<name>/1/model.onnx).",
                                 show_default=False),
    host: str = typer.Option(
        DEFAULTS.host, "--host",
        help="Address to listen on (loopback by default; the server has no authentication)."),
    port: int = typer.Option(DEFAULTS.port, "--port", min=0, max=65535,
                             help="TCP port (0: any free)."),
    grpc_port: int | None = typer.Option(
        None, "--grpc-port", min=0, max=65535,
        help="Also serve the Open Inference Protocol over gRPC on this port (Triton's 8001)."),
    max_batch: int = MAX_BATCH.option(),
    max_delay_ms: float = typer.Option(
        DEFAULTS.max_delay_ms, "--max-delay-ms", callback=number_range(0, 60_000),
        help="How long a batch waits to fill."),
    max_queue: int = typer.Option(
        DEFAULTS.max_queue, "--max-queue", callback=number_range(1, 1 << 20),
        help="Waiting requests before 503 + Retry-After."),
    device: str = DEVICE.option(f"{DEVICE.help} (cuda without the CUDA execution provider is "
                                "an error)."),
    labels: Path | None = typer.Option(None, "--labels", help="Class names, one per line."),
    max_body_mb: float = typer.Option(
        DEFAULTS.max_body_bytes / MiB, "--max-body-mb", callback=number_range(0.001, 1 << 20),
        help="Largest request body (MiB), refused before reading."),
    max_inflight_mb: float = typer.Option(
        DEFAULTS.max_inflight_bytes / MiB, "--max-inflight-mb",
        callback=number_range(0.001, 1 << 20),
        help="Request bodies buffered at once, all together (MiB); more -> 503 + Retry-After."),
    header_timeout_s: float = typer.Option(
        DEFAULTS.header_timeout_s, "--header-timeout-s", callback=number_range(0.1, 3600),
        help="Seconds a client has to send request headers."),
    body_timeout_s: float = typer.Option(
        DEFAULTS.body_timeout_s, "--body-timeout-s", callback=number_range(0.1, 3600),
        help="Seconds a client has to send a request body."),
    max_image_pixels: int = typer.Option(
        DEFAULTS.max_image_pixels, "--max-image-pixels", callback=number_range(1, 1 << 40),
        help="Most pixels /v1/classify decodes, for the source image and its resize target "
        "alike."),
    max_memory_gb: float | None = typer.Option(
        None, "--max-memory-gb", callback=number_range(0.001, 1 << 20),
        help="Refuse, before warm-up, a model whose weights and activations at --max-batch "
        "need more (GiB; default: half of the machine's memory)."),
    threads: int = typer.Option(
        DEFAULTS.intra_op_threads, "--threads", callback=number_range(0, 1024),
        help="onnxruntime intra-op threads (0: one per core)."),
    log_level: str = typer.Option(DEFAULTS.log_level, "--log-level",
                                  help="debug | info | warning | error"),
    allow_root: list[Path] = allow_root_option(),
) -> None:
    """Serve an ONNX model over HTTP (and gRPC): KServe v2 / Triton protocol, /v1/classify,
    /metrics."""
    if log_level not in ("debug", "info", "warning", "error"):
        raise UserError(f"--log-level must be debug, info, warning or error, got {log_level!r}")
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s: %(message)s")
    escape_log_arguments()  # model and file names reach the log: escaped, newlines too
    config = ServeConfig(host=host, port=port, grpc_port=grpc_port, max_batch=max_batch,
                         max_delay_ms=max_delay_ms,
                         max_queue=max_queue, device=device, labels=labels,
                         max_body_bytes=int(max_body_mb * MiB), max_image_pixels=max_image_pixels,
                         max_inflight_bytes=int(max_inflight_mb * MiB),
                         max_memory_bytes=(int(max_memory_gb * GiB) if max_memory_gb
                                           is not None else None),
                         header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s,
                         intra_op_threads=threads, log_level=log_level)
    if grpc_port is not None:
        try:
            import grpc  # noqa: F401
            from tritonclient.grpc import service_pb2  # noqa: F401
        except ImportError as exc:
            raise UserError(f"--grpc-port needs grpcio and tritonclient[grpc] ({exc}): pip "
                            "install 'resnext-compile[grpc]'") from None
    from resnext_compiler.runtimes.serve.server import serve

    serve(model, config)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
