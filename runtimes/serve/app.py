"""The HTTP application: Open Inference Protocol v2 routes, `/v1/classify` and `/metrics`.

Routes (KServe v2 / Triton HTTP): `GET /v2/health/live`, `GET /v2/health/ready`, `GET /v2`,
`GET /v2/models/{name}[/versions/{v}]`, `.../ready`, `.../config`, `POST .../infer`,
`POST /v2/repository/index`, `GET /v2/models[/{name}[/versions/{v}]]/stats` (statistics
extension); plus `POST /v1/classify` (an image -> top-k classes) and
`GET /metrics` (Prometheus text format).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
import numpy as np
from fastapi import FastAPI, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from resnext_compiler import __version__
from resnext_compiler.input_contract import InputContract
from resnext_compiler.runtimes.serve.config import ServeConfig
from resnext_compiler.runtimes.serve.errors import ServeError, bad_request, install_error_handlers
from resnext_compiler.runtimes.serve.images import (
    check_image_model,
    decode_image,
    preprocess,
    top_k,
)
from resnext_compiler.runtimes.serve.limits import BodyLimitMiddleware
from resnext_compiler.runtimes.serve.metrics import MetricsMiddleware
from resnext_compiler.runtimes.serve.protocol import (
    InferRequest,
    encode_infer_response,
    parse_infer_request,
    split_body,
)
from resnext_compiler.runtimes.serve.service import SERVER_NAME, InferenceService

PARSE_IN_THREAD_BYTES = 64 * 1024  # bigger JSON headers are parsed off the event loop
# json.loads and building an array from a JSON list hold the GIL for the whole parse, so in a
# thread a 10 MB body still stalls the event loop for a second; bigger ones go to processes
PARSE_IN_PROCESS_BYTES = 1024 * 1024
IMAGE_TYPES = ("image/jpeg", "image/png", "application/octet-stream")


def create_app(service: InferenceService, config: ServeConfig) -> FastAPI:
    """The ASGI app fronting `service` over HTTP (`server.py` builds the service once and hands
    the same one to gRPC; it closes it after uvicorn stops)."""
    parsers = ParserProcesses()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        parsers.close()

    app = FastAPI(title=SERVER_NAME, version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    _add_protocol_routes(app, service, config, parsers)
    _add_classify_route(app, service, config)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(service.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimitMiddleware, max_body_bytes=config.max_body_bytes,
                       in_flight=service.in_flight,
                       body_timeout_s=config.body_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    return app


class ParserProcesses:
    """A process pool for parsing large JSON requests, started on first use."""

    def __init__(self) -> None:
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def get(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing

            # spawn, not fork: the server holds onnxruntime and batcher threads
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=max(1, (os.cpu_count() or 2) // 2),
                mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _add_protocol_routes(app: FastAPI, service: InferenceService, config: ServeConfig,
                         parsers: ParserProcesses) -> None:

    @app.get("/v2/health/live")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def server_ready() -> dict:
        if not service.ready:  # KServe v2: "a 4xx status code indicates false"
            raise ServeError(400, "not ready: shutting down")
        return {"ready": True}

    @app.get("/v2")
    async def server_metadata() -> dict:
        return service.server_metadata()

    @app.post("/v2/repository/index")
    async def repository_index() -> list[dict]:
        return service.repository_index()

    @app.get("/v2/models/stats")
    @app.get("/v2/models/{name}/stats")
    @app.get("/v2/models/{name}/versions/{version}/stats")
    async def model_statistics(name: str | None = None, version: str | None = None) -> dict:
        return service.statistics(name, version)

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None) -> dict:
        entry = service.lookup(name, version)
        return {**entry.metadata(), "parameters": entry.model.metadata}

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None) -> dict:
        entry = service.lookup(name, version)
        if not entry.batcher.accepting:
            raise ServeError(400, f"model {name!r} is not ready: shutting down")
        return {"name": name, "ready": True}

    @app.get("/v2/models/{name}/config")
    @app.get("/v2/models/{name}/versions/{version}/config")
    async def model_config(name: str, version: str | None = None) -> dict:
        return service.lookup(name, version).configuration()

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        entry = service.lookup(name, version)
        model = entry.model
        body = _decode_content(await request.body(), request.headers.get("content-encoding"),
                               config.max_body_bytes)

        async def parse() -> InferRequest:
            header, binary = split_body(body,
                                        request.headers.get("inference-header-content-length"))
            arguments = (header, binary, model.input, model.outputs, model.max_batch,
                         model.static_batch)
            if len(header) > PARSE_IN_PROCESS_BYTES:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(parsers.get(), parse_infer_request, *arguments)
            if len(header) > PARSE_IN_THREAD_BYTES:
                return await run_in_threadpool(parse_infer_request, *arguments)
            return parse_infer_request(*arguments)

        parsed, results = await service.infer(entry, parse)
        infos = {info.name: info for info in model.outputs}
        payload, headers = encode_infer_response(model.name, model.version, parsed, results,
                                                 infos, entry.labels)
        return Response(payload, headers=headers)


def _decode_content(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo gzip/deflate request compression (tritonclient's option), never past `limit`."""
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding.strip().lower())
    if wbits is None:
        raise ServeError(415, f"unsupported Content-Encoding {encoding[:40]!r} (gzip, deflate)")
    decompressor = zlib.decompressobj(wbits)
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise bad_request(f"corrupt {encoding} body: {exc}") from None
    if len(data) > limit or decompressor.unconsumed_tail:
        raise ServeError(413, f"decompressed body exceeds the {limit}-byte limit")
    if not decompressor.eof:
        raise bad_request(f"truncated {encoding} body")
    return data


def _add_classify_route(app: FastAPI, service: InferenceService, config: ServeConfig) -> None:
    # decoded images are large (up to max_image_pixels x 3 bytes): one decode per core at a time
    decoders = anyio.CapacityLimiter(os.cpu_count() or 1)

    @app.post("/v1/classify")
    async def classify(request: Request, model: str | None = Query(None),
                       top_k_count: int = Query(config.default_top_k, alias="top_k", ge=1,
                                                le=10000)) -> dict:
        served = service.served
        if model is None and len(served) > 1:
            raise bad_request(f"several models are served; choose one with ?model= "
                              f"({', '.join(sorted(served))})")
        entry = service.lookup(model or next(iter(served)))
        loaded = entry.model
        check_image_model(loaded.contract)
        if loaded.static_batch not in (None, 1):
            raise bad_request(f"model {loaded.name!r} has a fixed batch of "
                              f"{loaded.static_batch}; classify sends one image")
        data = await _image_bytes(request)
        pixels = await anyio.to_thread.run_sync(_prepare, data, config.max_image_pixels,
                                                loaded.contract, loaded.input_dtype,
                                                limiter=decoders)
        outputs = await entry.batcher.submit(pixels)
        predictions = top_k(outputs[0][0], top_k_count, entry.labels)
        answer = {"model": loaded.name, "model_version": loaded.version}
        if entry.labels:
            answer["label"] = predictions[0]["label"]
        return {**answer, "predictions": predictions}


def _prepare(data: bytes, max_pixels: int, contract: InputContract,
             dtype: np.dtype) -> np.ndarray:
    return preprocess(decode_image(data, max_pixels, contract), contract, dtype)


async def _image_bytes(request: Request) -> bytes:
    """The uploaded image: a multipart field `file` (or `image`), or a raw image body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in IMAGE_TYPES:
        return await request.body()
    if content_type != "multipart/form-data":
        raise ServeError(415, "send the image as multipart/form-data (field 'file') or as an "
                         "image/jpeg or image/png body")
    try:
        form = await request.form(max_files=1, max_fields=16)
    except Exception as exc:  # python-multipart's parse errors have no common base class
        raise bad_request(f"malformed multipart body: {getattr(exc, 'detail', exc)}") from None
    upload = form.get("file") or form.get("image")
    if not isinstance(upload, UploadFile):
        raise bad_request("multipart body has no file field named 'file' (or 'image')")
    try:
        return await upload.read()
    finally:
        await form.close()
