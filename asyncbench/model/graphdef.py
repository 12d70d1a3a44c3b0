"""Read a TensorFlow frozen GraphDef from protobuf wire format, without TensorFlow.

Only the parts a frozen inference graph uses are decoded: node name/op/inputs and the
attributes holding constants (tensors), strings, ints, floats, lists and dtypes. This is
enough to lift MobileNet v1's weights and wiring out of a `.pb` file.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# TensorFlow DataType enum values -> numpy dtypes (types.proto).
_TF_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.float32),
    2: np.dtype(np.float64),
    3: np.dtype(np.int32),
    4: np.dtype(np.uint8),
    5: np.dtype(np.int16),
    6: np.dtype(np.int8),
    9: np.dtype(np.int64),
    10: np.dtype(np.bool_),
    19: np.dtype(np.float16),
}


class GraphDefError(ValueError):
    """The bytes are not a GraphDef this reader understands."""


@dataclass
class Node:
    """One NodeDef: its attributes are decoded lazily-agnostic plain Python values."""

    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise GraphDefError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise GraphDefError("varint too long")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """Yield (field_number, wire_type, value) for each field of one message.

    The value is an int for a varint and a memoryview of the raw bytes otherwise; it is typed Any
    because callers know which from the field number, as protobuf's schema says.
    """
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        val: int | memoryview
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 1:
            val = buf[pos : pos + 8]
            pos += 8
        elif wt == 2:
            ln, pos = _varint(buf, pos)
            val = buf[pos : pos + ln]
            pos += ln
        elif wt == 5:
            val = buf[pos : pos + 4]
            pos += 4
        else:
            raise GraphDefError(f"unsupported wire type {wt}")
        if pos > end:
            raise GraphDefError("truncated field")
        yield num, wt, val


def _packed_or_single(wt: int, val: Any, fmt: str) -> list:
    if wt == 2:  # packed
        if fmt in "fd":
            return list(struct.unpack(f"<{len(val) // struct.calcsize(fmt)}{fmt}", val))
        out, pos = [], 0
        while pos < len(val):
            v, pos = _varint(val, pos)
            out.append(v)
        return out
    if fmt == "f":
        return [struct.unpack("<f", val)[0]]
    return [val]


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _shape(buf: memoryview) -> list[int]:
    dims = []
    for num, _, val in _fields(buf):
        if num == 2:
            size = 0
            for n2, _, v2 in _fields(val):
                if n2 == 1:
                    size = _signed64(v2)
            dims.append(size)
    return dims


def _tensor(buf: memoryview) -> np.ndarray:
    dtype_enum, shape, content = 1, [], None
    values: list = []
    for num, wt, val in _fields(buf):
        if num == 1:
            dtype_enum = val
        elif num == 2:
            shape = _shape(val)
        elif num == 4:
            content = bytes(val)
        elif num == 5:
            values += _packed_or_single(wt, val, "f")
        elif num in (7, 10):
            values += [_signed64(v) for v in _packed_or_single(wt, val, "v")]
    if dtype_enum not in _TF_DTYPES:
        raise GraphDefError(f"unsupported tensor dtype enum {dtype_enum}")
    dtype = _TF_DTYPES[dtype_enum]
    count = int(np.prod(shape)) if shape else 1
    if content is not None:
        arr = np.frombuffer(content, dtype=dtype).copy()
    elif values:
        arr = np.array(values, dtype=dtype)
        if arr.size == 1 and count != 1:
            arr = np.full(count, arr[0], dtype=dtype)
    else:
        arr = np.zeros(count, dtype=dtype)
    if arr.size != count:
        raise GraphDefError(f"tensor has {arr.size} values for shape {shape}")
    return arr.reshape(shape)


def _list(buf: memoryview) -> list:
    out: list = []
    for num, wt, val in _fields(buf):
        if num == 2:
            out.append(bytes(val).decode())
        elif num == 3:
            out += [_signed64(v) for v in _packed_or_single(wt, val, "v")]
        elif num == 4:
            out += _packed_or_single(wt, val, "f")
    return out


def _attr(buf: memoryview) -> Any:
    for num, _, val in _fields(buf):
        if num == 1:
            return _list(val)
        if num == 2:
            return bytes(val).decode(errors="replace")
        if num == 3:
            return _signed64(val)
        if num == 4:
            return struct.unpack("<f", val)[0]
        if num == 5:
            return bool(val)
        if num == 6:
            return ("dtype", val)
        if num == 7:
            return _shape(val)
        if num == 8:
            return _tensor(val)
    return None


def _node(buf: memoryview) -> Node:
    node = Node(name="", op="")
    for num, _, val in _fields(buf):
        if num == 1:
            node.name = bytes(val).decode()
        elif num == 2:
            node.op = bytes(val).decode()
        elif num == 3:
            node.inputs.append(bytes(val).decode())
        elif num == 5:
            key, value = "", None
            for n2, _, v2 in _fields(val):
                if n2 == 1:
                    key = bytes(v2).decode()
                elif n2 == 2:
                    value = _attr(v2)
            node.attrs[key] = value
    return node


def parse_graphdef(data: bytes) -> dict[str, Node]:
    """Parse a serialized GraphDef into {node name: Node}, in file order."""
    nodes: dict[str, Node] = {}
    try:
        for num, wt, val in _fields(memoryview(data)):
            if num == 1 and wt == 2:
                node = _node(val)
                nodes[node.name] = node
    except GraphDefError:
        raise
    except (ValueError, TypeError, OverflowError, MemoryError, struct.error) as e:
        # A field of the wrong wire type, bad UTF-8, a content size or shape that makes no sense.
        raise GraphDefError(f"malformed GraphDef ({type(e).__name__}: {e})") from None
    if not nodes:
        raise GraphDefError("no nodes found")
    return nodes
