"""Request-body size limit, enforced before the body is read (ASGI middleware).

A declared `Content-Length` over the limit is refused at once, unread; a body without one
(chunked) is counted while it streams and refused as soon as it passes the limit. Bodies that
fit are buffered and replayed to the app, so handlers never see more than the limit.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from resnext_compiler.runtimes.serve.errors import error_body


class BodyLimitMiddleware:
    """413 for bodies over `max_body_bytes`, 400 for a malformed Content-Length."""

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = [value for key, value in scope["headers"] if key == b"content-length"]
        if declared:
            text = declared[0].decode("latin-1").strip()
            if len(declared) > 1 or not text.isdigit():
                await _refuse(send, 400, "malformed Content-Length header")
                return
            if int(text) > self.max_body_bytes:
                await _refuse(send, 413, f"request body of {int(text)} bytes exceeds the "
                              f"{self.max_body_bytes}-byte limit")
                return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await _refuse(send, 413, f"request body exceeds the {self.max_body_bytes}-byte "
                              "limit")
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server would

    return replay


async def _refuse(send: Send, status: int, message: str) -> None:
    payload = json.dumps(error_body(message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})
