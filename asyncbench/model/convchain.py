"""The MobileNet body of an engine graph, read out of the ONNX file as a plain list of layers.

A GPU engine can run a depthwise-separable body much faster with its own fused kernels than
node by node, but only if it knows exactly what the graph computes. `match_chain` recognises
the form the project's graphs have (int8 NHWC input, scalar scaling, one NHWC->NCHW transpose,
a dense 3x3 convolution, then depthwise 3x3 / pointwise 1x1 pairs, each followed by ReLU6 or
ReLU) and returns its weights in the layouts such kernels read, with the input scale folded
into the first convolution. Anything else returns None and the engine runs the graph node by
node. The nodes after the body (pooling, classifier, arg-max) are returned untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from asyncbench.model.gpu_rewrite import consumers


@dataclass(frozen=True)
class Activation:
    """A clamp to [low, high] after a convolution (ReLU6: 0..6, ReLU: 0..inf)."""

    low: float
    high: float


@dataclass(frozen=True)
class FirstConv:
    """The dense 3x3 stem over the int8 NHWC input: weights (kh*3+kw, cin, cout), scale folded in."""

    weight: np.ndarray  # float32 (9, cin, cout)
    bias: np.ndarray  # float32 (cout,)
    stride: int
    pad_top: int
    pad_left: int
    act: Activation


@dataclass(frozen=True)
class SeparableBlock:
    """Depthwise 3x3 (+ activation) then pointwise 1x1 (+ activation), NHWC in and out."""

    dw_weight: np.ndarray  # float32 (9, c)
    dw_bias: np.ndarray  # float32 (c,)
    stride: int
    pad_top: int
    pad_left: int
    dw_act: Activation
    pw_weight: np.ndarray  # float32 (c, cout): the GEMM's B operand
    pw_bias: np.ndarray  # float32 (cout,)
    pw_act: Activation


@dataclass(frozen=True)
class ConvChain:
    """The recognised body, the node where the rest of the graph reads its output, and that rest."""

    input_hw: tuple[int, int]
    first: FirstConv
    blocks: tuple[SeparableBlock, ...]
    output: str  # the body's last activation (NCHW in ONNX terms)
    tail: tuple[onnx.NodeProto, ...]
    # The graph's names of the stem's input and of every layer's activated output, in order (stem,
    # then depthwise and pointwise per block): the keys of their calibration scales.
    tensors: tuple[str, ...] = ()

    def out_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of the body's output for one image."""
        h, w = self.input_hw
        for stride in [self.first.stride] + [b.stride for b in self.blocks]:
            h, w = -(-h // stride), -(-w // stride)  # TF SAME: ceil(size / stride)
        return h, w, self.blocks[-1].pw_weight.shape[1]


def node_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes as Python values, by name.

    Typed Any, as onnx's get_attribute_value is: a value is a float, int, bytes, list or proto by
    the attribute's ONNX type, which the operator's schema fixes and the caller knows.
    """
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class _Walker:
    """Single-consumer walk along the graph from its input."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.users = consumers(graph)
        self.outputs = {o.name for o in graph.output}

    def next(self, name: str) -> onnx.NodeProto | None:
        users = self.users.get(name, [])
        if len(users) != 1 or name in self.outputs:
            return None
        return users[0]

    def scalar(self, name: str) -> float | None:
        value = self.consts.get(name)
        return float(value.ravel()[0]) if value is not None and value.size == 1 else None


def _activation(walker: _Walker, node: onnx.NodeProto | None) -> Activation | None:
    if node is None:
        return None
    if node.op_type == "Relu":
        return Activation(0.0, float("inf"))
    if node.op_type != "Clip":
        return None
    a = node_attrs(node)
    ins = list(node.input)
    low = walker.scalar(ins[1]) if len(ins) > 1 and ins[1] else a.get("min", float("-inf"))
    high = walker.scalar(ins[2]) if len(ins) > 2 and ins[2] else a.get("max", float("inf"))
    if low is None or high is None:
        return None
    return Activation(float(low), float(high))


def _conv(walker: _Walker, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """Weight, bias and attributes of a Conv with constant weights and explicit pads, or None."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in walker.consts:
        return None
    a = node_attrs(node)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or list(a.get("dilations", [1, 1])) != [1, 1]:
        return None
    weight = walker.consts[node.input[1]].astype(np.float32)
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in walker.consts:
            return None
        bias = walker.consts[node.input[2]].astype(np.float32)
    else:
        bias = np.zeros(weight.shape[0], np.float32)
    return weight, bias, a


def _same_pads(a: dict[str, Any], kernel: int) -> tuple[int, int, int] | None:
    """(stride, pad top, pad left) when the pads are TF SAME for a square kernel, else None."""
    strides = list(a.get("strides", [1, 1]))
    pads = list(a.get("pads", [0, 0, 0, 0]))
    if strides[0] != strides[1] or pads[0] != pads[1] or pads[2] != pads[3]:
        return None
    stride = int(strides[0])
    total = max(kernel - stride, 0)
    if stride not in (1, 2) or pads[0] != total // 2 or pads[0] + pads[2] != total:
        return None
    return stride, int(pads[0]), int(pads[1])


def match_chain(model: onnx.ModelProto) -> ConvChain | None:
    """The depthwise-separable body of ``model`` with its tail, or None when the graph has another form.

    Expects the pad-channel fold already applied (asyncbench.model.gpu_rewrite), so the stem
    reads all four input channels, the fourth through zero weights.
    """
    graph = model.graph
    if len(graph.input) != 1:
        return None
    shape = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    if len(shape) != 4 or graph.input[0].type.tensor_type.elem_type != onnx.TensorProto.INT8:
        return None
    walker = _Walker(graph)
    name, scale, transposed = graph.input[0].name, 1.0, False
    node = walker.next(name)
    while node is not None and node.op_type != "Conv":
        a = node_attrs(node)
        factor = walker.scalar(node.input[1]) if node.op_type in ("Mul", "Div") and node.input[0] == name else None
        if factor is not None:
            scale = scale * factor if node.op_type == "Mul" else scale / factor
        elif node.op_type == "Transpose" and list(a.get("perm", [])) == [0, 3, 1, 2] and not transposed:
            transposed = True
        elif node.op_type == "Cast" and a.get("to") == onnx.TensorProto.FLOAT or node.op_type == "Identity":
            pass
        else:
            return None
        name = node.output[0]
        node = walker.next(name)
    if node is None or not transposed:
        return None
    stem = _conv(walker, node)
    if stem is None:
        return None
    weight, bias, a = stem
    pads = _same_pads(a, 3)
    act = _activation(walker, walker.next(node.output[0]))
    if (pads is None or act is None or int(a.get("group", 1)) != 1 or weight.shape[2:] != (3, 3)
            or weight.shape[1] != shape[3]):
        return None
    first = FirstConv(np.ascontiguousarray((weight * scale).transpose(2, 3, 1, 0).reshape(9, weight.shape[1], -1)),
                      bias, *pads, act)
    tensors = [node.input[0]]
    name = walker.next(node.output[0]).output[0]  # type: ignore[union-attr]
    tensors.append(name)
    channels = weight.shape[0]
    blocks: list[SeparableBlock] = []
    while True:
        dw_node = walker.next(name)
        dw = _conv(walker, dw_node) if dw_node is not None else None
        if dw is None or int(dw[2].get("group", 1)) != channels or dw[0].shape != (channels, 1, 3, 3):
            break
        dw_pads = _same_pads(dw[2], 3)
        dw_act = _activation(walker, walker.next(dw_node.output[0]))  # type: ignore[union-attr]
        if dw_pads is None or dw_act is None:
            return None
        pw_node = walker.next(walker.next(dw_node.output[0]).output[0])  # type: ignore[union-attr]
        pw = _conv(walker, pw_node) if pw_node is not None else None
        if (pw is None or int(pw[2].get("group", 1)) != 1 or pw[0].shape[1:] != (channels, 1, 1)
                or _same_pads(pw[2], 1) != (1, 0, 0)):
            return None
        pw_act = _activation(walker, walker.next(pw_node.output[0]))  # type: ignore[union-attr]
        if pw_act is None:
            return None
        blocks.append(SeparableBlock(
            np.ascontiguousarray(dw[0].reshape(channels, 9).T), dw[1], *dw_pads, dw_act,
            np.ascontiguousarray(pw[0][:, :, 0, 0].T), pw[1], pw_act))
        channels = pw[0].shape[0]
        name = walker.next(pw_node.output[0]).output[0]  # type: ignore[union-attr]
        tensors += [pw_node.input[0], name]  # type: ignore[union-attr]
    if not blocks:
        return None
    body = _body_nodes(graph, name)
    tail = tuple(n for n in graph.node if id(n) not in body)
    return ConvChain((shape[1], shape[2]), first, tuple(blocks), name, tail, tuple(tensors))


def _body_nodes(graph: onnx.GraphProto, last: str) -> set[int]:
    """ids of the nodes the body's output depends on (they run as fused kernels, not node by node)."""
    producer = {out: n for n in graph.node for out in n.output}
    seen: set[int] = set()
    stack = [last]
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(node.input)
    return seen
