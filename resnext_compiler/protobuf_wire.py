"""Protobuf's wire format, the few rules the streaming writers need.

A length-delimited field is `tag, varint(length), payload`, and a tag is
`varint(field number << 3 | wire type)` (https://protobuf.dev/programming-guides/encoding/).
Knowing a tensor's byte length before its data exists lets a writer frame a message around
weights it streams from disk, instead of building the whole message in memory.
"""

from __future__ import annotations

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
# protobuf refuses to parse a message of 2 GiB or more.
PROTOBUF_LIMIT = 2**31 - 1


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
