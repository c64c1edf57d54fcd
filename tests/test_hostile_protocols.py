"""gRPC and HTTP share one bytes-in-flight budget, owned by the inference service: under the
same load either front end refuses (RESOURCE_EXHAUSTED / 503) with a retry hint, and a body
held by one counts against the other."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from hostile_inputs import MiB
from test_hostile_server import serve_process
from test_serve_cli import free_port
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
        time.sleep(0.5)
        rows = 40 * MiB // (3 * 32 * 32 * 4)
        code, trailers = call(server.grpc_target, infer_request(rows))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert trailers.get("retry-after") == "1"
        assert trailers.get("grpc-retry-pushback-ms") == "1000"
        upload.close()
        time.sleep(0.5)
        code, _ = call(server.grpc_target, infer_request(rows))
        assert code == grpc.StatusCode.OK


@pytest.mark.slow
def test_concurrent_large_grpc_calls_are_bounded_like_http(tmp_path: Path) -> None:
    """16 concurrent 40 MiB ModelInfer calls against a 128 MiB budget: some are refused with
    RESOURCE_EXHAUSTED + retry hint, none fails otherwise, and the server's peak memory stays
    bounded (at most 128 MiB of messages are read at once; the rest is inference)."""
    model = write_tiny_onnx(tmp_path / "tiny.onnx")
    port = free_port()
    with serve_process(model, "--grpc-port", str(port), "--max-body-mb", "64",
                       "--max-inflight-mb", "128", "--max-batch", "4096",
                       "--threads", "1") as running:
        rows = 40 * MiB // (3 * 32 * 32 * 4)
        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(lambda _: call(f"127.0.0.1:{port}", infer_request(rows)),
                                     range(16)))
        codes = [code for code, _ in outcomes]
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        refused = [trailers for code, trailers in outcomes
                   if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert refused and codes.count(grpc.StatusCode.OK) >= 1, codes
        assert all(trailers.get("retry-after") == "1" for trailers in refused)
        assert running.peak_rss_kib() * 1024 < 2048 * MiB, running.peak_rss_kib()
