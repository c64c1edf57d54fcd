"""gRPC and HTTP share one bytes-in-flight budget, owned by the inference service: under the
same load either front end refuses (RESOURCE_EXHAUSTED / 503) with a retry hint, and a body
held by one counts against the other."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from hostile_inputs import MiB
from test_hostile_server import serve_process
from test_serve_helpers import load_tiny, running_server, write_tiny_onnx
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc


def infer_request(rows: int) -> pb.ModelInferRequest:
    data = np.zeros((rows, 3, 32, 32), np.float32)
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="input", datatype="FP32", shape=list(data.shape))
    request.raw_input_contents.append(data.tobytes())
    return request


def call(target: str, request: pb.ModelInferRequest) -> tuple[grpc.StatusCode, dict]:
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1),
                                                ("grpc.max_receive_message_length", -1)]
                               ) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            _, answer = stub.ModelInfer.with_call(request, timeout=120)
            return grpc.StatusCode.OK, dict(answer.trailing_metadata() or ())
        except grpc.RpcError as error:
            return error.code(), dict(error.trailing_metadata() or ())


def wait_for_bytes_in_flight(url: str, reached: Callable[[float], bool]) -> None:
    """Until the server's own count of bytes in flight satisfies `reached` (not a sleep)."""
    deadline = time.monotonic() + 60
    while True:
        text = httpx.get(f"{url}/metrics", timeout=30).text
        held = float(re.search(r"^resnext_serve_request_bytes_in_flight (\S+)$", text,
                               re.MULTILINE).group(1))
        if reached(held):
            return
        assert time.monotonic() < deadline, held
        time.sleep(0.05)


def test_an_http_body_in_flight_counts_against_grpc(tmp_path: Path) -> None:
    """A stalled 100 MiB HTTP upload holds 100 of the 128 MiB: a 40 MiB gRPC call is refused
    with RESOURCE_EXHAUSTED and a retry hint; once the upload is gone, it is served."""
    model = load_tiny(write_tiny_onnx(tmp_path / "tiny.onnx"), max_batch=4096)
    with running_server([model], grpc_port=0, max_body_bytes=110 * MiB,
                        max_inflight_bytes=128 * MiB, max_batch=4096) as server:
        upload = socket.create_connection(("127.0.0.1", server.port))
        upload.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Type: application/octet-stream\r\n"
                       b"Content-Length: " + str(100 * MiB).encode() + b"\r\n\r\n" + b"x" * 1024)
        url = f"http://127.0.0.1:{server.port}"
        wait_for_bytes_in_flight(url, lambda held: held == 100 * MiB)
        rows = 40 * MiB // (3 * 32 * 32 * 4)
        code, trailers = call(server.grpc_target, infer_request(rows))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert trailers.get("retry-after") == "1"
        assert trailers.get("grpc-retry-pushback-ms") == "1000"
        upload.close()
        wait_for_bytes_in_flight(url, lambda held: held == 0)
        code, _ = call(server.grpc_target, infer_request(rows))
        assert code == grpc.StatusCode.OK


# Inference of a large batch held for HOLD_S seconds, several times RETRY_AFTER_S (1 s), the
# longest a gRPC call waits for the budget before it is refused: the calls that arrive while
# the budget is full are refused by the bound, whatever the machine's speed or load.
HOLD_S = 4
SLOW_INFERENCE = f"""
import time
from resnext_compiler.runtimes.serve.model import LoadedModel
run = LoadedModel.run
def held(self, batch):
    if len(batch) > 1:  # not the one-row warm-up
        time.sleep({HOLD_S})
    return run(self, batch)
LoadedModel.run = held
"""


@pytest.mark.slow
def test_concurrent_large_grpc_calls_are_bounded_like_http(tmp_path: Path) -> None:
    """16 concurrent 40 MiB ModelInfer calls against a 128 MiB budget (each message read
    reserves the 64 MiB a message may have): the server's own count of bytes in flight
    peaks above one message and never above the budget, the calls that find it full are
    refused with RESOURCE_EXHAUSTED + retry hint, none fails otherwise, every byte is given
    back, and the server's peak memory stays bounded."""
    model = write_tiny_onnx(tmp_path / "tiny.onnx")
    with serve_process(model, "--grpc-port", "0", "--max-body-mb", "64",
                       "--max-inflight-mb", "128", "--max-batch", "4096",
                       "--threads", "1", prelude=SLOW_INFERENCE) as running:
        target = running.grpc_target()
        request = infer_request(40 * MiB // (3 * 32 * 32 * 4))
        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(lambda _: call(target, request), range(16)))
        codes = [code for code, _ in outcomes]
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        refused = [trailers for code, trailers in outcomes
                   if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert refused and codes.count(grpc.StatusCode.OK) >= 2, codes
        assert all(trailers.get("retry-after") == "1" for trailers in refused)
        peak = running.metric("resnext_serve_request_bytes_in_flight_peak")
        assert 2 * 40 * MiB <= peak <= 128 * MiB, peak / MiB
        assert running.metric("resnext_serve_request_bytes_in_flight") == 0
        assert running.peak_rss_kib() * 1024 < 2048 * MiB, running.peak_rss_kib()
