"""The GraphDef wire-format reader against GraphDefs encoded by hand (tests/tf_graph_builder.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tf_graph_builder import (
    DT_FLOAT,
    DT_INT32,
    DT_STRING,
    END_GROUP,
    START_GROUP,
    VARINT,
    attr_b,
    attr_f,
    attr_i,
    attr_list,
    attr_s,
    attr_shape,
    attr_tensor,
    attr_type,
    f_bytes,
    f_fixed32,
    f_fixed64,
    f_packed_floats,
    f_packed_varints,
    f_varint,
    graph_def,
    key,
    node_def,
    shape_proto,
    tensor_proto,
    varint,
)

from asyncbench.model.graphdef import GraphDefError, Node, parse_graphdef

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def _one_attr(value: bytes, name: str = "value") -> object:
    """Parse a one-node graph whose only attribute is `name` and return the decoded value."""
    nodes = parse_graphdef(graph_def([node_def("n", "Const", attrs={name: value})]))
    return nodes["n"].attrs[name]


def _tensor(tensor: bytes) -> np.ndarray:
    """Decode an encoded TensorProto through a Const node's `value` attribute."""
    value = _one_attr(attr_tensor(tensor))
    assert isinstance(value, np.ndarray)
    return value


# --- the encoder itself (so a wrong encoder cannot hide a wrong decoder) --------------------------


def test_encoder_matches_protobuf_spec_examples() -> None:
    # Examples from the protobuf encoding guide.
    assert varint(1) == b"\x01"
    assert varint(150) == b"\x96\x01"
    assert varint(300) == b"\xac\x02"
    assert varint(-1) == b"\xff" * 9 + b"\x01"
    assert f_varint(1, 150) == b"\x08\x96\x01"
    assert f_bytes(2, "testing") == b"\x12\x07testing"
    assert f_packed_varints(4, [3, 270, 86942]) == b"\x22\x06\x03\x8e\x02\x9e\xa7\x05"


# --- nodes ---------------------------------------------------------------------------------------


def test_nodes_in_file_order_with_inputs_and_unknown_fields_skipped() -> None:
    data = graph_def([
        node_def("input", "Placeholder", device="/cpu:0"),
        node_def("a", "Identity", ["input:0"]),
        node_def("b", "AddV2", ["a", "input", "^a"], device="/gpu:0"),
    ])
    # Unknown fields of every skippable wire type, at the GraphDef and NodeDef level.
    data += f_fixed64(9, 1.5) + f_fixed32(10, 2.5) + f_varint(11, 7) + f_bytes(12, b"library")
    nodes = parse_graphdef(data)
    assert list(nodes) == ["input", "a", "b"]
    assert nodes["b"] == Node("b", "AddV2", ["a", "input", "^a"], {})
    assert nodes["a"].inputs == ["input:0"]
    assert nodes["input"].op == "Placeholder"


def test_scalar_attrs() -> None:
    attrs = {
        "padding": attr_s("SAME"),
        "axis": attr_i(3),
        "alpha": attr_f(0.2),
        "on": attr_b(True),
        "off": attr_b(False),
        "dtype": attr_type(DT_INT32),
    }
    node = parse_graphdef(graph_def([node_def("n", "Op", attrs=attrs)]))["n"]
    assert node.attrs["padding"] == "SAME"
    assert node.attrs["axis"] == 3
    assert node.attrs["alpha"] == float(np.float32(0.2))
    assert node.attrs["on"] is True
    assert node.attrs["off"] is False
    assert node.attrs["dtype"] == ("dtype", DT_INT32)


@pytest.mark.parametrize("value", [-1, -2, -(1 << 31), INT64_MIN, INT64_MAX, 0, 1 << 40])
def test_int64_attr_sign(value: int) -> None:
    assert _one_attr(attr_i(value)) == value


def test_list_attrs() -> None:
    assert _one_attr(attr_list(i=[1, 2, 2, 1])) == [1, 2, 2, 1]
    assert _one_attr(attr_list(i=[-1, 0, INT64_MIN, INT64_MAX])) == [-1, 0, INT64_MIN, INT64_MAX]
    assert _one_attr(attr_list(s=["NHWC", "", "x/y:0"])) == ["NHWC", "", "x/y:0"]
    floats = _one_attr(attr_list(f=[0.5, -1.25, 3.0e-7]))
    assert floats == [0.5, -1.25, float(np.float32(3.0e-7))]
    assert _one_attr(attr_list()) == []


def test_list_attr_unpacked_ints() -> None:
    # proto2 writers may emit repeated ints one field at a time; the reader must accept both.
    value = f_bytes(1, f_varint(3, 1) + f_varint(3, -7) + f_packed_varints(3, [5, 6]))
    assert _one_attr(value) == [1, -7, 5, 6]


@given(st.lists(st.integers(INT64_MIN, INT64_MAX), max_size=20))
@settings(max_examples=60, deadline=None)
def test_list_int_roundtrip(values: list[int]) -> None:
    assert _one_attr(attr_list(i=values)) == values


@pytest.mark.parametrize("dims", [[-1, 224, 224, 3], [1, 8, 8, 3], [], [0], [-1]])
def test_shape_attr(dims: list[int]) -> None:
    assert _one_attr(attr_shape(dims), "shape") == dims


# --- tensors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.int64])
def test_tensor_content(dtype: type) -> None:
    rng = np.random.default_rng(7)
    arr = (rng.standard_normal((2, 3, 4)) * 1000).astype(dtype)
    arr.flat[0] = -5  # a negative value in every dtype
    out = _tensor(tensor_proto(arr))
    assert out.dtype == np.dtype(dtype)
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable  # a copy, not a view of the GraphDef bytes


def test_tensor_content_is_little_endian_float32() -> None:
    raw = f_varint(1, DT_FLOAT) + f_bytes(2, shape_proto([2])) + f_bytes(4, b"\x00\x00\x80\x3f\x00\x00\x00\xc0")
    np.testing.assert_array_equal(_tensor(raw), np.array([1.0, -2.0], np.float32))


@pytest.mark.parametrize("shape", [[2, 3], [1, 1, 1, 5], [4]])
def test_float_val_single_value_broadcasts(shape: list[int]) -> None:
    raw = f_varint(1, DT_FLOAT) + f_bytes(2, shape_proto(shape)) + f_packed_floats(5, [0.001])
    out = _tensor(raw)
    assert out.shape == tuple(shape)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.full(shape, np.float32(0.001)))


def test_float_val_unpacked_single_value_broadcasts() -> None:
    raw = f_varint(1, DT_FLOAT) + f_bytes(2, shape_proto([3])) + f_fixed32(5, -2.5)
    np.testing.assert_array_equal(_tensor(raw), np.full(3, -2.5, np.float32))


def test_float_val_full() -> None:
    arr = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    np.testing.assert_array_equal(_tensor(tensor_proto(arr, content=False)), arr)


def test_int_val_negative_and_broadcast() -> None:
    arr = np.array([[-1, 2], [-(1 << 31), (1 << 31) - 1]], np.int32)
    out = _tensor(tensor_proto(arr, content=False))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, arr)
    raw = f_varint(1, DT_INT32) + f_bytes(2, shape_proto([2, 2])) + f_varint(7, -3)
    np.testing.assert_array_equal(_tensor(raw), np.full((2, 2), -3, np.int32))


def test_int64_val() -> None:
    arr = np.array([-1, INT64_MIN, INT64_MAX], np.int64)
    out = _tensor(tensor_proto(arr, content=False))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, arr)


def test_scalar_tensors() -> None:
    scalar = _tensor(tensor_proto(np.array(0.001, np.float32), content=False))
    assert scalar.shape == ()
    assert scalar == np.float32(0.001)
    # A shape with no values means zeros.
    empty = _tensor(f_varint(1, DT_FLOAT) + f_bytes(2, shape_proto([2, 2])))
    np.testing.assert_array_equal(empty, np.zeros((2, 2), np.float32))


def test_tensor_value_count_mismatch() -> None:
    raw = f_varint(1, DT_FLOAT) + f_bytes(2, shape_proto([2, 3])) + f_packed_floats(5, [1.0, 2.0])
    with pytest.raises(GraphDefError, match="2 values"):
        _tensor(raw)
    raw = f_varint(1, DT_INT32) + f_bytes(2, shape_proto([4])) + f_bytes(4, np.arange(3, dtype=np.int32).tobytes())
    with pytest.raises(GraphDefError, match="3 values"):
        _tensor(raw)


def test_unsupported_tensor_dtype() -> None:
    raw = f_varint(1, DT_STRING) + f_bytes(2, shape_proto([1]))
    with pytest.raises(GraphDefError, match="dtype enum 7"):
        _tensor(raw)


# --- damaged input -------------------------------------------------------------------------------


def _sample_graph() -> list[bytes]:
    """Three nodes with nested attributes, encoded separately so their boundaries are known."""
    weights = np.random.default_rng(3).standard_normal((3, 3, 3, 8)).astype(np.float32)
    return [
        node_def("input", "Placeholder", attrs={"shape": attr_shape([-1, 8, 8, 3]), "dtype": attr_type(DT_FLOAT)}),
        node_def("w", "Const", attrs={"value": attr_tensor(tensor_proto(weights))}),
        node_def("conv", "Conv2D", ["input", "w"], {"strides": attr_list(i=[1, 2, 2, 1]), "padding": attr_s("SAME")}),
    ]


def test_every_truncation_is_detected() -> None:
    nodes = _sample_graph()
    data = graph_def(nodes, versions=False)
    assert len(parse_graphdef(data)) == 3
    boundaries, pos = set(), 0
    for n in nodes:
        pos += len(f_bytes(1, n))
        boundaries.add(pos)
    for cut in range(len(data)):
        if cut in boundaries:  # a whole number of nodes: a shorter but valid graph
            assert len(parse_graphdef(data[:cut])) == sorted(boundaries).index(cut) + 1
            continue
        with pytest.raises(GraphDefError):
            parse_graphdef(data[:cut])


def test_truncated_inside_nested_message() -> None:
    # The outer lengths are intact but the tensor's content field claims more bytes than exist.
    bad_tensor = f_varint(1, DT_FLOAT) + f_bytes(2, shape_proto([4])) + key(4, 2) + varint(16) + b"\x00" * 8
    with pytest.raises(GraphDefError, match="truncated"):
        _one_attr(attr_tensor(bad_tensor))


def test_truncated_varint() -> None:
    with pytest.raises(GraphDefError, match="truncated varint"):
        parse_graphdef(key(1, 2) + b"\x85")


def test_overlong_varint() -> None:
    with pytest.raises(GraphDefError, match="varint too long"):
        parse_graphdef(key(1, 2) + b"\x80" * 10 + b"\x01")


@pytest.mark.parametrize("wire_type", [START_GROUP, END_GROUP, 6, 7])
def test_unknown_wire_type_top_level(wire_type: int) -> None:
    data = graph_def([node_def("a", "NoOp")], versions=False) + key(2, wire_type) + b"\x00" * 8
    with pytest.raises(GraphDefError, match=f"wire type {wire_type}"):
        parse_graphdef(data)


def test_unknown_wire_type_nested() -> None:
    node = node_def("a", "NoOp") + key(6, 7) + b"\x00"
    with pytest.raises(GraphDefError, match="wire type 7"):
        parse_graphdef(graph_def([node]))


@pytest.mark.parametrize("data", [b"", f_varint(4, 27), f_bytes(4, f_varint(1, 27))])
def test_no_nodes(data: bytes) -> None:
    with pytest.raises(GraphDefError, match="no nodes"):
        parse_graphdef(data)


def test_varint_field_where_node_expected_is_not_a_node() -> None:
    # field 1 as a varint is not a NodeDef; it must not be taken for one.
    with pytest.raises(GraphDefError, match="no nodes"):
        parse_graphdef(key(1, VARINT) + varint(5))


@pytest.mark.parametrize(
    "node",
    [
        f_bytes(1, b"bad\xff\xfename") + f_bytes(2, "Const"),  # invalid UTF-8 in a name
        node_def("n", "Op", attrs={"alpha": f_varint(4, 5)}),  # a float attr sent as a varint
        node_def("n", "Op", attrs={"shape": f_varint(7, 3)}),  # a shape sent as a varint
        node_def("n", "Op", attrs={"value": attr_tensor(f_varint(1, DT_FLOAT) + f_bytes(4, b"\x00" * 5))}),
    ],
    ids=["utf8", "float-as-varint", "shape-as-varint", "content-size"],
)
def test_malformed_fields_raise_graphdef_error(node: bytes) -> None:
    with pytest.raises(GraphDefError, match="malformed GraphDef"):
        parse_graphdef(graph_def([node]))


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_corrupted_bytes_raise_only_graphdef_error(data: st.DataObject) -> None:
    # Whatever a damaged file holds, the reader either parses it or raises GraphDefError (no other exception).
    base = bytearray(graph_def(_sample_graph()))
    for _ in range(data.draw(st.integers(1, 4))):
        base[data.draw(st.integers(0, len(base) - 1))] = data.draw(st.integers(0, 255))
    try:
        nodes = parse_graphdef(bytes(base))
    except GraphDefError:
        return
    assert all(isinstance(n, Node) for n in nodes.values())
