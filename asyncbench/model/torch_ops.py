"""ONNX nodes as torch callables: one small builder per op, and a module that runs a node list.

The torch engine runs the same ONNX file as the CPU engines, so the weights and the whole
contract (pad-channel drop, scaling, NHWC->NCHW, arg-max) are shared and nothing is re-derived.
This is the general path: any graph made of the ops in `BUILDERS` runs, node by node (and
torch.compile traces it into one program). The engine's fast path (fused kernels for the
MobileNet body) also uses it, for the nodes after the body.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from asyncbench.errors import UserError
from asyncbench.model.convchain import node_attrs

POOLS = ("GlobalAveragePool", "AveragePool")
Op = Callable[..., torch.Tensor]


@dataclass
class _Node:
    """What a builder sees: the node, its attributes, the graph's constants and where to keep weights."""

    node: onnx.NodeProto
    attrs: dict[str, Any]
    consts: dict[str, np.ndarray]
    dtype: torch.dtype  # the float type this node computes in
    owner: torch.nn.Module

    @property
    def ins(self) -> list[str]:
        return list(self.node.input)

    def has(self, k: int) -> bool:
        return len(self.node.input) > k and bool(self.node.input[k])

    def const(self, k: int) -> np.ndarray:
        name = self.node.input[k]
        if name not in self.consts:
            raise UserError(f"the torch engine needs input {k} of {self.node.op_type} node {self.node.name!r} "
                            f"to be a constant")
        return self.consts[name]

    def param(self, value: np.ndarray, channels_last: bool = False) -> Callable[[], torch.Tensor]:
        """Register ``value`` as a buffer (so .to(device) moves it) and return its getter."""
        key = f"p{len(self.owner._buffers)}"
        tensor = torch.from_numpy(np.array(value)).to(self.dtype)
        if channels_last and tensor.ndim == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        self.owner.register_buffer(key, tensor)
        return lambda: getattr(self.owner, key)

    def refuse(self, what: str) -> UserError:
        return UserError(f"the torch engine supports only {what} ({self.node.op_type} node {self.node.name!r})")


def _cast(n: _Node) -> Op:
    target = {onnx.TensorProto.FLOAT: n.dtype, onnx.TensorProto.FLOAT16: n.dtype, onnx.TensorProto.INT32: torch.int32,
              onnx.TensorProto.INT64: torch.int64}.get(n.attrs["to"])
    if target is None:
        raise n.refuse("casts to float, int32 and int64")
    return lambda x, *_: x.to(target)


def _identity(_n: _Node) -> Op:
    return lambda x, *_: x


def _slice(n: _Node) -> Op:
    starts, ends = n.const(1), n.const(2)
    axes = n.const(3) if n.has(3) else np.arange(len(starts))
    steps = n.const(4) if n.has(4) else np.ones(len(starts), np.int64)
    if (steps != 1).any():
        raise n.refuse("unit-step Slice")
    cuts = [(int(ax), int(s), int(e)) for ax, s, e in zip(axes, starts, ends, strict=True)]

    def slice_(x: torch.Tensor, *_: Any) -> torch.Tensor:
        for ax, s, e in cuts:
            size = x.shape[ax]
            lo, hi = max(0, min(s if s >= 0 else s + size, size)), max(0, min(e if e >= 0 else e + size, size))
            x = x.narrow(ax, lo, max(hi - lo, 0))
        return x
    return slice_


def _arith(n: _Node) -> Op:
    fn = {"Mul": torch.mul, "Add": torch.add, "Sub": torch.sub, "Div": torch.div}[n.node.op_type]
    if n.ins[1] in n.consts:
        b = n.param(n.consts[n.ins[1]])
        return lambda x, *_: fn(x, b())
    if n.ins[0] in n.consts:
        a = n.param(n.consts[n.ins[0]])
        return lambda _x, y, *_: fn(a(), y)
    return lambda x, y, *_: fn(x, y)


def _transpose(n: _Node) -> Op:
    perm = tuple(n.attrs["perm"])
    return lambda x, *_: x.permute(perm)


def _conv(n: _Node) -> Op:
    w = n.param(n.const(1), channels_last=True)
    b = n.param(n.const(2)) if n.has(2) else None
    pads = list(n.attrs.get("pads", [0, 0, 0, 0]))
    strides, groups = tuple(n.attrs.get("strides", [1, 1])), int(n.attrs.get("group", 1))
    dilations = tuple(n.attrs.get("dilations", [1, 1]))
    if n.attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise n.refuse("explicit Conv pads")
    symmetric = pads[0] == pads[2] and pads[1] == pads[3]
    # ONNX pads are [top, left, bottom, right]; F.pad wants (left, right, top, bottom).
    extra = None if symmetric else (pads[1], pads[3], pads[0], pads[2])
    padding = (pads[0], pads[1]) if symmetric else (0, 0)

    def conv(x: torch.Tensor, *_: Any) -> torch.Tensor:
        # NHWC all the way: a permuted input is not channels_last by strides, and padding it as
        # NCHW made the first layer's relayout 16% of GPU time.
        x = x.contiguous(memory_format=torch.channels_last)
        if extra is not None:
            x = F.pad(x, extra).contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, w(), b() if b is not None else None, strides, padding, dilations, groups)
    return conv


def _clip(n: _Node) -> Op:
    lo = float(n.const(1)) if n.has(1) else n.attrs.get("min", float("-inf"))
    hi = float(n.const(2)) if n.has(2) else n.attrs.get("max", float("inf"))
    if lo == 0.0 and hi == 6.0:
        return lambda x, *_: F.relu6(x)
    return lambda x, *_: torch.clamp(x, lo, hi)


def _relu(_n: _Node) -> Op:
    return lambda x, *_: F.relu(x)


def _global_average_pool(n: _Node) -> Op:
    return lambda x, *_: x.mean((2, 3), keepdim=True, dtype=n.dtype)  # one kernel, no upcast copy


def _average_pool(n: _Node) -> Op:
    kernel = tuple(n.attrs["kernel_shape"])
    stride = tuple(n.attrs.get("strides", kernel))
    pads = list(n.attrs.get("pads", [0, 0, 0, 0]))
    if pads[0] != pads[2] or pads[1] != pads[3]:
        raise n.refuse("symmetric AveragePool pads")
    include = bool(n.attrs.get("count_include_pad", 0))
    return lambda x, *_: F.avg_pool2d(x.to(n.dtype), kernel, stride, (pads[0], pads[1]), count_include_pad=include)


def _flatten(n: _Node) -> Op:
    axis = int(n.attrs.get("axis", 1))
    return lambda x, *_: torch.flatten(x, axis)


def _reshape(n: _Node) -> Op:
    shape = [int(s) for s in n.const(1)]
    return lambda x, *_: x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(shape)])


def _squeeze(n: _Node) -> Op:
    axes = tuple(int(v) for v in (n.const(1) if n.has(1) else n.attrs.get("axes", ())))
    return lambda x, *_: x.squeeze(axes) if axes else x.squeeze()


def _gemm(n: _Node) -> Op:
    if n.attrs.get("transA", 0) or n.attrs.get("alpha", 1.0) != 1.0 or n.attrs.get("beta", 1.0) != 1.0:
        raise n.refuse("Gemm with transA=0, alpha=beta=1")
    weight = n.param(n.const(1) if n.attrs.get("transB", 0) else n.const(1).T)
    b = n.param(n.const(2)) if n.has(2) else None
    return lambda x, *_: F.linear(x.to(n.dtype), weight(), b() if b is not None else None)


def _matmul(n: _Node) -> Op:
    w = n.param(n.const(1))
    return lambda x, *_: torch.matmul(x.to(n.dtype), w())


def _argmax(n: _Node) -> Op:
    axis, keep = int(n.attrs.get("axis", 0)), bool(n.attrs.get("keepdims", 1))
    return lambda x, *_: torch.argmax(x, dim=axis, keepdim=keep)


def _softmax(n: _Node) -> Op:
    axis = int(n.attrs.get("axis", -1))
    return lambda x, *_: torch.softmax(x, dim=axis)


BUILDERS: dict[str, Callable[[_Node], Op]] = {
    "Cast": _cast, "Identity": _identity, "Slice": _slice, "Mul": _arith, "Add": _arith, "Sub": _arith,
    "Div": _arith, "Transpose": _transpose, "Conv": _conv, "Clip": _clip, "Relu": _relu,
    "GlobalAveragePool": _global_average_pool, "AveragePool": _average_pool, "Flatten": _flatten,
    "Reshape": _reshape, "Squeeze": _squeeze, "Gemm": _gemm, "MatMul": _matmul, "ArgMax": _argmax,
    "Softmax": _softmax,
}


class GraphModule(torch.nn.Module):
    """Runs ONNX nodes in order; the pooling and the nodes after it compute in fp32.

    The classifier after the last pooling stays fp32 so that its arg-max matches the fp32 CPU
    model; everything before it computes in ``dtype``.
    """

    def __init__(self, model: onnx.ModelProto, dtype: torch.dtype, nodes: Sequence[onnx.NodeProto] | None = None,
                 input_name: str | None = None) -> None:
        super().__init__()
        graph = model.graph
        consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        nodes = list(graph.node if nodes is None else nodes)
        last_pool = max((i for i, n in enumerate(nodes) if n.op_type in POOLS), default=len(nodes))
        self._input = input_name or graph.input[0].name
        self._output = graph.output[0].name
        self._steps: list[tuple[Op, list[str], str]] = []
        for i, node in enumerate(nodes):
            build = BUILDERS.get(node.op_type)
            if build is None:
                raise UserError(f"the torch engine does not implement ONNX op {node.op_type} (node {node.name!r}); "
                                f"use --engine onnxruntime for this model")
            ctx = _Node(node, node_attrs(node), consts, torch.float32 if i >= last_pool else dtype, self)
            self._steps.append((build(ctx), list(node.input), node.output[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, torch.Tensor] = {self._input: x}
        for fn, ins, out in self._steps:
            env[out] = fn(*(env.get(name) for name in ins))
        return env[self._output]
