"""A tiny protobuf encoder for TensorFlow GraphDef messages, used to build test graphs by hand.

Field numbers follow TensorFlow's graph.proto, node_def.proto, attr_value.proto, tensor.proto
and tensor_shape.proto. Only what the reader under test decodes is covered, plus a few
fields it must skip. Encoding is independent of asyncbench, so the tests check the decoder
against the wire format rather than against itself.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

import numpy as np

# Wire types.
VARINT, FIXED64, LEN, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5

# TensorFlow DataType enum values (types.proto).
DT_FLOAT, DT_INT32, DT_STRING, DT_INT64 = 1, 3, 7, 9
_DT_OF = {np.dtype(np.float32): DT_FLOAT, np.dtype(np.int32): DT_INT32, np.dtype(np.int64): DT_INT64}


# --- wire format -------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    """Base-128 varint; negative values are sign-extended to 64 bits (10 bytes), as protobuf does."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(field: int, wire_type: int) -> bytes:
    """A field key: (field number << 3) | wire type."""
    return varint((field << 3) | wire_type)


def f_varint(field: int, value: int) -> bytes:
    """A varint field (int32/int64/enum/bool)."""
    return key(field, VARINT) + varint(value)


def f_bytes(field: int, data: bytes | str) -> bytes:
    """A length-delimited field: bytes, a string (UTF-8) or an embedded message."""
    raw = data.encode() if isinstance(data, str) else data
    return key(field, LEN) + varint(len(raw)) + raw


def f_fixed32(field: int, value: float) -> bytes:
    """A non-packed float field."""
    return key(field, FIXED32) + struct.pack("<f", value)


def f_fixed64(field: int, value: float) -> bytes:
    """A non-packed double field (used only as an unknown field the reader must skip)."""
    return key(field, FIXED64) + struct.pack("<d", value)


def f_packed_varints(field: int, values: Iterable[int]) -> bytes:
    """A packed repeated varint field."""
    return f_bytes(field, b"".join(varint(int(v)) for v in values))


def f_packed_floats(field: int, values: Sequence[float]) -> bytes:
    """A packed repeated float field."""
    return f_bytes(field, struct.pack(f"<{len(values)}f", *values))


# --- messages ----------------------------------------------------------------------------------


def shape_proto(dims: Sequence[int]) -> bytes:
    """TensorShapeProto: dim=2 {size=1}."""
    return b"".join(f_bytes(2, f_varint(1, d)) for d in dims)


def tensor_proto(array: np.ndarray, *, content: bool = True) -> bytes:
    """TensorProto for a float32/int32/int64 array: tensor_content bytes, or float_val/int_val/int64_val."""
    arr = np.asarray(array)
    dtype = _DT_OF[arr.dtype]
    out = f_varint(1, dtype) + f_bytes(2, shape_proto(arr.shape))
    if content:
        return out + f_bytes(4, arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    flat = arr.reshape(-1).tolist()
    if dtype == DT_FLOAT:
        return out + f_packed_floats(5, flat)
    return out + f_packed_varints(7 if dtype == DT_INT32 else 10, flat)


def list_value(*, s: Sequence[str] = (), i: Sequence[int] = (), f: Sequence[float] = ()) -> bytes:
    """AttrValue.ListValue: s=2 (repeated), i=3 (packed), f=4 (packed)."""
    out = b"".join(f_bytes(2, x) for x in s)
    if i:
        out += f_packed_varints(3, i)
    if f:
        out += f_packed_floats(4, f)
    return out


def attr_list(*, s: Sequence[str] = (), i: Sequence[int] = (), f: Sequence[float] = ()) -> bytes:
    """AttrValue holding a list."""
    return f_bytes(1, list_value(s=s, i=i, f=f))


def attr_s(value: str) -> bytes:
    """AttrValue holding a string."""
    return f_bytes(2, value)


def attr_i(value: int) -> bytes:
    """AttrValue holding an int64."""
    return f_varint(3, value)


def attr_f(value: float) -> bytes:
    """AttrValue holding a float (fixed32)."""
    return f_fixed32(4, value)


def attr_b(value: bool) -> bytes:
    """AttrValue holding a bool."""
    return f_varint(5, int(value))


def attr_type(dtype: int) -> bytes:
    """AttrValue holding a DataType enum."""
    return f_varint(6, dtype)


def attr_shape(dims: Sequence[int]) -> bytes:
    """AttrValue holding a TensorShapeProto."""
    return f_bytes(7, shape_proto(dims))


def attr_tensor(tensor: bytes) -> bytes:
    """AttrValue holding an encoded TensorProto."""
    return f_bytes(8, tensor)


def node_def(name: str, op: str, inputs: Sequence[str] = (), attrs: dict[str, bytes] | None = None,
             device: str = "") -> bytes:
    """NodeDef: name=1, op=2, input=3, device=4 (skipped by the reader), attr=5 map entries {key=1, value=2}."""
    out = f_bytes(1, name) + f_bytes(2, op) + b"".join(f_bytes(3, i) for i in inputs)
    if device:
        out += f_bytes(4, device)
    for k, v in (attrs or {}).items():
        out += f_bytes(5, f_bytes(1, k) + f_bytes(2, v))
    return out


def graph_def(nodes: Iterable[bytes], *, versions: bool = True) -> bytes:
    """GraphDef: node=1 repeated, plus a VersionDef (field 4) as TensorFlow writes it."""
    out = b"".join(f_bytes(1, n) for n in nodes)
    if versions:
        out += f_bytes(4, f_varint(1, 27))  # VersionDef.producer
    return out


# --- TensorFlow graphs -------------------------------------------------------------------------


class GraphBuilder:
    """Collects NodeDefs the way a frozen TensorFlow graph spells them."""

    def __init__(self) -> None:
        self.nodes: list[bytes] = []

    def add(self, name: str, op: str, inputs: Sequence[str] = (), **attrs: bytes) -> str:
        """Append one node; returns its name so calls can be chained."""
        self.nodes.append(node_def(name, op, inputs, attrs))
        return name

    def placeholder(self, name: str, shape: Sequence[int]) -> str:
        """A float Placeholder with a static shape."""
        return self.add(name, "Placeholder", dtype=attr_type(DT_FLOAT), shape=attr_shape(shape))

    def const(self, name: str, value: np.ndarray) -> str:
        """A Const node holding value (as tensor_content)."""
        value = np.asarray(value)
        return self.add(name, "Const", dtype=attr_type(_DT_OF[value.dtype]), value=attr_tensor(tensor_proto(value)))

    def variable(self, name: str, value: np.ndarray) -> str:
        """A frozen variable: Const `name` read through Identity `name/read`."""
        self.const(name, value)
        return self.add(f"{name}/read", "Identity", [name], T=attr_type(DT_FLOAT))

    def conv(self, name: str, x: str, weights: np.ndarray, stride: int, padding: str, depthwise: bool = False) -> str:
        """Conv2D (weights HWIO) or DepthwiseConv2dNative (weights HWCM), NHWC."""
        w = self.variable(f"{name}/weights" if not depthwise else f"{name}/depthwise_weights", weights)
        op = "DepthwiseConv2dNative" if depthwise else "Conv2D"
        return self.add(f"{name}/{op}", op, [x, w], T=attr_type(DT_FLOAT), strides=attr_list(i=[1, stride, stride, 1]),
                        padding=attr_s(padding), data_format=attr_s("NHWC"), dilations=attr_list(i=[1, 1, 1, 1]))

    def batch_norm(self, name: str, x: str, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray,
                   eps: float) -> str:
        """Batch norm as TF freezes it: x * (rsqrt(var + eps) * gamma) + (beta - mean * rsqrt(var + eps) * gamma)."""
        bn = f"{name}/BatchNorm"
        g = self.variable(f"{bn}/gamma", gamma)
        b = self.variable(f"{bn}/beta", beta)
        m = self.variable(f"{bn}/moving_mean", mean)
        v = self.variable(f"{bn}/moving_variance", var)
        e = self.const(f"{bn}/batchnorm/add/y", np.array(eps, np.float32))
        t = {"T": attr_type(DT_FLOAT)}
        add = self.add(f"{bn}/batchnorm/add", "Add", [v, e], **t)
        rsqrt = self.add(f"{bn}/batchnorm/Rsqrt", "Rsqrt", [add], **t)
        scale = self.add(f"{bn}/batchnorm/mul", "Mul", [rsqrt, g], **t)
        mul_1 = self.add(f"{bn}/batchnorm/mul_1", "Mul", [x, scale], **t)
        mul_2 = self.add(f"{bn}/batchnorm/mul_2", "Mul", [m, scale], **t)
        sub = self.add(f"{bn}/batchnorm/sub", "Sub", [b, mul_2], **t)
        return self.add(f"{bn}/batchnorm/add_1", "Add", [mul_1, sub], **t)

    def serialize(self) -> bytes:
        """The GraphDef bytes."""
        return graph_def(self.nodes)
