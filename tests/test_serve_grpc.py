"""The Open Inference Protocol over gRPC: tritonclient.grpc against `serve --grpc-port`.

One server answers both protocols from one model and one batching queue, so gRPC answers are
compared with HTTP's and with onnxruntime run in-process.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from test_serve_cli import free_port, stop_with_sigterm
from test_serve_helpers import load_tiny, running_server, write_tiny_onnx
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from resnext_compiler.runtimes.serve.errors import ServeError
from resnext_compiler.runtimes.serve.grpc_service import status_code

MAX_BODY = 1 << 20  # 1 MiB: the HTTP body limit is also the gRPC message limit
LABELS = [f"class{index}" for index in range(10)]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_onnx(tmp_path_factory.mktemp("grpc") / "tiny.onnx")


@pytest.fixture(scope="module")
def server(tiny_path: Path):
    with running_server([load_tiny(tiny_path)], {"tiny": LABELS}, max_delay_ms=2.0,
                        grpc_port=0, max_body_bytes=MAX_BODY) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with tgrpc.InferenceServerClient(server.grpc_target) as connection:
        yield connection


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def images(seed: int, rows: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 3, 32, 32)).astype(np.float32)


def reference(path: Path, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": inputs})[0]


def grpc_input(inputs: np.ndarray, name: str = "input", datatype: str = "FP32") -> tgrpc.InferInput:
    tensor = tgrpc.InferInput(name, list(inputs.shape), datatype)
    tensor.set_data_from_numpy(inputs)
    return tensor


def status_of(call) -> str:  # noqa: ANN001
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status()


def test_health_and_readiness(client: tgrpc.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "1")
    assert not client.is_model_ready("missing")
    assert not client.is_model_ready("tiny", "7")


def test_server_and_model_metadata(client: tgrpc.InferenceServerClient) -> None:
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "resnext-compile"
    assert {"binary_tensor_data", "classification", "statistics"} <= set(server["extensions"])
    model = client.get_model_metadata("tiny", as_json=True)
    assert model["name"] == "tiny" and model["versions"] == ["1"]
    assert model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "3", "32",
                                                                                "32"]}]
    assert model["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": ["-1", "10"]}]


def test_model_configuration_and_repository_index(server, client) -> None:
    config = client.get_model_config("tiny", as_json=True)["config"]
    assert config["name"] == "tiny" and config["max_batch_size"] == 32
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32",
                                "dims": ["3", "32", "32"]}]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "2000"
    with thttp.InferenceServerClient(f"127.0.0.1:{server.port}") as http:
        assert http.get_model_config("tiny")["max_batch_size"] == 32
    index = client.get_model_repository_index(as_json=True)["models"]
    assert index == [{"name": "tiny", "version": "1", "state": "READY"}]


def test_raw_infer_equals_http_and_onnxruntime(server, client, tiny_path: Path) -> None:
    inputs = images(1, rows=3)
    result = client.infer("tiny", [grpc_input(inputs)], request_id="r1")
    logits = result.as_numpy("logits")
    assert result.get_response().id == "r1"
    assert result.get_response().model_version == "1"
    with thttp.InferenceServerClient(f"127.0.0.1:{server.port}") as http:
        tensor = thttp.InferInput("input", list(inputs.shape), "FP32")
        tensor.set_data_from_numpy(inputs)
        over_http = http.infer("tiny", [tensor]).as_numpy("logits")
    np.testing.assert_array_equal(logits, over_http)
    np.testing.assert_allclose(logits, reference(tiny_path, inputs), rtol=1e-5, atol=1e-5)


def test_typed_contents_infer_equals_raw(stub, client) -> None:
    inputs = images(2)
    request = pb.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=inputs.shape)
    tensor.contents.fp32_contents.extend(inputs.reshape(-1).tolist())
    response = stub.ModelInfer(request)
    assert [out.name for out in response.outputs] == ["logits"]
    assert list(response.outputs[0].shape) == [2, 10]
    typed = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, 10)
    raw = client.infer("tiny", [grpc_input(inputs)]).as_numpy("logits")
    np.testing.assert_array_equal(typed, raw)


def test_classification_carries_class_names(client, tiny_path: Path) -> None:
    inputs = images(3, rows=1)
    wanted = tgrpc.InferRequestedOutput("logits", class_count=3)
    top = client.infer("tiny", [grpc_input(inputs)], outputs=[wanted]).as_numpy("logits")
    logits = reference(tiny_path, inputs)[0]
    best = np.argsort(-logits)[:3]
    assert top.shape == (1, 3)
    for entry, index in zip(top[0], best, strict=True):
        score, position, label = entry.decode().split(":")
        assert int(position) == index and label == LABELS[index]
        assert float(score) == pytest.approx(logits[index], abs=1e-5)


def test_malformed_requests_get_invalid_argument_and_the_server_stays_up(client) -> None:
    inputs = images(4)
    cases = {
        "wrong shape": lambda: client.infer("tiny", [grpc_input(images(4)[:, :, :16, :16])]),
        "wrong datatype": lambda: client.infer("tiny", [grpc_input(inputs.astype(np.float64),
                                                                   datatype="FP64")]),
        "unknown input": lambda: client.infer("tiny", [grpc_input(inputs, name="pixels")]),
        "unknown output": lambda: client.infer(
            "tiny", [grpc_input(inputs)], outputs=[tgrpc.InferRequestedOutput("probs")]),
        "batch over max": lambda: client.infer("tiny", [grpc_input(images(4, rows=33))]),
    }
    for case, call in cases.items():
        assert status_of(call) == "StatusCode.INVALID_ARGUMENT", case
    assert status_of(lambda: client.infer("missing", [grpc_input(inputs)])
                     ) == "StatusCode.NOT_FOUND"
    assert status_of(lambda: client.infer("tiny", [grpc_input(inputs)], model_version="2")
                     ) == "StatusCode.NOT_FOUND"
    assert status_of(lambda: client.get_model_metadata("missing")) == "StatusCode.NOT_FOUND"
    assert client.is_server_live()
    assert client.infer("tiny", [grpc_input(inputs)]).as_numpy("logits").shape == (2, 10)


@pytest.mark.parametrize("case", ["byte count", "typed count", "typed field", "raw and typed",
                                  "no data", "two inputs"])
def test_malformed_contents_are_invalid_argument(stub, case: str) -> None:
    inputs = images(5, rows=1)
    request = pb.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=inputs.shape)
    if case == "byte count":
        request.raw_input_contents.append(inputs.tobytes()[:-4])
    elif case == "typed count":
        tensor.contents.fp32_contents.extend([0.5] * 10)
    elif case == "typed field":
        tensor.contents.int_contents.extend([1] * inputs.size)
    elif case == "raw and typed":
        tensor.contents.fp32_contents.extend(inputs.reshape(-1).tolist())
        request.raw_input_contents.append(inputs.tobytes())
    elif case == "two inputs":
        request.inputs.add(name="input", datatype="FP32", shape=inputs.shape)
        request.raw_input_contents.extend([inputs.tobytes()] * 2)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details()


def test_bytes_that_are_no_request_are_invalid_argument(server) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"\xff\xff\xff\xff")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed ModelInferRequest" in caught.value.details()
        unimplemented = channel.unary_unary("/inference.GRPCInferenceService/ModelStreamInfer")
        with pytest.raises(grpc.RpcError) as caught:
            unimplemented(b"")
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_message_over_the_body_limit_is_resource_exhausted(client) -> None:
    rows = MAX_BODY // (3 * 32 * 32 * 4) + 1  # just over the limit, within --max-batch
    status = status_of(lambda: client.infer("tiny", [grpc_input(images(6, rows=rows))]))
    assert status == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.is_server_live()


def test_status_codes_follow_triton() -> None:
    assert status_code(ServeError(400, "x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_code(ServeError(404, "x")) == grpc.StatusCode.NOT_FOUND
    assert status_code(ServeError(503, "queue full", overloaded=True)
                       ) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_code(ServeError(503, "shutting down")) == grpc.StatusCode.UNAVAILABLE


def test_32_concurrent_clients_get_their_own_answers_and_are_counted(server, client,
                                                                     tiny_path: Path) -> None:
    before = client.get_inference_statistics("tiny", as_json=True)["model_stats"][0]
    inputs = [images(100 + index, rows=1) for index in range(32)]
    answers: list[np.ndarray | None] = [None] * 32
    barrier = threading.Barrier(32)

    def one(index: int) -> None:
        with tgrpc.InferenceServerClient(server.grpc_target) as own:
            barrier.wait()
            answers[index] = own.infer("tiny", [grpc_input(inputs[index])]).as_numpy("logits")

    threads = [threading.Thread(target=one, args=(index,)) for index in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    expected = reference(tiny_path, np.concatenate(inputs))
    for index, answer in enumerate(answers):
        assert answer is not None, index
        np.testing.assert_allclose(answer[0], expected[index], rtol=1e-5, atol=1e-5)
    after = client.get_inference_statistics("tiny", as_json=True)["model_stats"][0]

    def count(stats: dict, *path: str) -> int:
        for key in path:
            stats = stats.get(key, {})
        return int(stats or 0)

    assert count(after, "inference_stats", "success", "count") - count(
        before, "inference_stats", "success", "count") == 32
    assert count(after, "inference_count") - count(before, "inference_count") == 32
    assert int(after["inference_stats"]["success"]["ns"]) > 0
    executions = count(after, "execution_count") - count(before, "execution_count")
    assert 1 <= executions <= 32
    # HTTP reads the same statistics (one implementation)
    with thttp.InferenceServerClient(f"127.0.0.1:{server.port}") as http:
        over_http = http.get_inference_statistics("tiny")["model_stats"][0]
    assert over_http["inference_stats"]["success"]["count"] >= count(
        after, "inference_stats", "success", "count")


def test_failures_are_counted_in_statistics(client) -> None:
    def failures() -> int:
        stats = client.get_inference_statistics("tiny", as_json=True)["model_stats"][0]
        return int(stats["inference_stats"].get("fail", {}).get("count", 0))

    before = failures()
    status_of(lambda: client.infer("tiny", [grpc_input(images(7)[:, :1])]))
    assert failures() == before + 1


def test_grpc_calls_appear_in_prometheus_metrics(server, client) -> None:
    import httpx

    client.infer("tiny", [grpc_input(images(8))])
    status_of(lambda: client.get_model_metadata("missing"))
    text = httpx.get(f"{server.url}/metrics").text
    assert 'resnext_serve_grpc_requests_total{code="OK",method="ModelInfer"}' in text
    assert 'resnext_serve_grpc_requests_total{code="NOT_FOUND",method="ModelMetadata"}' in text


def test_serve_command_with_grpc_port(tmp_path: Path) -> None:
    model = write_tiny_onnx(tmp_path / "tiny.onnx")
    port, grpc_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "resnext_compiler.cli", "serve", str(model), "--port", str(port),
         "--grpc-port", str(grpc_port), "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with tgrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}") as connection:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, process.communicate()[0]
                try:
                    if connection.is_server_ready():
                        break
                except InferenceServerException:
                    assert time.monotonic() < deadline, "server did not start"
                    time.sleep(0.1)
            logits = connection.infer("tiny", [grpc_input(images(9))]).as_numpy("logits")
            assert logits.shape == (2, 10)
        output = stop_with_sigterm(process)
    finally:
        if process.poll() is None:
            process.kill()
    assert f"gRPC (inference.GRPCInferenceService) on 127.0.0.1:{grpc_port}" in output


def test_a_busy_grpc_port_is_a_user_error(tmp_path: Path) -> None:
    model = write_tiny_onnx(tmp_path / "tiny.onnx")
    port = free_port()
    with running_server([load_tiny(model)], grpc_port=0) as running:
        result = subprocess.run(
            [sys.executable, "-m", "resnext_compiler.cli", "serve", str(model), "--port",
             str(port), "--grpc-port", str(running.grpc_port)],
            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "cannot listen for gRPC" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_full_queue_is_resource_exhausted_and_shutdown_unavailable(tiny_path: Path) -> None:
    from test_serve_batching import SlowModel

    slow = SlowModel(load_tiny(tiny_path, max_batch=1), delay_s=0.3)
    with running_server([slow], max_queue=1, max_delay_ms=0, grpc_port=0) as running:
        with grpc.insecure_channel(running.grpc_target) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = pb.ModelInferRequest(model_name="tiny")
            request.inputs.add(name="input", datatype="FP32", shape=[1, 3, 32, 32])
            request.raw_input_contents.append(images(10, rows=1).tobytes())
            calls = [stub.ModelInfer.future(request) for _ in range(6)]
            codes = []
            for call in calls:
                try:
                    call.result(timeout=60)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
            # at least the first is served (more when the batcher takes it before the others
            # arrive: timing on a loaded machine), the rest beyond the queue are refused
            assert codes.count(grpc.StatusCode.OK) >= 1
            assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
            assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
            # the batchers stop first (as at the end of a shutdown): not ready, UNAVAILABLE
            running.service.served["tiny"].batcher.close()
            assert not stub.ServerReady(pb.ServerReadyRequest()).ready
            assert not stub.ModelReady(pb.ModelReadyRequest(name="tiny")).ready
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(request)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
