"""HTTP errors as values: every refusal is a 4xx (or 503) with a JSON body `{"error": ...}`.

The body shape is the Open Inference Protocol's error response, which `tritonclient` reads.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("resnext_compiler.serve")


class ServeError(Exception):
    """A request the server refuses, with the status and message the client sees."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 overloaded: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.overloaded = overloaded  # a 503 for load (retry later), not for shutting down

    def __reduce__(self) -> tuple:  # raised in a parser process, re-raised here
        return (ServeError, (self.status, self.message, self.headers))


def bad_request(message: str) -> ServeError:
    return ServeError(400, message)


def error_body(message: str) -> dict[str, str]:
    """The Open Inference Protocol's error response body."""
    return {"error": message}


def error_response(status: int, message: str, headers: dict[str, str] | None = None
                   ) -> JSONResponse:
    return JSONResponse(error_body(message), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Route every failure to a JSON error; FastAPI's 422 for bad parameters becomes 400."""

    async def serve_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServeError)
        return error_response(exc.status, exc.message, exc.headers)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return error_response(400, f"{where}: {first.get('msg', 'invalid request')}")

    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error while serving a request", exc_info=exc)
        return error_response(500, f"internal error: {type(exc).__name__}")

    app.add_exception_handler(ServeError, serve_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)
