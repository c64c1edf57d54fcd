"""Every bound the HTTP server puts on a client (the bytes-in-flight budget is the service's).

- Request bodies: a declared `Content-Length` over `max_body_bytes` is refused at once,
  unread (413); a chunked body is counted while it streams and refused as soon as it passes
  the limit. Bodies that fit are buffered and replayed to the app.
- Bytes in flight: all buffered request bodies over `SMALL_BODY_BYTES` together stay under
  `max_inflight_bytes`, one budget shared with gRPC's messages (`in_flight.InFlight`); a request
  that would pass it is refused with 503 + Retry-After before its body is read. Small
  requests (health checks, one image, one 224x224 tensor) are not counted, so clients that
  stall large bodies cannot lock out everyone else (small bodies are bounded by the body
  timeout).
- Time: a request's headers must arrive within `header_timeout_s` of the connection opening
  (or of the previous response), its body within `body_timeout_s` of the headers; otherwise
  408 and the connection is closed. A client sending one byte a second is dropped.
- Images: the decoded pixels of the source (from its header, before decoding) and of the
  resize target are each at most `max_image_pixels` (`check_pixels`).
- Errors of the HTTP layer itself (malformed request line, bad chunk size, HTTP/0.9) are
  answered with the JSON error body, as the app's own errors are.
- Out of file handles: asyncio already backs off accepting for a second; the log says so once
  per `LOG_EVERY_S` with a count, not once per attempt with a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from resnext_compiler.runtimes.serve.errors import ServeError, error_body
from resnext_compiler.runtimes.serve.in_flight import SMALL_BODY_BYTES, InFlight

log = logging.getLogger("resnext_compiler.serve")
LOG_EVERY_S = 10.0


def ascii_integer(text: str) -> int | None:
    """A non-negative decimal integer of ASCII digits, else None (`'²'.isdigit()` is True)."""
    text = text.strip()
    if not text or len(text) > 20 or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def check_pixels(what: str, width: int, height: int, max_pixels: int) -> None:
    """413 when an image of width x height (source or resize target) is over the limit."""
    if width * height > max_pixels:
        raise ServeError(413, f"{what} is {width}x{height}, more than {max_pixels} pixels "
                         "(--max-image-pixels)")


class BodyLimitMiddleware:
    """413 for bodies over `max_body_bytes`, 400 for a malformed Content-Length, 503 when the
    bodies in flight would pass `max_inflight_bytes`, 408 for a body slower than
    `body_timeout_s`."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, in_flight: InFlight,
                 body_timeout_s: float = 30.0):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.in_flight = in_flight  # the service's: gRPC messages count against it too
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = [value for key, value in scope["headers"] if key == b"content-length"]
        expected = 0
        if declared:
            length = ascii_integer(declared[0].decode("latin-1"))
            if len(declared) > 1 or length is None:
                await refuse(send, 400, "malformed Content-Length header")
                return
            if length > self.max_body_bytes:
                await refuse(send, 413, f"request body of {length} bytes exceeds the "
                             f"{self.max_body_bytes}-byte limit (--max-body-mb)")
                return
            expected = length
        reserved = 0
        try:
            body = bytearray()
            deadline = time.monotonic() + self.body_timeout_s
            while True:
                if max(expected, len(body)) > max(reserved, SMALL_BODY_BYTES):
                    # reserve the declared length at once, a chunked body as it grows
                    want = max(expected, len(body))
                    if not self.in_flight.reserve(want - reserved):
                        busy = self.in_flight.refusal()
                        await refuse(send, busy.status, busy.message,
                                     {k.lower(): v for k, v in busy.headers.items()})
                        return
                    reserved = want
                try:
                    message = await asyncio.wait_for(receive(), deadline - time.monotonic())
                except TimeoutError:
                    await refuse(send, 408, f"request body not received within "
                                 f"{self.body_timeout_s:g} s (--body-timeout-s)")
                    return
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if len(body) > self.max_body_bytes:
                    await refuse(send, 413, f"request body exceeds the {self.max_body_bytes}-"
                                 "byte limit (--max-body-mb)")
                    return
                if not message.get("more_body", False):
                    break
            await self.app(scope, _replay(bytes(body), receive), send)
        finally:
            self.in_flight.release(reserved)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server would

    return replay


def _json_error(message: str) -> bytes:
    return json.dumps(error_body(message)).encode()


async def refuse(send: Send, status: int, message: str,
                 headers: dict[str, str] | None = None) -> None:
    payload = _json_error(message)
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close"), *extra]})
    await send({"type": "http.response.body", "body": payload})


def bounded_h11_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a header deadline and JSON bodies for its own errors."""

    class BoundedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self.conn.our_state is h11.IDLE and self._buffered():
                self._send_json(408, f"request headers not received within "
                                f"{header_timeout_s:g} s")
            self.transport.close()

        def _buffered(self) -> bool:
            return bool(getattr(self.conn, "trailing_data", (b"",))[0])

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._cancel_header_timer()  # the request line and headers are in

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            self._send_json(400, f"malformed HTTP request: {msg.rstrip('.')}")
            self.transport.close()

        def _send_json(self, status: int, message: str) -> None:
            payload = _json_error(message)
            headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                       (b"content-length", str(len(payload)).encode())]
            # the connection may be in an error state: write the response without h11
            head = f"HTTP/1.1 {status} {'Bad Request' if status == 400 else 'Request Timeout'}"
            lines = [head.encode()] + [k + b": " + v for k, v in headers]
            self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + payload)

    return BoundedH11Protocol


class AcceptErrorLog:
    """An event-loop exception handler: 'out of file handles' once per `LOG_EVERY_S`."""

    def __init__(self, every_s: float = LOG_EVERY_S):
        self.every_s = every_s
        self.suppressed = 0
        self.last = -float("inf")

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if "out of system resource" not in str(context.get("message", "")):
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - self.last < self.every_s:
            self.suppressed += 1
            return
        exc = context.get("exception")
        log.error("cannot accept connections: %s (%d more since the last message); retrying "
                  "every second", getattr(exc, "strerror", None) or exc, self.suppressed)
        self.last, self.suppressed = now, 0
