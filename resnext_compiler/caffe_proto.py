"""Caffe's model format: a minimal NetParameter schema and the protobuf wire rules we need.

A Caffe deploy net is a `NetParameter` message: text (`.prototxt`) for the structure and
binary (`.caffemodel`) for the same layers with their weight blobs. Rather than ship or copy
Caffe's `caffe.proto`, this module declares the few messages and fields the compiler writes
and reads, by the field numbers of Caffe's public schema (BVLC/caffe `src/caffe/proto`),
and builds message classes from them with protobuf's descriptor API. Anything the schema
leaves out is skipped as an unknown field when a file is read, as protobuf does.

The blobs are not built as messages: `LayerParameter.blobs` are framed by hand on write
(`blob_frame_prefix`) and sliced out of the file on read (`read_net`), so neither direction
holds a second copy of the weights (https://protobuf.dev/programming-guides/encoding/).
"""

from __future__ import annotations

import array
import math
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from resnext_compiler.errors import UserError
from resnext_compiler.named_files import CAFFE_MODEL, open_named
from resnext_compiler.protobuf_wire import (
    FIXED32,
    LENGTH_DELIMITED,
    VARINT,
    WireError,
    frame,
    read_varint,
    varint,
)
from resnext_compiler.protobuf_wire import (
    fields as wire_fields,
)

# Field numbers of Caffe's schema that the hand-written framing uses.
NET_NAME, NET_LAYERS_V1, NET_LAYER = 1, 2, 100
LAYER_NAME, LAYER_TYPE, LAYER_BLOBS = 1, 2, 7
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH = 1, 2, 3, 4
BLOB_DATA, BLOB_SHAPE, BLOB_DOUBLE_DATA = 5, 7, 8
SHAPE_DIM = 1

_OPTIONAL, _REPEATED = 1, 3
_TYPES = {"double": 1, "float": 2, "int64": 3, "uint32": 13, "int32": 5, "bool": 8,
          "string": 9, "message": 11, "enum": 14}

# (message, [(field, number, type, label, message/enum type name, packed)]); the subset of
# caffe.proto's messages that a ResNeXt deploy net needs.
_ENUMS = {
    "PoolMethod": ("PoolingParameter", {"MAX": 0, "AVE": 1, "STOCHASTIC": 2}),
    "EltwiseOp": ("EltwiseParameter", {"PROD": 0, "SUM": 1, "MAX": 2}),
}
_MESSAGES: dict[str, list[tuple[str, int, str, int, str, bool]]] = {
    "BlobShape": [("dim", 1, "int64", _REPEATED, "", True)],
    "BlobProto": [
        ("num", 1, "int32", _OPTIONAL, "", False),
        ("channels", 2, "int32", _OPTIONAL, "", False),
        ("height", 3, "int32", _OPTIONAL, "", False),
        ("width", 4, "int32", _OPTIONAL, "", False),
        ("data", 5, "float", _REPEATED, "", True),
        ("shape", 7, "message", _OPTIONAL, "BlobShape", False),
        ("double_data", 8, "double", _REPEATED, "", True),
    ],
    "NetParameter": [
        ("name", 1, "string", _OPTIONAL, "", False),
        ("layer", 100, "message", _REPEATED, "LayerParameter", False),
    ],
    "LayerParameter": [
        ("name", 1, "string", _OPTIONAL, "", False),
        ("type", 2, "string", _OPTIONAL, "", False),
        ("bottom", 3, "string", _REPEATED, "", False),
        ("top", 4, "string", _REPEATED, "", False),
        ("blobs", 7, "message", _REPEATED, "BlobProto", False),
        ("concat_param", 104, "message", _OPTIONAL, "ConcatParameter", False),
        ("convolution_param", 106, "message", _OPTIONAL, "ConvolutionParameter", False),
        ("eltwise_param", 110, "message", _OPTIONAL, "EltwiseParameter", False),
        ("inner_product_param", 117, "message", _OPTIONAL, "InnerProductParameter", False),
        ("pooling_param", 121, "message", _OPTIONAL, "PoolingParameter", False),
        ("power_param", 122, "message", _OPTIONAL, "PowerParameter", False),
        ("slice_param", 126, "message", _OPTIONAL, "SliceParameter", False),
        ("flatten_param", 135, "message", _OPTIONAL, "FlattenParameter", False),
        ("batch_norm_param", 139, "message", _OPTIONAL, "BatchNormParameter", False),
        ("scale_param", 142, "message", _OPTIONAL, "ScaleParameter", False),
        ("input_param", 143, "message", _OPTIONAL, "InputParameter", False),
    ],
    "ConvolutionParameter": [
        ("num_output", 1, "uint32", _OPTIONAL, "", False),
        ("bias_term", 2, "bool", _OPTIONAL, "", False),
        ("pad", 3, "uint32", _REPEATED, "", False),
        ("kernel_size", 4, "uint32", _REPEATED, "", False),
        ("group", 5, "uint32", _OPTIONAL, "", False),
        ("stride", 6, "uint32", _REPEATED, "", False),
    ],
    "PoolingParameter": [
        ("pool", 1, "enum", _OPTIONAL, "PoolingParameter.PoolMethod", False),
        ("kernel_size", 2, "uint32", _OPTIONAL, "", False),
        ("stride", 3, "uint32", _OPTIONAL, "", False),
        ("pad", 4, "uint32", _OPTIONAL, "", False),
        ("global_pooling", 12, "bool", _OPTIONAL, "", False),
    ],
    "InnerProductParameter": [
        ("num_output", 1, "uint32", _OPTIONAL, "", False),
        ("bias_term", 2, "bool", _OPTIONAL, "", False),
    ],
    "BatchNormParameter": [
        ("use_global_stats", 1, "bool", _OPTIONAL, "", False),
        ("eps", 3, "float", _OPTIONAL, "", False),
    ],
    "ScaleParameter": [
        ("axis", 1, "int32", _OPTIONAL, "", False),
        ("bias_term", 4, "bool", _OPTIONAL, "", False),
    ],
    "EltwiseParameter": [("operation", 1, "enum", _OPTIONAL, "EltwiseParameter.EltwiseOp", False)],
    "ConcatParameter": [("axis", 2, "int32", _OPTIONAL, "", False)],
    "SliceParameter": [
        ("slice_point", 2, "uint32", _REPEATED, "", False),
        ("axis", 3, "int32", _OPTIONAL, "", False),
    ],
    "InputParameter": [("shape", 1, "message", _REPEATED, "BlobShape", False)],
    "PowerParameter": [
        ("power", 1, "float", _OPTIONAL, "", False),
        ("scale", 2, "float", _OPTIONAL, "", False),
        ("shift", 3, "float", _OPTIONAL, "", False),
    ],
    "FlattenParameter": [("axis", 1, "int32", _OPTIONAL, "", False)],
}
PACKAGE = "caffe"
# Floats stored one field each (legal protobuf, never written by Caffe, which packs them): each
# costs 5 bytes on disk but 4 in memory only when gathered into an array, and a loop per value;
# a file of 400 MB of them would take minutes. Far more than any bias or BN blob of ResNeXt.
MAX_UNPACKED_FLOATS = 1 << 20


@cache
def message_classes() -> dict[str, type]:
    """Message classes of the schema above, built in a private descriptor pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    file = descriptor_pb2.FileDescriptorProto(name="resnext_caffe_subset.proto",
                                              package=PACKAGE, syntax="proto2")
    for message_name, fields in _MESSAGES.items():
        message = file.message_type.add(name=message_name)
        for enum_name, (owner, values) in _ENUMS.items():
            if owner == message_name:
                enum = message.enum_type.add(name=enum_name)
                for value_name, number in values.items():
                    enum.value.add(name=value_name, number=number)
        for name, number, kind, label, type_name, packed in fields:
            entry = message.field.add(name=name, number=number, type=_TYPES[kind], label=label)
            if type_name:
                entry.type_name = f".{PACKAGE}.{type_name}"
            if packed:
                entry.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
            for name in _MESSAGES}


# -- writing ------------------------------------------------------------------------------

def blob_frame_prefix(shape: tuple[int, ...]) -> bytes:
    """A `LayerParameter.blobs` field up to its float32 data, which follows as raw bytes."""
    dims = b"".join(varint(d) for d in shape)
    shape_message = frame(SHAPE_DIM, len(dims)) + dims if shape else b""
    nbytes = 4 * int(np.prod(shape, dtype=np.int64))
    head = frame(BLOB_SHAPE, len(shape_message)) + shape_message + frame(BLOB_DATA, nbytes)
    return frame(LAYER_BLOBS, len(head) + nbytes) + head


# -- reading ------------------------------------------------------------------------------

@dataclass
class CaffeLayer:
    """One layer of a caffemodel: its definition (no blobs) and its blobs as float32 arrays."""

    name: str
    type: str
    definition: Any  # a LayerParameter message without blobs
    blobs: list[np.ndarray] = field(default_factory=list)


class _Reader:
    """Walks the message structure in a memory map; blob data is read with plain file reads
    into fresh arrays, so the weights' pages are never mapped (and never counted twice)."""

    def __init__(self, data: memoryview, handle: BinaryIO, path: Path):
        self.data, self.handle, self.path = data, handle, path
        self.unpacked = 0  # unpacked floats read so far (MAX_UNPACKED_FLOATS)

    def array(self, start: int, end: int, dtype: str) -> np.ndarray:
        out = np.empty((end - start) // np.dtype(dtype).itemsize, dtype)
        self.handle.seek(start)
        if self.handle.readinto(memoryview(out).cast("B")) != end - start:
            raise self.fail("truncated: the file ends inside a blob")
        return out

    def fail(self, why: str) -> UserError:
        return UserError(f"{self.path}: not a readable Caffe model ({why})")

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        try:
            return read_varint(self.data, pos, end)
        except WireError as exc:
            raise self.fail(str(exc)) from None

    def fields(self, pos: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
        """(field number, wire type, value or payload start, payload end, field start)."""
        try:
            yield from wire_fields(self.data, pos, end)
        except WireError as exc:
            raise self.fail(str(exc)) from None


def _blob(reader: _Reader, start: int, end: int, where: str) -> np.ndarray:
    shape: list[int] = []
    legacy = [0, 0, 0, 0]
    data: np.ndarray | None = None
    floats = array.array("f")
    for number, wire, a, b, _ in reader.fields(start, end):
        if number == BLOB_SHAPE and wire == LENGTH_DELIMITED:
            for dim_number, dim_wire, value, dim_end, _ in reader.fields(a, b):
                if dim_number != SHAPE_DIM:
                    continue
                if dim_wire == LENGTH_DELIMITED:  # packed
                    pos = value
                    while pos < dim_end:
                        dim, pos = reader.varint(pos, dim_end)
                        shape.append(dim)
                elif dim_wire == VARINT:
                    shape.append(value)
        elif BLOB_NUM <= number <= BLOB_WIDTH and wire == VARINT:
            legacy[number - 1] = a
        elif number in (BLOB_DATA, BLOB_DOUBLE_DATA) and wire == LENGTH_DELIMITED:  # packed
            dtype = "<f4" if number == BLOB_DATA else "<f8"
            size = np.dtype(dtype).itemsize
            if (b - a) % size:
                raise reader.fail(f"{where}: blob data of {b - a} bytes is not whole numbers")
            data = reader.array(a, b, dtype).astype(np.float32, copy=False)
        elif number == BLOB_DATA and wire == FIXED32:  # unpacked floats, one per field
            reader.unpacked += 1
            if reader.unpacked > MAX_UNPACKED_FLOATS:
                raise reader.fail(f"{where}: more than {MAX_UNPACKED_FLOATS:,} floats stored "
                                  "unpacked (one protobuf field each, 5 bytes apiece on disk "
                                  "and far more once read); re-save the model with packed "
                                  "blob data")
            floats.append(struct.unpack("<f", reader.data[a:b])[0])
    if data is None:
        data = np.frombuffer(floats, np.float32) if floats else np.zeros(0, np.float32)
    if not shape and any(legacy):
        # Pre-1.0 blobs are always 4-D (num, channels, height, width): a bias is 1x1x1xC, an
        # InnerProduct weight 1x1xOUTxIN. Leading ones are dropped to get the real shape.
        while len(legacy) > 1 and legacy[0] == 1:
            legacy.pop(0)
        shape = legacy
    elif not shape:
        shape = [data.size]
    if math.prod(shape) != data.size:  # exact: numpy's int64 product wraps at 2**63
        raise reader.fail(f"{where}: blob shape {shape} does not hold its {data.size} values")
    return data.reshape(shape)


def read_net(path: str | Path) -> tuple[str, list[CaffeLayer]]:
    """(net name, layers with blobs) of a binary NetParameter; UserError if it is not one."""
    from google.protobuf.message import DecodeError

    path = Path(path)
    layer_class = message_classes()["LayerParameter"]
    # the opener refuses a FIFO, device or link loop, and anything over protobuf's 2 GiB
    with open_named(path, CAFFE_MODEL, None) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise UserError(f"{path}: not a readable Caffe model (empty file)")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            reader = _Reader(memoryview(mm), handle, path)
            try:
                name, layers = "", []
                for number, wire, a, b, _ in reader.fields(0, size):
                    if number == NET_NAME and wire == LENGTH_DELIMITED:
                        name = bytes(reader.data[a:b]).decode("utf-8", "replace")
                    elif number == NET_LAYERS_V1 and wire == LENGTH_DELIMITED:
                        raise UserError(f"{path}: a legacy (V1 `layers`) Caffe model; upgrade "
                                        "it with Caffe's upgrade_net_proto_binary first")
                    elif number == NET_LAYER and wire == LENGTH_DELIMITED:
                        layers.append(_layer(reader, a, b, layer_class, len(layers),
                                             DecodeError))
            finally:
                reader.data.release()
    if not layers:
        raise UserError(f"{path}: not a Caffe model (no layers)")
    return name, layers


def _layer(reader: _Reader, start: int, end: int, layer_class: type, index: int,
           decode_error: type[Exception]) -> CaffeLayer:
    head = bytearray()
    blob_spans = []
    for number, wire, a, b, field_start in reader.fields(start, end):
        if number == LAYER_BLOBS and wire == LENGTH_DELIMITED:
            blob_spans.append((a, b))
        else:
            head += reader.data[field_start:b]
    definition = layer_class()
    try:
        definition.ParseFromString(bytes(head))
    except decode_error as exc:
        raise reader.fail(f"layer {index + 1}: {exc}") from None
    where = f"layer {definition.name or index + 1!r}"
    blobs = [_blob(reader, a, b, where) for a, b in blob_spans]
    return CaffeLayer(definition.name, definition.type, definition, blobs)
