"""serve: the ONNX form over HTTP (Open Inference Protocol v2 + /v1/classify + /metrics)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from resnext_compiler.errors import UserError


def serve_command(
    model: Path = typer.Argument(..., help="model.onnx, a Triton model directory, or a Triton "
                                 "model repository (REPO/<name>/1/model.onnx).",
                                 show_default=False),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by "
                             "default; the server has no authentication)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port (0: any free)."),
    grpc_port: int | None = typer.Option(
        None, "--grpc-port", min=0, max=65535,
        help="Also serve the Open Inference Protocol over gRPC on this port (Triton's 8001)."),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="Most rows per model call."),
    max_delay_ms: float = typer.Option(5.0, "--max-delay-ms", min=0.0,
                                       help="How long a batch waits to fill."),
    max_queue: int = typer.Option(256, "--max-queue", min=1,
                                  help="Waiting requests before 503 + Retry-After."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda (cuda without the "
                               "CUDA execution provider is an error)."),
    labels: Path | None = typer.Option(None, "--labels", help="Class names, one per line."),
    max_body_mb: float = typer.Option(64.0, "--max-body-mb", min=0.001,
                                      help="Largest request body (MiB), refused before reading."),
    max_image_pixels: int = typer.Option(50_000_000, "--max-image-pixels", min=1,
                                         help="Largest image (pixels) that /v1/classify decodes."),
    threads: int = typer.Option(0, "--threads", min=0,
                                help="onnxruntime intra-op threads (0: one per core)."),
    log_level: str = typer.Option("info", "--log-level", help="debug | info | warning | error"),
) -> None:
    """Serve an ONNX model over HTTP (and gRPC): KServe v2 / Triton protocol, /v1/classify,
    /metrics."""
    from resnext_compiler.runtimes.serve.config import MiB, ServeConfig
    from resnext_compiler.runtimes.serve.model import DEVICES

    if device not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if log_level not in ("debug", "info", "warning", "error"):
        raise UserError(f"--log-level must be debug, info, warning or error, got {log_level!r}")
    if labels is not None and not labels.is_file():
        raise UserError(f"labels file not found: {labels}")
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s: %(message)s")
    config = ServeConfig(host=host, port=port, grpc_port=grpc_port, max_batch=max_batch,
                         max_delay_ms=max_delay_ms,
                         max_queue=max_queue, device=device, labels=labels,
                         max_body_bytes=int(max_body_mb * MiB), max_image_pixels=max_image_pixels,
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
