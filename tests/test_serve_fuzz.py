"""Bad input never hurts the server: hundreds of malformed requests, 0 responses 5xx."""

from __future__ import annotations

import gzip
import io
import json
import random
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from test_serve_helpers import load_tiny, raw_http, running_server, write_tiny_onnx

LIMIT = 1 << 20  # 1 MiB body limit for this server
URL = "/v2/models/tiny/infer"
SHAPE = [1, 3, 32, 32]
COUNT = 3 * 32 * 32


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    path = write_tiny_onnx(tmp_path_factory.mktemp("fuzz") / "tiny.onnx")
    with running_server([load_tiny(path, max_batch=4)], max_body_bytes=LIMIT,
                        max_image_pixels=250_000, max_delay_ms=1) as running:
        yield running


def good_json() -> dict:
    return {"inputs": [{"name": "input", "shape": list(SHAPE), "datatype": "FP32",
                        "data": [0.25] * COUNT}]}


def binary_request(data: bytes, header: dict | None = None) -> tuple[bytes, int]:
    header = header or {"inputs": [{"name": "input", "shape": SHAPE, "datatype": "FP32",
                                    "parameters": {"binary_data_size": COUNT * 4}}]}
    text = json.dumps(header).encode()
    return text + data, len(text)


JUNK_VALUES = [None, True, -1, 0, 2**70, 1.5, "", "FP32", "x" * 300, [], [None], {}, {"a": 1},
               [[1, 2], [3]], float("nan")]


def mutated_json(rng: random.Random) -> dict:
    """A valid request with one field dropped or replaced by junk."""
    body = good_json()
    tensor = body["inputs"][0]
    target = rng.choice(["body", "tensor", "shape", "dim", "data", "datatype", "name", "outputs",
                         "parameters"])
    junk = rng.choice(JUNK_VALUES)
    if target == "body":
        body[rng.choice(["inputs", "id", "outputs", "parameters"])] = junk
    elif target == "tensor":
        tensor.pop(rng.choice(["name", "shape", "datatype", "data"]))
    elif target == "shape":
        tensor["shape"] = junk
    elif target == "dim":
        tensor["shape"][rng.randrange(4)] = rng.choice([0, -1, 2, 5, 31, 33, 10**9, "3", 3.0])
    elif target == "data":
        tensor["data"] = rng.choice([junk, [0.1] * (COUNT - 1), ["a"] * COUNT,
                                     [[0.1] * 10] * 3, [{"v": 1}] * COUNT])
    elif target == "datatype":
        tensor["datatype"] = rng.choice(["FP16", "INT64", "BYTES", "fp32", "FP32 ", junk])
    elif target == "name":
        tensor["name"] = rng.choice(["logits", "INPUT", junk])
    elif target == "outputs":
        body["outputs"] = rng.choice([[{"name": "nope"}], [{"name": "logits", "parameters": junk}],
                                      [{"name": "logits", "parameters": {"classification": -2}}],
                                      [{"name": "logits", "parameters": {"binary_data": "yes"}}],
                                      ["logits"]])
    else:
        tensor["parameters"] = rng.choice([junk, {"binary_data_size": junk},
                                           {"shared_memory_region": "r"}])
    return body


def still_valid(body: dict) -> bool:
    """Some mutations leave a valid request (an id of None, harmless parameters): skip them."""
    def harmless(parameters: object) -> bool:
        return parameters in ({}, {"a": 1})

    body = dict(body)
    for key in ("id", "outputs"):
        if key in body and body[key] is None:
            body.pop(key)
    if harmless(body.get("parameters", {})):
        body.pop("parameters", None)
    outputs = body.pop("outputs", [{"name": "logits"}])
    if outputs != [{"name": "logits"}] and not (
            isinstance(outputs, list) and len(outputs) == 1 and isinstance(outputs[0], dict)
            and outputs[0].get("name") == "logits" and harmless(outputs[0].get("parameters"))):
        return False
    inputs = body.get("inputs")
    if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
        tensor = dict(inputs[0])
        if harmless(tensor.get("parameters", {})):
            tensor.pop("parameters", None)
        body["inputs"] = [tensor, *inputs[1:]]
    return body == good_json()


def png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def malformed_requests(seed: int = 0) -> Iterator[tuple[str, str, dict, bytes]]:
    """(method, path, headers, body) of several hundred bad requests."""
    rng = random.Random(seed)
    as_json = {"content-type": "application/json"}
    produced = 0
    while produced < 250:
        body = mutated_json(rng)
        if not still_valid(body):
            produced += 1
            yield "POST", URL, as_json, json.dumps(body).encode()
    good = json.dumps(good_json()).encode()
    for cut in rng.sample(range(1, len(good) - 1), 30):  # truncated JSON
        yield "POST", URL, as_json, good[:cut]
    for raw in [b"", b"null", b"[]", b'"text"', b"\xff\xfe\x00", b"{" * 100_000, b"[" * 50_000,
                b"{'inputs': []}", b'{"inputs": [' + b"[" * 5000 + b"]}", b"NaN", b"1e999"]:
        yield "POST", URL, as_json, raw
    data = np.zeros(COUNT, np.float32).tobytes()
    full, length = binary_request(data)
    for header_length in ["-1", "abc", "1e3", str(len(full) + 1), "0", "99999999999", "+5",
                          str(length - 1), str(length + 3)]:
        yield "POST", URL, {"inference-header-content-length": header_length}, full
    for cut in [1, 4, 100, COUNT * 4 - 1]:  # truncated binary tensor data
        yield "POST", URL, {"inference-header-content-length": str(length)}, full[:-cut]
    extra, extra_length = binary_request(data + b"\0\0\0\0")
    yield "POST", URL, {"inference-header-content-length": str(extra_length)}, extra
    for size in [-4, 7, "12288", True, COUNT * 4 + 4]:
        header = {"inputs": [{"name": "input", "shape": SHAPE, "datatype": "FP32",
                              "parameters": {"binary_data_size": size}}]}
        body, length = binary_request(data, header)
        yield "POST", URL, {"inference-header-content-length": str(length)}, body
    both = {"inputs": [{**good_json()["inputs"][0], "parameters": {"binary_data_size": COUNT * 4}}]}
    body, length = binary_request(data, both)
    yield "POST", URL, {"inference-header-content-length": str(length)}, body
    compressed = gzip.compress(good)
    yield "POST", URL, {"content-encoding": "gzip"}, compressed[: len(compressed) // 2]
    yield "POST", URL, {"content-encoding": "gzip"}, b"not gzip at all"
    yield "POST", URL, {"content-encoding": "deflate"}, gzip.compress(good)
    yield "POST", URL, {"content-encoding": "br"}, good
    yield "POST", URL, {"content-encoding": "gzip"}, gzip.compress(b" " * (8 * LIMIT))  # bomb
    yield "POST", URL, {"content-encoding": "deflate"}, zlib.compress(b"[" * (2 * LIMIT))
    image = png((48, 48))
    classify = "/v1/classify"
    for name, payload in [("random.png", bytes(rng.randrange(256) for _ in range(2000))),
                          ("truncated.png", image[: len(image) // 2]), ("header.png", image[:33]),
                          ("empty.png", b""), ("text.png", b"hello"),
                          ("huge.png", png((600, 600)))]:
        yield "POST", classify, {"content-type": "multipart/form-data; boundary=B"}, (
            b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + name.encode()
            + b"\"\r\nContent-Type: image/png\r\n\r\n" + payload + b"\r\n--B--\r\n")
    for content_type, payload in [("multipart/form-data; boundary=B", b"--B\r\ngarbage"),
                                  ("multipart/form-data", b"no boundary"),
                                  ("multipart/form-data; boundary=B", b"--B--\r\n"),
                                  ("text/plain", image), ("application/json", b"{}"),
                                  ("image/png", b"\x89PNG\r\n\x1a\n" + b"\0" * 50),
                                  ("image/jpeg", b"\xff\xd8\xff" + b"\0" * 50), ("image/png", b"")]:
        yield "POST", classify, {"content-type": content_type}, payload
    for query in ["?top_k=0", "?top_k=abc", "?top_k=-3", "?model=missing", "?top_k=1e9"]:
        yield "POST", classify + query, {"content-type": "image/png"}, image
    for method, path in [("GET", URL), ("DELETE", URL), ("PUT", "/v1/classify"),
                         ("GET", "/v2/models/missing"), ("GET", "/v2/models/tiny/versions/9"),
                         ("POST", "/v2/models/missing/infer"), ("GET", "/nope"),
                         ("GET", "/v2/models/%00/ready"),
                         ("POST", "/v2/models/tiny/versions/x/infer"),
                         ("GET", "/v2/models/" + "a" * 2000), ("POST", "/metrics")]:
        yield method, path, {}, b"{}"


def test_hundreds_of_malformed_requests_get_4xx_json_and_the_server_survives(server) -> None:
    statuses = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for method, path, headers, body in malformed_requests():
            response = client.request(method, path, headers=headers, content=body)
            statuses.append(response.status_code)
            assert 400 <= response.status_code < 500, (method, path, body[:200], response.text)
            assert isinstance(response.json()["error"], str), response.text
        assert len(statuses) >= 300
        good = client.post(URL, json=good_json())
        assert good.status_code == 200 and good.json()["outputs"][0]["shape"] == [1, 10]
        metrics = client.get("/metrics").text
    assert 'status="5' not in metrics
    assert {400, 404, 405, 413, 415} <= set(statuses)


def test_declared_oversized_body_is_refused_before_it_is_read(server) -> None:
    head = (f"POST {URL} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {100 * LIMIT}\r\n\r\n").encode()
    status, response = raw_http(server.port, head + b"{" * 1000)  # the rest is never sent
    assert status == 413 and b"exceeds the 1048576-byte limit" in response


def test_streamed_body_is_cut_off_at_the_limit(server) -> None:
    head = f"POST {URL} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    chunk = b"x" * 65536
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(LIMIT // 65536 + 2))
    status, response = raw_http(server.port, head + chunks + b"0\r\n\r\n")
    assert status == 413 and b"exceeds" in response


def test_malformed_content_length_is_400(server) -> None:
    status, _ = raw_http(server.port, f"POST {URL} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                         "Content-Length: 7\r\n\r\nhello".encode())
    assert status == 400


def test_server_still_answers_after_the_limit_tests(server) -> None:
    response = httpx.post(f"{server.url}{URL}", json=good_json())
    assert response.status_code == 200


def test_oversized_image_bytes_never_reach_the_decoder(server, tmp_path: Path) -> None:
    body = b"\x89PNG\r\n\x1a\n" + b"\0" * (LIMIT + 10)
    response = httpx.post(f"{server.url}/v1/classify", content=body,
                          headers={"content-type": "image/png"})
    assert response.status_code == 413
