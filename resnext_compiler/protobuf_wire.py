"""Protobuf's wire format, the few rules the streaming writers and readers need.

A length-delimited field is `tag, varint(length), payload`, and a tag is
`varint(field number << 3 | wire type)` (https://protobuf.dev/programming-guides/encoding/).
Knowing a tensor's byte length before its data exists lets a writer frame a message around
weights it streams from disk, instead of building the whole message in memory; walking the
fields of a file lets a reader skip weights it does not need without ever holding them.
"""

from __future__ import annotations

from collections.abc import Iterator

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
# protobuf refuses to parse a message of 2 GiB or more.
PROTOBUF_LIMIT = 2**31 - 1


class WireError(ValueError):
    """Bytes that are not protobuf's wire format (the caller adds which file)."""


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def tag(field: int, wire_type: int = LENGTH_DELIMITED) -> bytes:
    return varint(field << 3 | wire_type)


def frame(field: int, length: int) -> bytes:
    """The bytes before a length-delimited field's `length` bytes of payload."""
    return tag(field) + varint(length)


def read_varint(data: memoryview | bytes, pos: int, end: int) -> tuple[int, int]:
    """(value, position after it) of the varint at `pos`; WireError when malformed."""
    value = shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated: the data ends inside a number")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise WireError("malformed varint")


def fields(data: memoryview | bytes, pos: int, end: int
           ) -> Iterator[tuple[int, int, int, int, int]]:
    """The fields of the message in data[pos:end]: (field number, wire type, value or payload
    start, payload end, field start). Payloads are not copied."""
    while pos < end:
        start = pos
        key, pos = read_varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == VARINT:
            value, pos = read_varint(data, pos, end)
            yield number, wire, value, pos, start
        elif wire == LENGTH_DELIMITED:
            length, pos = read_varint(data, pos, end)
            if pos + length > end:
                raise WireError("truncated: a field runs past the end of its message")
            yield number, wire, pos, pos + length, start
            pos += length
        elif wire in (FIXED32, FIXED64):
            size = 4 if wire == FIXED32 else 8
            if pos + size > end:
                raise WireError("truncated: the data ends inside a number")
            yield number, wire, pos, pos + size, start
            pos += size
        else:
            raise WireError(f"wire type {wire} is not protobuf's")
