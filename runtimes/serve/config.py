"""Serving settings: one frozen value passed from the CLI to the app, batchers and server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from resnext_compiler.limits import DEFAULT_MAX_BATCH, MAX_IMAGE_PIXELS

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True)
class ServeConfig:
    """Every knob of `resnext-compile serve`; the defaults are the CLI's defaults."""

    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = None  # the same service over gRPC too (0: any free port)
    max_batch: int = DEFAULT_MAX_BATCH  # rows per onnxruntime call (Triton's max_batch_size)
    max_delay_ms: float = 5.0  # how long the first request of a batch waits for company
    max_queue: int = 256  # requests waiting for a batch; more -> 503 + Retry-After
    device: str = "auto"  # one of limits.DEVICES
    labels: Path | None = None
    max_body_bytes: int = 64 * MiB  # refused with 413 before it is read
    max_inflight_bytes: int = 256 * MiB  # all buffered bodies together; more -> 503
    header_timeout_s: float = 10.0  # request line + headers must arrive within this
    body_timeout_s: float = 60.0  # the whole body must arrive within this after the headers
    # weights + activations at max batch, checked at load (None: half the machine's memory)
    max_memory_bytes: int | None = None
    max_image_pixels: int = MAX_IMAGE_PIXELS  # source and resize target, checked before decoding
    default_top_k: int = 5
    intra_op_threads: int = 0  # 0: onnxruntime's default (one per core)
    graceful_timeout_s: float = 30.0  # in-flight requests get this long at shutdown
    log_level: str = "info"

    @property
    def max_delay_s(self) -> float:
        return self.max_delay_ms / 1000.0
