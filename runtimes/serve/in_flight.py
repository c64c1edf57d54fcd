"""The server's one bytes-in-flight budget, shared by its HTTP and gRPC front ends."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from resnext_compiler.runtimes.serve.batching import RETRY_AFTER_S
from resnext_compiler.runtimes.serve.errors import ServeError

SMALL_BODY_BYTES = 1024 * 1024  # one image upload or one 224x224 fp32 tensor fits


class InFlight:
    """Bytes of request bodies and messages held right now, against one budget for the server.

    Both front ends reserve here before they decode a large request (HTTP from its declared
    length, before reading the body; gRPC from the received message, before parsing it), so
    the same load gets the same answer: 503 + Retry-After, or RESOURCE_EXHAUSTED with a
    retry-after trailer. Requests under `SMALL_BODY_BYTES` are not counted. `peak` is the
    most bytes held at once since the server started (a metric: it shows how close the load
    came to the budget, and that the budget held).
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._lock = threading.Lock()

    def reserve(self, amount: int) -> bool:
        with self._lock:
            if self.used + amount > self.limit:
                return False
            self.used += amount
            self.peak = max(self.peak, self.used)
            return True

    def release(self, amount: int) -> None:
        with self._lock:
            self.used -= amount

    def refusal(self) -> ServeError:
        return ServeError(503, "too many request bytes in flight; retry later",
                          {"Retry-After": str(RETRY_AFTER_S)}, overloaded=True)

    @contextlib.contextmanager
    def holding(self, amount: int) -> Iterator[None]:
        """Hold `amount` bytes (when over SMALL_BODY_BYTES) for the block, or refuse."""
        counted = amount if amount > SMALL_BODY_BYTES else 0
        if not self.reserve(counted):
            raise self.refusal()
        try:
            yield
        finally:
            self.release(counted)
