"""The inference service both protocols front: models, batchers, statistics and metrics.

HTTP (`app.py`) and gRPC (`grpc_service.py`) each decode their wire format into an
`InferRequest` and call `InferenceService.infer`; model lookup, readiness, metadata, the
dynamic batching queue, statistics and metrics live here once, so the two protocols answer
the same request the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from resnext_compiler import __version__
from resnext_compiler.runtimes.serve.batching import DynamicBatcher
from resnext_compiler.runtimes.serve.config import ServeConfig
from resnext_compiler.runtimes.serve.datatypes import triton_type
from resnext_compiler.runtimes.serve.errors import ServeError
from resnext_compiler.runtimes.serve.in_flight import InFlight
from resnext_compiler.runtimes.serve.metrics import ServeMetrics
from resnext_compiler.runtimes.serve.model import LoadedModel
from resnext_compiler.runtimes.serve.protocol import InferRequest, check_model_version
from resnext_compiler.runtimes.serve.statistics import ModelStatistics

SERVER_NAME = "resnext-compile"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "statistics"]
UNKNOWN_CONNECTIONS = 1 << 30  # no front end counts its clients: batches wait the full delay


@dataclass
class ServedModel:
    model: LoadedModel
    batcher: DynamicBatcher
    statistics: ModelStatistics
    max_delay_ms: float
    labels: list[str] | None = None

    def configuration(self) -> dict:
        """A Triton-style model configuration (HTTP JSON; the fields of gRPC's ModelConfig)."""
        model = self.model
        batched = model.static_batch is None

        def dims(shape: tuple[int, ...]) -> list[int]:
            return list(shape[1:] if batched else shape)

        return {
            "name": model.name, "platform": "onnxruntime_onnx", "backend": "onnxruntime",
            "max_batch_size": model.max_batch if batched else 0,
            "input": [{"name": model.input.name, "data_type": triton_type(model.input.datatype),
                       "dims": dims(model.input.shape)}],
            "output": [{"name": out.name, "data_type": triton_type(out.datatype),
                        "dims": dims(out.shape)} for out in model.outputs],
            "dynamic_batching": {"max_queue_delay_microseconds": int(self.max_delay_ms * 1000)},
        }

    def metadata(self) -> dict:
        """The protocol's model metadata (HTTP JSON; the gRPC message has the same fields)."""
        model = self.model
        return {"name": model.name, "versions": [model.version], "platform": "onnxruntime_onnx",
                "inputs": [model.input.metadata()],
                "outputs": [output.metadata() for output in model.outputs]}


class InferenceService:
    """Every served model with its batcher; `close()` drains them."""

    def __init__(self, models: list[LoadedModel], config: ServeConfig,
                 labels: dict[str, list[str]] | None = None):
        self.config = config
        self.in_flight = InFlight(config.max_inflight_bytes)  # HTTP bodies and gRPC messages
        self.metrics = ServeMetrics(max(model.max_batch for model in models))
        self.metrics.track_in_flight(lambda: self.in_flight.used, lambda: self.in_flight.peak)
        # each front end adds a count of its open client connections (see DynamicBatcher)
        self.connection_counters: list[Callable[[], int]] = []
        # front ends to stop (letting in-flight calls finish) before the batchers close
        self.before_close: list[Callable[[], Awaitable[None]]] = []
        self.served: dict[str, ServedModel] = {}
        for model in models:
            statistics = ModelStatistics(model.name, model.version)
            batcher = DynamicBatcher(model.run, model.max_batch, config.max_delay_s,
                                     config.max_queue,
                                     on_batch=self._batch_observer(model.name, statistics),
                                     name=model.name, open_connections=self.open_connections)
            self.metrics.track_queue(model.name, lambda b=batcher: b.depth)
            # a --labels file wins over the class names the model's contract carries
            names = (labels or {}).get(model.name, model.contract.labels)
            self.served[model.name] = ServedModel(model, batcher, statistics,
                                                  config.max_delay_ms,
                                                  list(names) if names else None)

    def _batch_observer(self, name: str, statistics: ModelStatistics
                        ) -> Callable[[int, float, list[float]], None]:
        metrics = self.metrics.batch_observer(name)

        def observe(rows: int, seconds: float, waits: list[float]) -> None:
            metrics(rows, seconds)
            statistics.batch_finished(rows, seconds, waits)

        return observe

    def open_connections(self) -> int:
        if not self.connection_counters:
            return UNKNOWN_CONNECTIONS
        return sum(count() for count in self.connection_counters)

    @property
    def ready(self) -> bool:
        return all(entry.batcher.accepting for entry in self.served.values())

    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    def repository_index(self) -> list[dict]:
        return [{"name": name, "version": entry.model.version,
                 "state": "READY" if entry.batcher.accepting else "UNAVAILABLE"}
                for name, entry in self.served.items()]

    def lookup(self, name: str, version: str | None = None) -> ServedModel:
        """The served model `name` (404 for an unknown name or version)."""
        if name not in self.served:
            raise ServeError(404, f"unknown model {name!r} (serving "
                             f"{', '.join(sorted(self.served))})")
        check_model_version(version, self.served[name].model.version)
        return self.served[name]

    async def infer(self, entry: ServedModel, parse: Callable[[], InferRequest]
                    | Callable[[], Awaitable[InferRequest]]) -> tuple[InferRequest,
                                                                      dict[str, np.ndarray]]:
        """Parse (a refusal counts as a failed request) and run one request in a batch.

        Returns the parsed request and every model output by name.
        """
        started = time.perf_counter()
        ok = False
        try:
            parsed = parse()
            if asyncio.iscoroutine(parsed):
                parsed = await parsed
            outputs = await entry.batcher.submit(parsed.inputs)
            ok = True
        finally:
            entry.statistics.request_finished(time.perf_counter() - started, ok)
        model = entry.model
        return parsed, {info.name: array
                        for info, array in zip(model.outputs, outputs, strict=True)}

    def statistics(self, name: str | None = None, version: str | None = None) -> dict:
        """The statistics extension's answer for one model or (no name) all of them."""
        entries = [self.lookup(name, version)] if name else list(self.served.values())
        return {"model_stats": [entry.statistics.as_dict() for entry in entries]}

    async def close(self) -> None:
        """Stop the front ends, then let queued work finish and stop the batchers."""
        for stop in self.before_close:
            await stop()
        timeout = self.config.graceful_timeout_s
        await asyncio.gather(*(asyncio.to_thread(entry.batcher.close, timeout)
                               for entry in self.served.values()))
