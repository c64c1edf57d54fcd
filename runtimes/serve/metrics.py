"""Prometheus metrics (prometheus-client): requests by status, latency, batch size, queue depth.

HTTP requests and gRPC calls are counted separately (their endpoint and status spaces differ);
batches, queue depth and inference requests in progress are shared by both protocols.

Each app has its own registry, so several servers can live in one process (tests). Endpoint
labels are a fixed small set, never the raw path, so a client cannot grow the label space.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_ENDPOINTS = (
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$"), "infer"),
    (re.compile(r"^/v1/classify$"), "classify"),
    (re.compile(r"^/v2/health/"), "health"),
    (re.compile(r"^/metrics$"), "metrics"),
    (re.compile(r"^/v2(/|$)"), "metadata"),
)


def endpoint_of(path: str) -> str:
    for pattern, name in _ENDPOINTS:
        if pattern.match(path):
            return name
    return "other"


class ServeMetrics:
    """The server's metrics in their own registry."""

    def __init__(self, max_batch: int):
        self.registry = CollectorRegistry()
        self.requests = Counter("resnext_serve_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("resnext_serve_request_latency_seconds",
                                 "HTTP request latency, first byte in to last byte out",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch})
        self.batch_size = Histogram("resnext_serve_batch_size", "Rows per onnxruntime call",
                                    ["model"], buckets=[s for s in sizes if s <= max_batch],
                                    registry=self.registry)
        self.batch_latency = Histogram("resnext_serve_batch_latency_seconds",
                                       "onnxruntime time per batch", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batches = Counter("resnext_serve_batches", "onnxruntime calls by exact rows",
                               ["model", "rows"], registry=self.registry)
        self.in_progress = Gauge("resnext_serve_inference_requests_in_progress",
                                 "infer and classify requests received and not yet answered",
                                 registry=self.registry)
        self.in_progress.set_function(lambda: self.inference_in_progress)
        self.inference_in_progress = 0
        self.queue_depth = Gauge("resnext_serve_queue_depth", "Requests waiting for a batch",
                                 ["model"], registry=self.registry)
        self.grpc_requests = Counter("resnext_serve_grpc_requests", "gRPC calls by method and "
                                     "status code", ["method", "code"], registry=self.registry)
        self.grpc_latency = Histogram("resnext_serve_grpc_request_latency_seconds",
                                      "gRPC call latency, request received to response sent",
                                      ["method"], buckets=LATENCY_BUCKETS,
                                      registry=self.registry)

    def track_in_flight(self, used: Callable[[], int], peak: Callable[[], int]) -> None:
        Gauge("resnext_serve_request_bytes_in_flight", "Bytes of large HTTP bodies and gRPC "
              "messages held now (--max-inflight-mb)",
              registry=self.registry).set_function(used)
        Gauge("resnext_serve_request_bytes_in_flight_peak", "The most bytes of large HTTP "
              "bodies and gRPC messages held at once since the server started",
              registry=self.registry).set_function(peak)

    def batch_observer(self, model: str) -> Callable[[int, float], None]:
        size, latency = self.batch_size.labels(model), self.batch_latency.labels(model)

        def observe(rows: int, seconds: float) -> None:
            size.observe(rows)
            latency.observe(seconds)
            self.batches.labels(model, str(rows)).inc()  # rows <= max batch: bounded labels

        return observe

    def track_queue(self, model: str, depth: Callable[[], int]) -> None:
        self.queue_depth.labels(model).set_function(depth)


class MetricsMiddleware:
    """Counts every HTTP response (including the size limit's refusals) and its latency."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        endpoint = endpoint_of(scope.get("path", ""))
        inference = endpoint in ("infer", "classify")
        if inference:
            self.metrics.inference_in_progress += 1

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            if inference:
                self.metrics.inference_in_progress -= 1
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
