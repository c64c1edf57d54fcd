"""Open Inference Protocol v2 over a real uvicorn server: tritonclient works unchanged."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from test_serve_helpers import load_tiny, running_server, write_tiny_onnx
from tritonclient.utils import InferenceServerException

from resnext_compiler.errors import UserError
from resnext_compiler.runtimes.serve.config import ServeConfig
from resnext_compiler.runtimes.serve.model import choose_providers
from resnext_compiler.runtimes.serve.repository import find_models
from resnext_compiler.runtimes.serve.server import bind_socket, load_models


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_onnx(tmp_path_factory.mktemp("serve") / "tiny.onnx")


@pytest.fixture(scope="module")
def server(tiny_path: Path):
    with running_server([load_tiny(tiny_path)], max_delay_ms=2.0) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with triton.InferenceServerClient(f"127.0.0.1:{server.port}") as connection:
        yield connection


def reference(path: Path, inputs: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": inputs})[0]


def triton_input(inputs: np.ndarray, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("input", list(inputs.shape), "FP32")
    tensor.set_data_from_numpy(inputs, binary_data=binary)
    return tensor


def test_health_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "1")
    assert not client.is_model_ready("missing")
    metadata = client.get_server_metadata()
    assert metadata["name"] == "resnext-compile"
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_lists_shapes_datatypes_and_spec(client: triton.InferenceServerClient
                                                        ) -> None:
    metadata = client.get_model_metadata("tiny")
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert metadata["versions"] == ["1"]
    assert metadata["parameters"]["spec_name"] == "tiny"
    config = client.get_model_config("tiny")
    assert config["max_batch_size"] == 32 and config["input"][0]["dims"] == [3, 32, 32]


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_tritonclient_gets_the_in_process_logits(client: triton.InferenceServerClient,
                                                 tiny_path: Path, binary_in: bool,
                                                 binary_out: bool) -> None:
    inputs = np.random.default_rng(1).normal(size=(3, 3, 32, 32)).astype(np.float32)
    result = client.infer("tiny", [triton_input(inputs, binary_in)], request_id="r-7",
                          outputs=[triton.InferRequestedOutput("logits", binary_data=binary_out)])
    logits = result.as_numpy("logits")
    assert logits.shape == (3, 10) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, reference(tiny_path, inputs), rtol=1e-5, atol=1e-5)
    assert result.get_response()["id"] == "r-7"


def test_versioned_and_compressed_requests(client: triton.InferenceServerClient,
                                           tiny_path: Path) -> None:
    inputs = np.random.default_rng(2).random((2, 3, 32, 32), dtype=np.float32)
    expected = reference(tiny_path, inputs)
    for algorithm in ("gzip", "deflate"):
        result = client.infer("tiny", [triton_input(inputs)], model_version="1",
                              request_compression_algorithm=algorithm)
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-5)


def test_classification_extension_returns_top_classes(client: triton.InferenceServerClient,
                                                      tiny_path: Path) -> None:
    inputs = np.random.default_rng(3).random((2, 3, 32, 32), dtype=np.float32)
    expected = reference(tiny_path, inputs)
    result = client.infer("tiny", [triton_input(inputs)],
                          outputs=[triton.InferRequestedOutput("logits", class_count=3)])
    classes = result.as_numpy("logits")
    assert classes.shape == (2, 3)
    for row in range(2):
        indices = [int(entry.decode().split(":")[1]) for entry in classes[row]]
        assert indices == list(np.argsort(-expected[row])[:3])
        assert float(classes[row][0].decode().split(":")[0]) == pytest.approx(
            expected[row].max(), abs=1e-5)


def test_errors_reach_tritonclient_as_4xx_messages(client: triton.InferenceServerClient) -> None:
    good = np.zeros((1, 3, 32, 32), np.float32)
    with pytest.raises(InferenceServerException, match="unknown model") as missing:
        client.infer("missing", [triton_input(good)])
    assert missing.value.status() == "404"
    wrong = triton.InferInput("input", [1, 3, 16, 16], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(InferenceServerException, match="does not match") as shape:
        client.infer("tiny", [wrong])
    assert shape.value.status() == "400"
    with pytest.raises(InferenceServerException, match="batch 33 is outside 1..32"):
        client.infer("tiny", [triton_input(np.zeros((33, 3, 32, 32), np.float32))])
    with pytest.raises(InferenceServerException, match="unknown model version"):
        client.infer("tiny", [triton_input(good)], model_version="7")


def test_json_tensor_request_without_tritonclient(server, tiny_path: Path) -> None:
    inputs = np.random.default_rng(4).random((1, 3, 32, 32), dtype=np.float32)
    body = {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                        "data": inputs.tolist()}]}  # nested lists are accepted too
    response = httpx.post(f"{server.url}/v2/models/tiny/infer", json=body)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    output = response.json()["outputs"][0]
    assert output["shape"] == [1, 10] and output["datatype"] == "FP32"
    np.testing.assert_allclose(output["data"], reference(tiny_path, inputs)[0], rtol=1e-5,
                               atol=1e-5)


def test_fixed_batch_model_and_triton_repository_layout(tmp_path: Path) -> None:
    model_dir = tmp_path / "repo" / "tiny_fixed"
    (model_dir / "2").mkdir(parents=True)
    write_tiny_onnx(model_dir / "2" / "model.onnx", batch=1)
    (model_dir / "config.pbtxt").write_text('name: "tiny_fixed"\nplatform: "onnxruntime_onnx"\n'
                                            "max_batch_size: 0\n")
    sources = find_models(tmp_path / "repo")
    assert [(s.name, s.version) for s in sources] == [("tiny_fixed", "2")]
    models, _ = load_models(tmp_path / "repo", ServeConfig(device="cpu", max_batch=8))
    assert models[0].static_batch == 1 and models[0].max_batch == 1
    with running_server(models) as server:
        url = f"{server.url}/v2/models/tiny_fixed/infer"
        tensor = {"name": "input", "datatype": "FP32", "data": [0.5] * 2 * 3 * 32 * 32}
        ok = httpx.post(url, json={"inputs": [{**tensor, "shape": [1, 3, 32, 32],
                                               "data": tensor["data"][: 3 * 32 * 32]}]})
        assert ok.status_code == 200
        refused = httpx.post(url, json={"inputs": [{**tensor, "shape": [2, 3, 32, 32]}]})
        assert refused.status_code == 400 and "fixed batch of 1" in refused.json()["error"]


def test_model_name_comes_from_onnx_metadata(tmp_path: Path) -> None:
    path = write_tiny_onnx(tmp_path / "model.onnx", spec_name="resnext_tiny")
    models, _ = load_models(path, ServeConfig(device="cpu"))
    assert models[0].name == "resnext_tiny" and models[0].metadata["spec_hash"] == "0" * 16
    odd = write_tiny_onnx(tmp_path / "odd.onnx", spec_name="no/slashes please")
    assert load_models(odd, ServeConfig(device="cpu"))[0][0].name == "odd"


def test_device_cuda_without_cuda_provider_is_a_user_error(tiny_path: Path, run_cli) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA execution provider")
    with pytest.raises(UserError, match="no CUDA execution provider"):
        choose_providers("cuda")
    assert choose_providers("auto") == ["CPUExecutionProvider"]
    result = run_cli("serve", tiny_path, "--device", "cuda", "--port", "0")
    assert result.code == 2 and "--device cuda" in result.err and "Traceback" not in result.err


def test_cli_refuses_bad_arguments_with_exit_2(tiny_path: Path, tmp_path: Path, run_cli) -> None:
    assert run_cli("serve", tmp_path / "missing.onnx").code == 2
    assert run_cli("serve", tiny_path, "--device", "tpu").code == 2
    (tmp_path / "labels.txt").write_text("a\nb\n")
    mismatch = run_cli("serve", tiny_path, "--labels", tmp_path / "labels.txt", "--port", "0")
    assert mismatch.code == 2 and "2 labels for a model with 10 classes" in mismatch.err
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    junk = run_cli("serve", tmp_path / "junk.onnx", "--port", "0")
    assert junk.code == 2 and "cannot load ONNX model" in junk.err


def test_listening_socket_is_tcp_so_responses_skip_nagle_delay(server) -> None:
    # asyncio sets TCP_NODELAY only on sockets whose proto is TCP; without it every response
    # written as headers + body waited ~40 ms for a delayed ACK
    with bind_socket("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP
    with httpx.Client(base_url=server.url) as client:
        client.get("/v2/health/live")
        started = time.perf_counter()
        for _ in range(10):
            assert client.get("/v2/health/live").status_code == 200
        assert (time.perf_counter() - started) / 10 < 0.035


def test_busy_port_is_a_user_error(server) -> None:
    with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        bind_socket("127.0.0.1", server.port)
