"""Convert the frozen TensorFlow MobileNet v1 GraphDef into an fp32 ONNX model.

The graph is translated op by op (no TensorFlow needed): constant sub-graphs are folded
in numpy, batch norm (decomposed by TF into Mul/Add with constant operands) is folded into
the preceding convolution, NHWC becomes NCHW behind one input Transpose, and TF's SAME
padding becomes explicit (possibly asymmetric) ONNX pads. The result keeps the names of
MLPerf's float model: input ``input:0`` (NHWC, values ``(pixel - 128) / 128``) and output
``MobilenetV1/Predictions/Reshape_1:0`` (softmax over 1001 classes, 0 = background).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from asyncbench.model.graphdef import Node

INPUT_NAME = "input:0"
LOGITS_NAME = "MobilenetV1/Predictions/Reshape:0"
OUTPUT_NAME = "MobilenetV1/Predictions/Reshape_1:0"
_CONST_OPS = {"Const", "Identity", "Add", "AddV2", "Sub", "Mul", "Rsqrt"}


class ConversionError(ValueError):
    """The GraphDef holds something this converter does not translate."""


@dataclass
class _Conv:
    """A convolution being assembled; affine ops that follow it are folded in."""

    x: str
    w: np.ndarray  # (O, I/group, kh, kw)
    b: np.ndarray
    strides: list[int]
    pads: list[int]
    group: int
    name: str


@dataclass
class _Op:
    op_type: str
    inputs: list[str]
    name: str
    attrs: dict = field(default_factory=dict)


def _clean(ref: str) -> str:
    return ref.split(":")[0].lstrip("^")


class _Converter:
    def __init__(self, nodes: dict[str, Node], input_node: str, output_node: str) -> None:
        self.nodes = nodes
        self.input_node = input_node
        self.output_node = output_node
        self.consts: dict[str, np.ndarray | None] = {}
        self.consumers: dict[str, int] = {}
        for n in nodes.values():
            for ref in n.inputs:
                if not ref.startswith("^"):
                    self.consumers[_clean(ref)] = self.consumers.get(_clean(ref), 0) + 1
        self.records: list[_Conv | _Op] = []
        self.value: dict[str, _Conv | str] = {}  # tf node -> pending conv or onnx tensor name
        self.hw: dict[str, tuple[int, int]] = {}
        self.initializers: list[TensorProto] = []

    def const(self, name: str) -> np.ndarray | None:
        """Value of a constant sub-graph, or None when it depends on the input."""
        name = _clean(name)
        if name in self.consts:
            return self.consts[name]
        node = self.nodes.get(name)
        if node is None:
            raise ConversionError(f"node {name!r} is referenced but missing")
        result: np.ndarray | None = None
        if node.op == "Const":
            result = node.attrs["value"]
        elif node.op in _CONST_OPS:
            maybe = [self.const(i) for i in node.inputs if not i.startswith("^")]
            args = [a for a in maybe if a is not None]
            if len(args) == len(maybe):
                if node.op == "Identity":
                    result = args[0]
                elif node.op in ("Add", "AddV2"):
                    result = args[0] + args[1]
                elif node.op == "Sub":
                    result = args[0] - args[1]
                elif node.op == "Mul":
                    result = args[0] * args[1]
                else:
                    result = (1.0 / np.sqrt(args[0])).astype(args[0].dtype)
        self.consts[name] = result
        return result

    def order(self) -> list[Node]:
        """Non-constant nodes from the input to the output, in topological order."""
        seen: set[str] = set()
        out: list[Node] = []
        stack = [(_clean(self.output_node), False)]
        while stack:
            name, done = stack.pop()
            if done:
                out.append(self.nodes[name])
                continue
            if name in seen or self.const(name) is not None:
                continue
            seen.add(name)
            stack.append((name, True))
            for ref in reversed(self.nodes[name].inputs):
                if not ref.startswith("^"):
                    stack.append((_clean(ref), False))
        return out

    def tensor(self, tf_name: str) -> str:
        """ONNX tensor for a TF node, emitting a pending conv if one stands there."""
        v = self.value[_clean(tf_name)]
        if isinstance(v, _Conv):
            self.records.append(v)
            self.value[_clean(tf_name)] = v.name
            return v.name
        return v

    def _pending_conv(self, node: Node) -> tuple[_Conv, np.ndarray] | None:
        a, b = (_clean(i) for i in node.inputs[:2])
        for x, c in ((a, b), (b, a)):
            cv = self.const(c)
            pending = self.value.get(x)
            if cv is not None and isinstance(pending, _Conv) and self.consumers.get(x, 0) == 1:
                return pending, cv.astype(np.float32)
        return None

    def convert(self, node: Node) -> None:
        op, name = node.op, node.name
        if name == self.input_node:
            self.records.append(_Op("Transpose", [INPUT_NAME], f"{name}/nchw", {"perm": [0, 3, 1, 2]}))
            self.value[name] = f"{name}/nchw"
            shape = node.attrs.get("shape") or [-1, 224, 224, 3]
            self.hw[name] = (int(shape[1]), int(shape[2]))
            return
        if op == "Identity":
            src = _clean(node.inputs[0])
            self.value[name], self.hw[name] = self.value[src], self.hw[src]
            if isinstance(self.value[src], _Conv):
                self.consumers[src] = self.consumers.get(name, 0)
            return
        if op in ("Conv2D", "DepthwiseConv2dNative"):
            self._conv(node)
            return
        if op in ("Mul", "Add", "AddV2", "BiasAdd"):
            hit = self._pending_conv(node)
            if hit is None:
                raise ConversionError(f"{op} {name!r} does not follow a convolution with a constant operand")
            conv, c = hit
            if op == "Mul":
                conv.w = conv.w * c.reshape(-1, 1, 1, 1)
                conv.b = conv.b * c
            else:
                conv.b = conv.b + c
            conv.name = name
            src = _clean(node.inputs[0]) if self.const(node.inputs[0]) is None else _clean(node.inputs[1])
            self.value[name], self.hw[name] = conv, self.hw[src]
            self.consumers[name] = self.consumers.get(name, 0)
            return
        x = _clean(node.inputs[0])
        if op == "Relu6":
            lo, hi = self._init(f"{name}/min", np.float32(0.0)), self._init(f"{name}/max", np.float32(6.0))
            self._emit(_Op("Clip", [self.tensor(x), lo, hi], name), self.hw[x])
        elif op == "AvgPool":
            k, s = node.attrs["ksize"][1:3], node.attrs["strides"][1:3]
            h, w = self.hw[x]
            if node.attrs.get("padding") == "VALID" and (h, w) == tuple(k):
                self._emit(_Op("GlobalAveragePool", [self.tensor(x)], name), (1, 1))
            else:
                pads, out = self._pads(node.attrs["padding"], (h, w), k, s)
                attrs = {"kernel_shape": k, "strides": s, "pads": pads, "count_include_pad": 0}
                self._emit(_Op("AveragePool", [self.tensor(x)], name, attrs), out)
        elif op == "Squeeze":
            if self.hw[x] != (1, 1):
                raise ConversionError(f"Squeeze {name!r} of a tensor that is not 1x1 spatially")
            self._emit(_Op("Flatten", [self.tensor(x)], name, {"axis": 1}), (1, 1))
        elif op == "Reshape":
            shape = self.const(node.inputs[1])
            if shape is None:
                raise ConversionError(f"Reshape {name!r} has a non-constant shape")
            sh = self._init(f"{name}/shape", shape.astype(np.int64))
            self._emit(_Op("Reshape", [self.tensor(x), sh], name), (1, 1))
        elif op == "Softmax":
            self._emit(_Op("Softmax", [self.tensor(x)], name, {"axis": -1}), (1, 1))
        else:
            raise ConversionError(f"unsupported TensorFlow op {op} at {name!r}")

    def _emit(self, rec: _Op, hw: tuple[int, int]) -> None:
        self.records.append(rec)
        self.value[rec.name] = rec.name
        self.hw[rec.name] = hw

    def _init(self, name: str, value: np.ndarray | np.generic) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    @staticmethod
    def _pads(padding: str, hw: tuple[int, int], k: list[int], s: list[int]) -> tuple[list[int], tuple[int, int]]:
        begins, ends, out = [], [], []
        for size, kk, ss in zip(hw, k, s, strict=True):
            if padding == "SAME":
                o = math.ceil(size / ss)
                total = max((o - 1) * ss + kk - size, 0)
            elif padding == "VALID":
                o, total = math.ceil((size - kk + 1) / ss), 0
            else:
                raise ConversionError(f"unsupported padding {padding!r}")
            begins.append(total // 2)
            ends.append(total - total // 2)
            out.append(o)
        return begins + ends, (out[0], out[1])

    def _conv(self, node: Node) -> None:
        if node.attrs.get("data_format", "NHWC") != "NHWC":
            raise ConversionError(f"{node.name!r}: only NHWC convolutions are supported")
        if any(d != 1 for d in node.attrs.get("dilations", [1, 1, 1, 1])):
            raise ConversionError(f"{node.name!r}: dilated convolutions are not supported")
        x = _clean(node.inputs[0])
        w = self.const(node.inputs[1])
        if w is None:
            raise ConversionError(f"{node.name!r}: weights are not constant")
        kh, kw, cin, cm = w.shape
        if node.op == "Conv2D":
            wo, group = w.transpose(3, 2, 0, 1), 1
        else:
            wo, group = w.transpose(2, 3, 0, 1).reshape(cin * cm, 1, kh, kw), cin
        s = node.attrs["strides"][1:3]
        pads, out = self._pads(node.attrs["padding"], self.hw[x], [kh, kw], s)
        bias = np.zeros(wo.shape[0], np.float32)
        conv = _Conv(self.tensor(x), wo.astype(np.float32), bias, s, pads, group, node.name)
        self.value[node.name], self.hw[node.name] = conv, out

    def build(self) -> onnx.ModelProto:
        for node in self.order():
            self.convert(node)
        logits = self.tensor(self.output_node)
        nodes = []
        for rec in self.records:
            if isinstance(rec, _Conv):
                w_name = self._init(f"{rec.name}/folded_weights", rec.w)
                b_name = self._init(f"{rec.name}/folded_bias", rec.b)
                kh, kw = rec.w.shape[2:]
                nodes.append(helper.make_node(
                    "Conv", [rec.x, w_name, b_name], [rec.name], name=rec.name, kernel_shape=[kh, kw],
                    strides=rec.strides, pads=rec.pads, group=rec.group))
            else:
                nodes.append(helper.make_node(rec.op_type, rec.inputs, [rec.name], name=rec.name, **rec.attrs))
        nodes.append(helper.make_node("Identity", [logits], [LOGITS_NAME], name="logits"))
        nodes.append(helper.make_node("Softmax", [LOGITS_NAME], [OUTPUT_NAME],
                                      name="MobilenetV1/Predictions/Softmax", axis=-1))
        h, w = self.hw[self.input_node]
        classes = -1
        out_node = self.nodes[_clean(self.output_node)]
        if out_node.op == "Reshape":
            shape = self.const(out_node.inputs[1])
            if shape is None:
                raise ConversionError(f"{out_node.name!r}: the logits' shape is not constant")
            classes = int(shape[-1])
        graph = helper.make_graph(
            nodes, "mobilenet_v1_1.0_224",
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", h, w, 3])],
            [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", classes])],
            self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="asyncbench")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def graphdef_to_onnx(nodes: dict[str, Node], input_node: str = "input",
                     output_node: str = "MobilenetV1/Predictions/Reshape") -> onnx.ModelProto:
    """Translate MobileNet v1 (input -> logits) from a parsed GraphDef into fp32 ONNX."""
    if input_node not in nodes or nodes[input_node].op != "Placeholder":
        raise ConversionError(f"graph has no Placeholder named {input_node!r}")
    if output_node not in nodes:
        raise ConversionError(f"graph has no node named {output_node!r}")
    return _Converter(nodes, input_node, output_node).build()
