"""Triton's statistics extension: per-model request and batch counts and cumulative times.

One `ModelStatistics` per served model, fed by both protocols (each infer request's outcome)
and by the batcher (each onnxruntime call). `as_dict()` is the extension's JSON shape, which
is also the field layout of the gRPC `ModelStatistics` message (durations in nanoseconds).
"""

from __future__ import annotations

import threading
import time


class _Duration:
    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class ModelStatistics:
    """Counters of one model; updated from the event loop and the batcher thread."""

    def __init__(self, name: str, version: str):
        self.name, self.version = name, version
        self._lock = threading.Lock()
        self.success, self.fail = _Duration(), _Duration()
        self.queue, self.compute_infer = _Duration(), _Duration()
        self.inference_count = 0  # rows inferred
        self.execution_count = 0  # onnxruntime calls
        self.last_inference_ms = 0
        self.batches: dict[int, _Duration] = {}

    def request_finished(self, seconds: float, ok: bool) -> None:
        """One infer request answered (ok) or refused/failed after it named this model."""
        with self._lock:
            (self.success if ok else self.fail).add(seconds)

    def batch_finished(self, rows: int, seconds: float, waits: list[float]) -> None:
        """One onnxruntime call over `rows` rows for requests that queued for `waits`."""
        with self._lock:
            self.inference_count += rows
            self.execution_count += 1
            self.last_inference_ms = int(time.time() * 1000)
            self.batches.setdefault(rows, _Duration()).add(seconds)
            for wait in waits:
                self.queue.add(wait)
                self.compute_infer.add(seconds)

    def as_dict(self) -> dict:
        with self._lock:
            return {
                "name": self.name,
                "version": self.version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": self.success.as_dict(),
                    "fail": self.fail.as_dict(),
                    "queue": self.queue.as_dict(),
                    "compute_infer": self.compute_infer.as_dict(),
                },
                "batch_stats": [{"batch_size": rows, "compute_infer": duration.as_dict()}
                                for rows, duration in sorted(self.batches.items())],
            }
