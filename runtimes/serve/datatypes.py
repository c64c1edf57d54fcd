"""Tensor datatypes: onnxruntime's type strings, KServe v2 names and numpy dtypes, and
`TensorInfo`, a model input or output as the protocol describes it.

Names follow the Open Inference Protocol's "Tensor Data Types" table (BOOL, UINT8, ..., FP16,
FP32, FP64, BYTES); binary tensor data is little-endian, row-major.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ORT_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}

V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}

# numpy kinds a JSON number list may have for each family of datatypes
JSON_KINDS = {"BOOL": "b", "UINT": "bu", "INT": "biu", "FP": "biuf"}


def json_kinds(datatype: str) -> str:
    """Which numpy kinds are acceptable as JSON `data` for `datatype` (no strings, no objects)."""
    for prefix in ("BOOL", "UINT", "INT", "FP"):
        if datatype.startswith(prefix):
            return JSON_KINDS[prefix]
    return ""


def triton_type(datatype: str) -> str:
    """`FP32` -> `TYPE_FP32` (Triton model-configuration spelling)."""
    return f"TYPE_{datatype}"


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output as the Open Inference Protocol describes it (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
