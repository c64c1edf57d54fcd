"""Running the server: in the foreground (the CLI) or in a thread (tests, benchmark).

The `InferenceService` is built here, once, and handed to both front ends: the HTTP app
(`app.create_app`) under uvicorn and, with `--grpc-port`, the gRPC server in uvicorn's event
loop. After uvicorn stops, the service is closed: the gRPC server stops (in-flight calls
finish), then the batchers.

The listening socket is bound here, before uvicorn starts, so a busy port or a bad host is a
`UserError` (exit 2) instead of uvicorn's own exit. On SIGINT/SIGTERM uvicorn stops accepting
connections and lets in-flight requests finish (up to `graceful_timeout_s`); then the
service drains and stops the batchers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING

from resnext_compiler.artifact_format import CONFIG_FILE
from resnext_compiler.errors import UserError, sanitise
from resnext_compiler.runtimes.serve.config import ServeConfig

if TYPE_CHECKING:  # onnxruntime is imported only when models are loaded
    from fastapi import FastAPI

    from resnext_compiler.runtimes.serve.model import LoadedModel
    from resnext_compiler.runtimes.serve.service import InferenceService

log = logging.getLogger("resnext_compiler.serve")


def load_models(model_path: Path, config: ServeConfig) -> tuple[list, dict[str, list[str]]]:
    """Load every model under `model_path` and the class names of each of them: `--labels`,
    else a Triton model's label_filename, else the names its ONNX metadata records."""
    from resnext_compiler.runtimes.serve.labels import load_labels
    from resnext_compiler.runtimes.serve.model import LoadedModel
    from resnext_compiler.runtimes.serve.repository import find_models

    models, labels = [], {}
    for source in find_models(model_path):
        model = LoadedModel(source, config.device, config.max_batch, config.intra_op_threads,
                            config.max_memory_bytes)
        models.append(model)
        path = config.labels or source.labels_path
        if config.labels is not None:
            labels[model.name] = load_labels(config.labels, model.outputs[0].shape[-1])
        elif source.labels_path is not None:
            labels[model.name] = load_labels(source.labels_path, model.outputs[0].shape[-1],
                                             source.folder, f"{CONFIG_FILE}: label_filename")
        elif model.contract.labels is not None:
            labels[model.name] = list(model.contract.labels)
        announce_contract(model, labels.get(model.name), path)
    return models, labels


def announce_contract(model: LoadedModel, labels: list[str] | None = None,
                      labels_path: Path | None = None) -> None:
    """Say once, at start-up, how /v1/classify prepares images for `model` and which class
    names it answers with (a labels file's, where one is given, over the model's own)."""
    contract = model.contract.with_labels(labels) if labels is not None else model.contract
    # one record per line: each line's names are escaped (newlines too) by the log filter
    if model.contract_recorded:
        log.info("model %s input contract (from the model file):", model.name)
    else:
        log.warning("model %s records no input contract; /v1/classify uses the defaults "
                    "(docs/serving.md):", model.name)
    for line in contract.describe():
        if labels_path is not None and line.startswith("classes"):
            log.info("  %s (from %s)", sanitise(line), labels_path)
        else:
            log.info("  %s", sanitise(line))


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port)."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET  # a host name: resolved by bind()
    # proto=IPPROTO_TCP: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP;
    # without it, Nagle + delayed ACK add 40 ms to every response written in two parts
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def front_ends(models: list[LoadedModel], config: ServeConfig,
               labels: dict[str, list[str]] | None = None
               ) -> tuple[InferenceService, FastAPI]:
    """The one `InferenceService` for `models` and the HTTP app fronting it; gRPC, when asked
    for, is started on the same service by `_serve`."""
    from resnext_compiler.runtimes.serve.app import create_app
    from resnext_compiler.runtimes.serve.service import InferenceService

    service = InferenceService(models, config, labels)
    return service, create_app(service, config)


def _uvicorn_server(app, service: InferenceService, config: ServeConfig,  # noqa: ANN001
                    log_config: dict | None):  # noqa: ANN202
    import uvicorn

    from resnext_compiler.runtimes.serve.limits import AcceptErrorLog, bounded_h11_protocol

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:  # noqa: ANN001 - uvicorn's signature
            asyncio.get_running_loop().set_exception_handler(AcceptErrorLog())
            await super().startup(sockets)

    settings = uvicorn.Config(app, log_level=config.log_level, access_log=False,
                              timeout_graceful_shutdown=int(config.graceful_timeout_s),
                              lifespan="on", log_config=log_config, server_header=False,
                              http=bounded_h11_protocol(config.header_timeout_s))
    server = Server(settings)
    _count_connections(service, server)
    return server


def _count_connections(service: InferenceService, server: object) -> None:
    """Let the batchers see uvicorn's open connections (uvicorn.Server.server_state)."""
    state = getattr(server, "server_state", None)
    if state is not None and hasattr(state, "connections"):
        service.connection_counters.append(lambda: len(state.connections))


async def _serve(server, sock: socket.socket, service: InferenceService,  # noqa: ANN001
                 config: ServeConfig, on_grpc_port: Callable[[int], None] | None = None
                 ) -> None:
    """uvicorn on `sock` and, with `config.grpc_port`, gRPC in the same event loop, both on
    `service`; once uvicorn has stopped (in-flight requests finished), the service closes."""
    try:
        if config.grpc_port is not None:
            from resnext_compiler.runtimes.serve.grpc_service import start_grpc_server

            _, port = await start_grpc_server(service, config.host, config.grpc_port)
            if on_grpc_port is not None:
                on_grpc_port(port)
        await server.serve(sockets=[sock])
    finally:
        await service.close()


def _run_loop(server, main: Coroutine) -> None:  # noqa: ANN001
    """Run `main` in the event loop uvicorn would have chosen (uvloop when installed)."""
    loop_factory = getattr(server.config, "get_loop_factory", lambda: None)()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main)


def serve(model_path: Path, config: ServeConfig) -> None:
    """Load, bind, serve until interrupted (the `resnext-compile serve` command)."""
    import uvicorn.config

    models, labels = load_models(model_path, config)
    sock = bind_socket(config.host, config.port)
    if not ipaddress.ip_address(sock.getsockname()[0]).is_loopback:
        log.warning("listening on %s, reachable from other machines; the server has no "
                    "authentication", config.host)
    for model in models:
        log.info("serving %s v%s on %s (max batch %d, max delay %g ms) at http://%s:%d/v2/models/"
                 "%s", model.name, model.version, model.provider, model.max_batch,
                 config.max_delay_ms, config.host, sock.getsockname()[1], model.name)

    def grpc_started(port: int) -> None:
        log.info("gRPC (inference.GRPCInferenceService) on %s:%d", config.host, port)

    service, app = front_ends(models, config, labels)
    server = _uvicorn_server(app, service, config, uvicorn.config.LOGGING_CONFIG)
    _run_loop(server, _serve(server, sock, service, config, grpc_started))


class BackgroundServer:
    """`models` served by a real uvicorn server on 127.0.0.1 and a free port, in a thread
    (`with` block), built as `serve` builds it (`front_ends`).

    With `config.grpc_port` set (0: a free port), the same service is also served over gRPC;
    `grpc_target` is then its `host:port`.
    """

    def __init__(self, models: list[LoadedModel], config: ServeConfig | None = None,
                 labels: dict[str, list[str]] | None = None):
        self.config = config or ServeConfig(log_level="warning")
        self.service, self.app = front_ends(models, self.config, labels)
        self._server = _uvicorn_server(self.app, self.service, self.config, None)
        self._socket = bind_socket("127.0.0.1", 0)
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_port: int | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="uvicorn", daemon=True)

    @property
    def grpc_target(self) -> str:
        assert self.grpc_port is not None, "started without config.grpc_port"
        return f"127.0.0.1:{self.grpc_port}"

    def _run(self) -> None:
        def started(port: int) -> None:
            self.grpc_port = port

        try:
            _run_loop(self._server, _serve(self._server, self._socket, self.service,
                                           self.config, started))
        except BaseException as exc:  # reported by __enter__
            self._failure = exc

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start: {self._failure!r}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30) -> None:
        """Graceful shutdown, as on SIGTERM: in-flight requests finish first."""
        self._server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()

    @property
    def stopped(self) -> bool:
        return not self._thread.is_alive()

    def __exit__(self, *_: object) -> None:
        self.stop()
