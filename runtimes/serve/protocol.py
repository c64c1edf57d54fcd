"""Open Inference Protocol (KServe v2) inference requests and responses, JSON and binary.

The binary tensor data extension (Triton, `binary_tensor_data`): the body is a JSON header of
`Inference-Header-Content-Length` bytes followed by the raw little-endian tensors in the order
their `parameters.binary_data_size` appear. The classification extension returns, per row,
the top `classification` classes as BYTES strings `"score:index[:label]"`. Everything a client
sends is checked here; each problem is a 400 with a message naming the field.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import numpy as np

from resnext_compiler.runtimes.serve.datatypes import V2_TO_NUMPY, TensorInfo, json_kinds
from resnext_compiler.runtimes.serve.errors import ServeError, bad_request
from resnext_compiler.runtimes.serve.limits import ascii_integer


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    class_count: int = 0  # >0: the classification extension


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: np.ndarray
    outputs: list[RequestedOutput]


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tensor data) from `Inference-Header-Content-Length`."""
    if header_length is None:
        return body, b""
    length = ascii_integer(header_length)
    if length is None:
        raise bad_request("Inference-Header-Content-Length must be a non-negative integer, "
                          f"got {header_length[:40]!r}")
    if length > len(body):
        raise bad_request(f"Inference-Header-Content-Length {length} exceeds the body size "
                          f"{len(body)}")
    return body[:length], body[length:]


def parse_infer_request(header: bytes, binary: bytes, spec: TensorInfo, outputs: list[TensorInfo],
                        max_batch: int, static_batch: int | None) -> InferRequest:
    """Check one request against the model's input `spec` and return the batched input."""
    try:
        document = json.loads(header, parse_constant=_not_json)
    except RecursionError:
        raise bad_request("request JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"malformed request JSON: {exc}") from None
    if not isinstance(document, dict):
        raise bad_request("request body must be a JSON object")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad_request("id must be a string")
    parameters = _parameters(document, "parameters")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise bad_request(f"inputs must be a list holding one tensor, {spec.name!r}")
    array, consumed = _input_tensor(inputs[0], binary, spec, max_batch, static_batch)
    if consumed != len(binary):
        raise bad_request(f"{len(binary) - consumed} bytes of binary data follow the tensors "
                          "that the header describes")
    default_binary = _flag(parameters, "binary_data_output", "parameters")
    requested = _requested_outputs(document.get("outputs"), outputs, default_binary)
    return InferRequest(id=request_id, inputs=array, outputs=requested)


def _not_json(token: str) -> None:
    raise ValueError(f"{token} is not a JSON number (strict JSON: RFC 8259)")


def _parameters(holder: dict, where: str) -> dict:
    parameters = holder.get("parameters", {})
    if not isinstance(parameters, dict):
        raise bad_request(f"{where} must be a JSON object")
    check_no_shared_memory(parameters)
    return parameters


def _flag(parameters: dict, key: str, where: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise bad_request(f"{where}.{key} must be true or false")
    return value


def check_input(name: object, datatype: object, shape: object, spec: TensorInfo, max_batch: int,
                static_batch: int | None) -> tuple[int, ...]:
    """The shape of an input tensor that names the model's input with its datatype (any protocol).
    """
    if name != spec.name:
        raise bad_request(f"unknown input {name!r}; the model's input is {spec.name!r}")
    if datatype != spec.datatype:
        raise bad_request(f"input {name!r}: datatype {datatype!r} does not match the model's "
                          f"{spec.datatype}")
    return _shape(shape, spec, max_batch, static_batch)


def check_no_shared_memory(parameters: object) -> None:
    if any(str(key).startswith("shared_memory") for key in parameters):  # type: ignore[attr-defined]
        raise bad_request("the shared-memory extension is not supported by this server")


def _input_tensor(tensor: dict, binary: bytes, spec: TensorInfo, max_batch: int,
                  static_batch: int | None) -> tuple[np.ndarray, int]:
    name = tensor.get("name")
    shape = check_input(name, tensor.get("datatype"), tensor.get("shape"), spec, max_batch,
                        static_batch)
    dtype = V2_TO_NUMPY[spec.datatype]
    count = math.prod(shape)
    parameters = _parameters(tensor, f"input {name!r} parameters")
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise bad_request(f"input {name!r}: binary_data_size must be a non-negative integer")
        if "data" in tensor:
            raise bad_request(f"input {name!r} has both binary_data_size and data")
        if size != count * dtype.itemsize:
            raise bad_request(f"input {name!r}: binary_data_size {size} != {count} elements x "
                              f"{dtype.itemsize} bytes for shape {shape}")
        if size > len(binary):
            raise bad_request(f"input {name!r}: binary data truncated ({len(binary)} of {size} "
                              "bytes)")
        return np.frombuffer(binary, dtype=dtype, count=count).reshape(shape), size
    if "data" not in tensor:
        raise bad_request(f"input {name!r} has neither data nor binary_data_size")
    return _json_data(tensor["data"], name, shape, dtype, spec.datatype), 0


def _shape(shape: object, spec: TensorInfo, max_batch: int, static_batch: int | None
           ) -> tuple[int, ...]:
    if (not isinstance(shape, list) or len(shape) != len(spec.shape)
            or not all(isinstance(dim, int) and not isinstance(dim, bool) for dim in shape)):
        raise bad_request(f"input {spec.name!r}: shape must be a list of {len(spec.shape)} "
                          f"integers like {[1, *spec.shape[1:]]}, got {str(shape)[:80]}")
    if list(shape[1:]) != list(spec.shape[1:]):
        raise bad_request(f"input {spec.name!r}: shape {shape} does not match the model's "
                          f"[batch, {', '.join(map(str, spec.shape[1:]))}]")
    batch = shape[0]
    if static_batch is not None and batch != static_batch:
        raise bad_request(f"input {spec.name!r}: this model has a fixed batch of {static_batch},"
                          f" got {batch}")
    if not 1 <= batch <= max_batch:
        raise bad_request(f"input {spec.name!r}: batch {batch} is outside 1..{max_batch} "
                          "(the server's max batch)")
    return tuple(shape)


def _json_data(data: object, name: str, shape: tuple[int, ...], dtype: np.dtype,
               datatype: str) -> np.ndarray:
    if not isinstance(data, list):
        raise bad_request(f"input {name!r}: data must be a (flat or nested) list of numbers")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, RecursionError):
        raise bad_request(f"input {name!r}: data is ragged or not numeric") from None
    if array.dtype.kind not in json_kinds(datatype):
        raise bad_request(f"input {name!r}: data must hold {datatype} numbers")
    if array.size != math.prod(shape):
        raise bad_request(f"input {name!r}: data has {array.size} elements, shape {list(shape)} "
                          f"needs {math.prod(shape)}")
    with np.errstate(over="ignore", invalid="ignore"):
        return array.astype(dtype).reshape(shape)


def _requested_outputs(requested: object, outputs: list[TensorInfo], default_binary: bool
                       ) -> list[RequestedOutput]:
    if requested is None:
        return [RequestedOutput(out.name, default_binary) for out in outputs]
    if not isinstance(requested, list) or not all(isinstance(r, dict) for r in requested):
        raise bad_request("outputs must be a list of objects")
    chosen = []
    for entry in requested:
        name = entry.get("name")
        parameters = _parameters(entry, f"output {name!r} parameters")
        binary = parameters.get("binary_data", default_binary)
        if not isinstance(binary, bool):
            raise bad_request(f"output {name!r}: binary_data must be true or false")
        chosen.append(requested_output(name, parameters.get("classification", 0), binary,
                                       outputs))
    return chosen


def requested_output(name: object, class_count: object, binary: bool,
                     outputs: list[TensorInfo]) -> RequestedOutput:
    """One output a client asked for, checked against the model's outputs (any protocol)."""
    known = [out.name for out in outputs]
    if not isinstance(name, str) or name not in known:
        raise bad_request(f"unknown output {name!r}; the model's outputs are {sorted(known)}")
    if isinstance(class_count, bool) or not isinstance(class_count, int) or class_count < 0:
        raise bad_request(f"output {name!r}: classification must be a non-negative integer")
    return RequestedOutput(str(name), binary, class_count)


def response_tensors(request: InferRequest, results: dict[str, np.ndarray],
                     infos: dict[str, TensorInfo], labels: list[str] | None
                     ) -> list[tuple[RequestedOutput, str, np.ndarray]]:
    """(requested output, datatype, array) per output to answer; classification applied."""
    chosen = []
    for wanted in request.outputs:
        array, datatype = results[wanted.name], infos[wanted.name].datatype
        if wanted.class_count:
            array, datatype = classification(array, wanted.class_count, labels), "BYTES"
        chosen.append((wanted, datatype, array))
    return chosen


def tensor_bytes(array: np.ndarray, datatype: str) -> bytes:
    """A tensor's raw bytes as both protocols send them (little-endian, row-major; BYTES
    elements as a 4-byte little-endian length and the bytes)."""
    if datatype == "BYTES":
        return _bytes_tensor(array)
    return np.ascontiguousarray(array, dtype=V2_TO_NUMPY[datatype]).tobytes()


def encode_infer_response(model_name: str, version: str, request: InferRequest,
                          results: dict[str, np.ndarray], infos: dict[str, TensorInfo],
                          labels: list[str] | None) -> tuple[bytes, dict[str, str]]:
    """Response body and headers; binary outputs follow the JSON header."""
    described, blobs = [], []
    for wanted, datatype, array in response_tensors(request, results, infos, labels):
        entry: dict = {"name": wanted.name, "datatype": datatype, "shape": list(array.shape)}
        if wanted.binary:
            blob = tensor_bytes(array, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = json_values(array)
        described.append(entry)
    document: dict = {"model_name": model_name, "model_version": version, "outputs": described}
    if request.id is not None:
        document["id"] = request.id
    header = json.dumps(document, allow_nan=False).encode()
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(blobs), {"Content-Type": "application/octet-stream",
                                      "Inference-Header-Content-Length": str(len(header))}


def json_values(array: np.ndarray) -> list:
    """A tensor's values as a flat JSON list. JSON has no NaN or infinity (RFC 8259): a
    non-finite output value becomes null; the binary form carries the IEEE value unchanged."""
    flat = array.reshape(-1)
    if flat.dtype.kind != "f" or np.isfinite(flat).all():
        return flat.tolist()
    values = flat.astype(object)
    values[~np.isfinite(flat)] = None
    return values.tolist()


def classification(logits: np.ndarray, count: int, labels: list[str] | None) -> np.ndarray:
    """Triton's classification extension: per row the top `count` as 'score:index[:label]'."""
    rows = logits.reshape(logits.shape[0], -1).astype(np.float64)
    count = min(count, rows.shape[1])
    order = np.argsort(-rows, axis=1, kind="stable")[:, :count]
    out = np.empty((rows.shape[0], count), dtype=object)
    for row, indices in enumerate(order):
        for rank, index in enumerate(indices):
            text = f"{rows[row, index]:f}:{index}"
            out[row, rank] = text + (f":{labels[index]}" if labels else "")
    return out


def _bytes_tensor(array: np.ndarray) -> bytes:
    """BYTES binary layout: each element as a 4-byte little-endian length then its bytes."""
    parts = []
    for item in array.reshape(-1):
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)


def check_model_version(version: str | None, served: str) -> None:
    if version is not None and version != served:
        raise ServeError(404, f"unknown model version {version!r} (serving {served!r})")
