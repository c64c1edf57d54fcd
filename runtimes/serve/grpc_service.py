"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, as Triton serves it).

Message types and the service's name come from `tritonclient.grpc.service_pb2`: NVIDIA
generates it from Triton's `grpc_service.proto`, the protocol's reference definition, so this
server and `tritonclient.grpc` agree field for field. Handlers take the request's bytes and
decode them themselves, so a message that does not parse is INVALID_ARGUMENT. The
servicer decodes each call into the same values the HTTP routes use and calls the same
`InferenceService`: one model, one batching queue, one set of statistics and metrics.

Refusals map to gRPC status codes as Triton's do: INVALID_ARGUMENT for a malformed request,
NOT_FOUND for an unknown model or version, UNAVAILABLE while shutting down,
RESOURCE_EXHAUSTED for a full queue, for a message over `max_body_bytes` (enforced by gRPC
itself, before the message is decoded) and for a message that would pass the bytes-in-flight
budget HTTP bodies share (`in_flight.InFlight`); the retriable ones carry `retry-after` and
`grpc-retry-pushback-ms` trailers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from tritonclient.grpc import service_pb2
from tritonclient.grpc import service_pb2 as pb

from resnext_compiler.errors import UserError
from resnext_compiler.runtimes.serve.batching import RETRY_AFTER_S
from resnext_compiler.runtimes.serve.config import ServeConfig
from resnext_compiler.runtimes.serve.datatypes import V2_TO_NUMPY
from resnext_compiler.runtimes.serve.errors import ServeError, bad_request
from resnext_compiler.runtimes.serve.model import LoadedModel
from resnext_compiler.runtimes.serve.protocol import (
    InferRequest,
    check_input,
    check_no_shared_memory,
    requested_output,
    response_tensors,
    tensor_bytes,
)
from resnext_compiler.runtimes.serve.service import InferenceService

log = logging.getLogger("resnext_compiler.serve")

# typed `InferTensorContents` field of each datatype (FP16 has none: raw_input_contents only)
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVED_METHODS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
                  "ModelInfer", "ModelStatistics", "ModelConfig", "RepositoryIndex")
PEER_WINDOW_S = 1.0
BUDGETED_METHODS = ("ModelInfer",)  # read only when the bytes-in-flight budget allows
RECEIVE_POLL_S = 0.01  # a client that called within this window counts as connected


def status_code(error: ServeError) -> grpc.StatusCode:
    """The gRPC code for a refusal the HTTP side answers with `error.status`."""
    if error.status == 404:
        return grpc.StatusCode.NOT_FOUND
    if error.status == 413:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if error.status == 408:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if error.status == 503:
        return (grpc.StatusCode.RESOURCE_EXHAUSTED if error.overloaded
                else grpc.StatusCode.UNAVAILABLE)
    if 400 <= error.status < 500:
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


class PeerTracker:
    """Clients (gRPC peers: one per channel) that called recently, for the batcher.

    gRPC multiplexes calls on long-lived HTTP/2 connections that grpcio does not report, so a
    client counts as connected while its last call is under `PEER_WINDOW_S` old.
    """

    def __init__(self, window_s: float = PEER_WINDOW_S):
        self.window_s = window_s
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def saw(self, peer: str) -> None:
        with self._lock:
            self._seen[peer] = time.monotonic()

    def count(self) -> int:
        cutoff = time.monotonic() - self.window_s
        with self._lock:
            for peer in [p for p, seen in self._seen.items() if seen < cutoff]:
                del self._seen[peer]
            return len(self._seen)


def _rpc(request_type: type[Message]) -> Callable:
    """Decode the request (bytes that do not parse are INVALID_ARGUMENT, not grpcio's
    INTERNAL), count the call in the metrics and turn refusals into status codes."""

    def wrap(method: Callable[..., Awaitable[Message]]) -> Callable[..., Awaitable[Message]]:
        name = method.__name__

        @functools.wraps(method)
        async def handler(self: InferenceServicer, raw: bytes | Any,
                          context: grpc.aio.ServicerContext) -> Message:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                if not isinstance(raw, bytes):  # a method served as stream-unary: read it here
                    raw = await self.receive(context)
                # the message is held (and decoded) against the HTTP side's budget too
                with self.service.in_flight.holding(len(raw)):
                    try:
                        request = request_type.FromString(raw)
                    except DecodeError as exc:
                        raise bad_request(f"malformed {request_type.__name__}: {exc}") from None
                    del raw
                    return await method(self, request, context)
            except ServeError as exc:
                code = status_code(exc)
                if "Retry-After" in exc.headers:  # seconds, as HTTP's header; gRPC's pushback
                    seconds = exc.headers["Retry-After"]
                    context.set_trailing_metadata((
                        ("retry-after", seconds),
                        ("grpc-retry-pushback-ms", str(int(float(seconds) * 1000)))))
                await context.abort(code, exc.message)
            except Exception as exc:  # a server fault, not the client's: logged, INTERNAL
                log.exception("internal error in gRPC %s", name, exc_info=exc)
                code = grpc.StatusCode.INTERNAL
                await context.abort(code, f"internal error: {type(exc).__name__}")
            finally:
                metrics = self.service.metrics
                metrics.grpc_requests.labels(name, code.name).inc()
                metrics.grpc_latency.labels(name).observe(time.perf_counter() - started)

        return handler

    return wrap


class InferenceServicer:
    """The protocol's health, metadata, inference and statistics calls over one service."""

    def __init__(self, service: InferenceService, peers: PeerTracker | None = None):
        self.service = service
        self.peers = peers or PeerTracker()

    async def receive(self, context: grpc.aio.ServicerContext) -> bytes:
        """The call's one message, read only once the bytes-in-flight budget can hold a
        message of the largest size allowed (its real size is unknown until it is read: HTTP
        has a Content-Length, gRPC does not). Until then gRPC's flow control keeps the
        message at the client; after RETRY_AFTER_S of waiting the call is refused."""
        config = self.service.config
        in_flight = self.service.in_flight
        largest = config.max_body_bytes
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETRY_AFTER_S
        while not in_flight.reserve(largest):
            if loop.time() > deadline:
                raise in_flight.refusal()
            await asyncio.sleep(RECEIVE_POLL_S)
        try:
            raw = await asyncio.wait_for(context.read(), config.body_timeout_s)
        except TimeoutError:
            raise ServeError(408, f"request message not received within "
                             f"{config.body_timeout_s:g} s (--body-timeout-s)") from None
        finally:
            in_flight.release(largest)
        if not isinstance(raw, bytes):
            raise bad_request("the call carried no request message")
        return raw

    @_rpc(pb.ServerLiveRequest)
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any  # noqa: N802
                         ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_rpc(pb.ServerReadyRequest)
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any  # noqa: N802
                          ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.ready)

    @_rpc(pb.ModelReadyRequest)
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any  # noqa: N802
                         ) -> pb.ModelReadyResponse:
        try:
            entry = self.service.lookup(request.name, request.version or None)
        except ServeError:  # as Triton: an unknown model or version is not ready
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=entry.batcher.accepting)

    @_rpc(pb.ServerMetadataRequest)
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any  # noqa: N802
                             ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self.service.server_metadata())

    @_rpc(pb.ModelMetadataRequest)
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any  # noqa: N802
                            ) -> pb.ModelMetadataResponse:
        entry = self.service.lookup(request.name, request.version or None)
        return json_format.ParseDict(entry.metadata(), pb.ModelMetadataResponse())

    @_rpc(pb.ModelConfigRequest)
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any  # noqa: N802
                          ) -> pb.ModelConfigResponse:
        entry = self.service.lookup(request.name, request.version or None)
        return json_format.ParseDict({"config": entry.configuration()},
                                     pb.ModelConfigResponse())

    @_rpc(pb.RepositoryIndexRequest)
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest,  # noqa: N802
                              context: Any) -> pb.RepositoryIndexResponse:
        models = [entry for entry in self.service.repository_index()
                  if not request.ready or entry["state"] == "READY"]
        return json_format.ParseDict({"models": models}, pb.RepositoryIndexResponse())

    @_rpc(pb.ModelStatisticsRequest)
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest,  # noqa: N802
                              context: Any) -> pb.ModelStatisticsResponse:
        statistics = self.service.statistics(request.name or None, request.version or None)
        return json_format.ParseDict(statistics, pb.ModelStatisticsResponse())

    @_rpc(pb.ModelInferRequest)
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any  # noqa: N802
                         ) -> pb.ModelInferResponse:
        self.peers.saw(context.peer())
        metrics = self.service.metrics
        metrics.inference_in_progress += 1
        try:
            entry = self.service.lookup(request.model_name, request.model_version or None)
            model = entry.model
            parsed, results = await self.service.infer(
                entry, lambda: parse_infer_request(request, model))
        finally:
            metrics.inference_in_progress -= 1
        response = pb.ModelInferResponse(model_name=model.name, model_version=model.version,
                                         id=request.id)
        infos = {info.name: info for info in model.outputs}
        for wanted, datatype, array in response_tensors(parsed, results, infos, entry.labels):
            response.outputs.add(name=wanted.name, datatype=datatype, shape=array.shape)
            response.raw_output_contents.append(tensor_bytes(array, datatype))
        return response


def parse_infer_request(request: pb.ModelInferRequest, model: LoadedModel) -> InferRequest:
    """Check a `ModelInferRequest` against the model; typed contents or raw_input_contents."""
    check_no_shared_memory(request.parameters)
    if len(request.inputs) != 1:
        raise bad_request(f"inputs must hold one tensor, {model.input.name!r}; got "
                          f"{len(request.inputs)}")
    tensor = request.inputs[0]
    check_no_shared_memory(tensor.parameters)
    shape = check_input(tensor.name, tensor.datatype, list(tensor.shape), model.input,
                        model.max_batch, model.static_batch)
    dtype = V2_TO_NUMPY[model.input.datatype]
    count = math.prod(shape)
    if request.raw_input_contents:
        if tensor.HasField("contents"):
            raise bad_request(f"input {tensor.name!r} has both contents and raw_input_contents")
        if len(request.raw_input_contents) != 1:
            raise bad_request(f"{len(request.raw_input_contents)} raw_input_contents for 1 input")
        raw = request.raw_input_contents[0]
        if len(raw) != count * dtype.itemsize:
            raise bad_request(f"input {tensor.name!r}: raw_input_contents has {len(raw)} bytes; "
                              f"shape {list(shape)} of {tensor.datatype} needs "
                              f"{count * dtype.itemsize}")
        inputs = np.frombuffer(raw, dtype=dtype).reshape(shape)
    else:
        inputs = _typed_contents(tensor, shape, dtype, count)
    outputs = []
    for wanted in request.outputs:
        check_no_shared_memory(wanted.parameters)
        class_count = 0
        if "classification" in wanted.parameters:
            parameter = wanted.parameters["classification"]
            if parameter.WhichOneof("parameter_choice") != "int64_param":
                raise bad_request(f"output {wanted.name!r}: classification must be an int64 "
                                  "parameter")
            class_count = parameter.int64_param
        outputs.append(requested_output(wanted.name, class_count, True, model.outputs))
    if not outputs:
        outputs = [requested_output(out.name, 0, True, model.outputs) for out in model.outputs]
    return InferRequest(id=request.id or None, inputs=inputs, outputs=outputs)


def _typed_contents(tensor: pb.ModelInferRequest.InferInputTensor, shape: tuple[int, ...],
                    dtype: np.dtype, count: int) -> np.ndarray:
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise bad_request(f"input {tensor.name!r}: {tensor.datatype} has no typed contents "
                          "field; send it in raw_input_contents")
    given = [descriptor.name for descriptor, _ in tensor.contents.ListFields()]
    if not given:
        raise bad_request(f"input {tensor.name!r} has neither contents nor raw_input_contents")
    if given != [field]:
        raise bad_request(f"input {tensor.name!r}: {tensor.datatype} data goes in "
                          f"contents.{field}, got {', '.join(given)}")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise bad_request(f"input {tensor.name!r}: contents.{field} has {len(values)} "
                          f"elements, shape {list(shape)} needs {count}")
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(values).astype(dtype).reshape(shape)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def method_handlers(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """The service's methods, taking request bytes (decoded by `_rpc`); methods we do not
    implement (model control, shared memory, ...) get gRPC's UNIMPLEMENTED. ModelInfer, the
    one call with large messages, is registered as stream-unary (the same on the wire: one
    message each way) so that its message is read only when the budget allows
    (`InferenceServicer.receive`)."""
    handlers = {}
    for name in SERVED_METHODS:
        kind = (grpc.stream_unary_rpc_method_handler if name in BUDGETED_METHODS
                else grpc.unary_unary_rpc_method_handler)
        handlers[name] = kind(getattr(servicer, name), request_deserializer=None,
                              response_serializer=_serialize)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def grpc_options(config: ServeConfig) -> list[tuple[str, int]]:
    return [
        # the HTTP body limit, enforced by gRPC before a message is decoded
        ("grpc.max_receive_message_length", config.max_body_bytes),
        ("grpc.max_send_message_length", -1),
        # grpcio binds with SO_REUSEPORT by default: a second server would share the port
        ("grpc.so_reuseport", 0),
    ]


async def start_grpc_server(service: InferenceService, host: str, port: int
                            ) -> tuple[grpc.aio.Server, int]:
    """A started gRPC server for `service` on host:port (0: any free); returns it and the port.

    Call from the event loop that runs the HTTP side; it is stopped (in-flight calls finish
    first) before the batchers close.
    """
    config = service.config
    server = grpc.aio.server(options=grpc_options(config))
    peers = PeerTracker()
    server.add_generic_rpc_handlers((method_handlers(InferenceServicer(service, peers)),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise UserError(f"cannot listen for gRPC on {address}: {exc}") from None
    if bound == 0:
        raise UserError(f"cannot listen for gRPC on {address}")
    await server.start()
    service.connection_counters.append(peers.count)

    async def stop() -> None:
        await server.stop(config.graceful_timeout_s)

    service.before_close.append(stop)
    return server, bound
