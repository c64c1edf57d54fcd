"""Dynamic batching: concurrent requests share one onnxruntime call.

Like Triton's dynamic batcher: the first waiting request opens a batch, which closes when it
holds `max_batch` rows or `max_delay` has passed since it opened. Batches run in one worker
thread, off the event loop (onnxruntime releases the GIL while it computes), and the next
batch gathers while the current one runs. The queue is bounded: a full queue is refused at
once (503 + Retry-After) rather than letting latency grow without limit. Unlike Triton, a batch
stops waiting at once when every open client connection already has a request in it
(`open_connections`), so a lone client does not pay `max_delay` on every request, while many
connected clients still get their full `max_delay` to fill a batch. `close()` stops new
work and lets everything already queued finish (graceful shutdown).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from resnext_compiler.runtimes.serve.errors import ServeError

RETRY_AFTER_S = 1


@dataclass
class _Request:
    inputs: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    queued_at: float = field(default_factory=time.perf_counter)

    @property
    def rows(self) -> int:
        return int(self.inputs.shape[0])


_STOP = object()


class DynamicBatcher:
    """Gathers requests into batches for `run(batch) -> outputs` (all outputs split by row)."""

    def __init__(self, run: Callable[[np.ndarray], list[np.ndarray]], max_batch: int,
                 max_delay_s: float, max_queue: int,
                 on_batch: Callable[[int, float, list[float]], None] | None = None,
                 name: str = "model",
                 open_connections: Callable[[], int] | None = None):
        if max_batch < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_delay >= 0")
        self._run, self.max_batch, self.max_delay_s = run, max_batch, max_delay_s
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._open_connections = open_connections
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0  # requests queued and not yet taken into a batch
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting for a batch (the queue-depth gauge)."""
        return self._waiting

    @property
    def accepting(self) -> bool:
        return not self._closed

    async def submit(self, inputs: np.ndarray) -> list[np.ndarray]:
        """Run `inputs` (rows <= max_batch) in some batch; returns this request's output rows."""
        loop = asyncio.get_running_loop()
        request = _Request(inputs, loop.create_future(), loop)
        with self._lock:
            if self._closed:
                raise ServeError(503, "server is shutting down",
                                 {"Retry-After": str(RETRY_AFTER_S)})
            if self._waiting >= self.max_queue:
                raise ServeError(503, f"queue full ({self.max_queue} requests waiting); retry "
                                 "later", {"Retry-After": str(RETRY_AFTER_S)}, overloaded=True)
            self._waiting += 1
            self._queue.put(request)
        return await request.future

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish the queued ones, stop the worker thread."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        self._thread.join(timeout)

    def _take(self, block_until: float | None) -> object:
        """The next queued item, or None when `block_until` passes first."""
        try:
            if block_until is None:
                item = self._queue.get()
            else:
                item = self._queue.get(timeout=max(block_until - time.monotonic(), 0.0))
        except queue.Empty:
            return None
        if item is not _STOP:
            with self._lock:
                self._waiting -= 1
        return item

    def _work(self) -> None:
        carried: object = None
        while True:
            first = carried if carried is not None else self._take(None)
            carried = None
            if first is _STOP:
                return
            assert isinstance(first, _Request)
            batch, rows = [first], first.rows
            deadline = time.monotonic() + self.max_delay_s
            while rows < self.max_batch:
                if self._nobody_else_coming(len(batch)):
                    break
                item = self._take(deadline)
                if item is None:
                    break
                if item is _STOP or rows + item.rows > self.max_batch:  # type: ignore[union-attr]
                    carried = item
                    break
                assert isinstance(item, _Request)
                batch.append(item)
                rows += item.rows
            self._execute(batch)

    def _nobody_else_coming(self, batched: int) -> bool:
        """True when every open client connection already has its request in this batch."""
        return (self._open_connections is not None and self._queue.empty()
                and self._open_connections() <= batched)

    def _execute(self, batch: list[_Request]) -> None:
        live = [request for request in batch if not request.future.done()]  # client gone: skip
        if not live:
            return
        started = time.perf_counter()
        try:
            inputs = live[0].inputs if len(live) == 1 else np.concatenate(
                [request.inputs for request in live])
            outputs = self._run(inputs)
        except Exception as exc:  # a model failure fails this batch's requests, not the server
            for request in live:
                _deliver(request, _set_exception, exc)
            return
        if self._on_batch is not None:
            self._on_batch(int(inputs.shape[0]), time.perf_counter() - started,
                           [started - request.queued_at for request in live])
        start = 0
        for request in live:
            stop = start + request.rows
            rows = [output[start:stop] for output in outputs]
            _deliver(request, _set_result, rows)
            start = stop


def _deliver(request: _Request, setter: Callable, value: object) -> None:
    try:
        request.loop.call_soon_threadsafe(setter, request.future, value)
    except RuntimeError:  # the event loop is gone (server stopped): nobody is waiting
        pass


def _set_result(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
