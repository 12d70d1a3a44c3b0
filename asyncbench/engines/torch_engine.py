"""The torch backend: the project's ONNX model run by torch on one GPU, compiled, one CUDA graph per bucket.

The network is built from the same ONNX file the onnxruntime engine runs (int8 NHW4 in, int32
top-1 out), by a small interpreter over the handful of ops the MobileNet graphs use, so the
weights and the whole contract (pad-channel drop, scaling, NHWC->NCHW, arg-max) are shared with
the CPU engines and nothing is re-derived. Convolutions run in fp16 with channels_last weights;
the classifier after the last pooling runs in fp32 so its arg-max matches the fp32 CPU model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from asyncbench.cuda.memory import device_array
from asyncbench.cuda.stream import Stream
from asyncbench.engines.gpu import Launch
from asyncbench.errors import UserError
from asyncbench.model.gpu_rewrite import fold_pad_channel

POOLS = ("GlobalAveragePool", "AveragePool")
_ONNX_FLOAT = onnx.TensorProto.FLOAT


def torch_available() -> bool:
    """True when torch imports and sees a CUDA device."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _build_module(model: onnx.ModelProto, dtype: Any) -> Any:
    """An nn.Module executing the graph node by node (torch.compile traces it into one program)."""
    import torch
    import torch.nn.functional as F  # noqa: N812 - torch's own convention

    graph = model.graph
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    last_pool = max((i for i, n in enumerate(graph.node) if n.op_type in POOLS), default=len(graph.node))

    class OnnxGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.steps: list[tuple[Callable[..., Any], list[str], list[str]]] = []
            for i, node in enumerate(graph.node):
                tail = i >= last_pool  # the pooling and the classifier after it: fp32
                self.steps.append((self._op(node, torch.float32 if tail else dtype), list(node.input),
                                   list(node.output)))

        def _param(self, name: str, dtype: Any, channels_last: bool = False) -> str:
            key = f"p{len(self._buffers)}"
            tensor = torch.from_numpy(np.array(consts[name])).to(dtype)
            if channels_last and tensor.ndim == 4:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            self.register_buffer(key, tensor)
            return key

        def _op(self, node: onnx.NodeProto, fdt: Any) -> Callable[..., Any]:
            op, a, ins = node.op_type, _attrs(node), list(node.input)

            def const(k: int) -> np.ndarray:
                if ins[k] not in consts:
                    raise UserError(f"the torch engine needs input {k} of {op} node {node.name!r} to be a constant")
                return consts[ins[k]]

            if op == "Cast":
                target = {_ONNX_FLOAT: fdt, onnx.TensorProto.FLOAT16: fdt, onnx.TensorProto.INT32: torch.int32,
                          onnx.TensorProto.INT64: torch.int64}.get(a["to"])
                if target is None:
                    raise UserError(f"the torch engine cannot cast to ONNX type {a['to']} (node {node.name!r})")
                return lambda x, *_: x.to(target)
            if op == "Identity":
                return lambda x, *_: x
            if op == "Slice":
                starts, ends = const(1), const(2)
                axes = const(3) if len(ins) > 3 and ins[3] else np.arange(len(starts))
                steps = const(4) if len(ins) > 4 and ins[4] else np.ones(len(starts), np.int64)
                if (steps != 1).any():
                    raise UserError(f"the torch engine supports only unit-step Slice (node {node.name!r})")
                cuts = [(int(ax), int(s), int(e)) for ax, s, e in zip(axes, starts, ends, strict=True)]

                def slice_(x: Any, *_: Any) -> Any:
                    for ax, s, e in cuts:
                        size = x.shape[ax]
                        lo, hi = max(0, min(s, size)), max(0, min(e, size))
                        x = x.narrow(ax, lo, hi - lo)
                    return x
                return slice_
            if op in ("Mul", "Add", "Sub", "Div"):
                fn = {"Mul": torch.mul, "Add": torch.add, "Sub": torch.sub, "Div": torch.div}[op]
                if ins[1] in consts:
                    key = self._param(ins[1], fdt)
                    return lambda x, *_: fn(x, getattr(self, key))
                if ins[0] in consts:
                    key = self._param(ins[0], fdt)
                    return lambda _x, y, *_: fn(getattr(self, key), y)
                return lambda x, y, *_: fn(x, y)
            if op == "Transpose":
                perm = tuple(a["perm"])
                return lambda x, *_: x.permute(perm)
            if op == "Conv":
                w = self._param(ins[1], fdt, channels_last=True)
                b = self._param(ins[2], fdt) if len(ins) > 2 and ins[2] else None
                pads = list(a.get("pads", [0, 0, 0, 0]))
                strides, groups = tuple(a.get("strides", [1, 1])), int(a.get("group", 1))
                dilations = tuple(a.get("dilations", [1, 1]))
                if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                    raise UserError(f"the torch engine needs explicit Conv pads (node {node.name!r})")
                symmetric = pads[0] == pads[2] and pads[1] == pads[3]
                # ONNX pads are [top, left, bottom, right]; F.pad wants (left, right, top, bottom).
                extra = None if symmetric else (pads[1], pads[3], pads[0], pads[2])
                padding = (pads[0], pads[1]) if symmetric else (0, 0)

                def conv(x: Any, *_: Any) -> Any:
                    # NHWC all the way: a permuted, pad-channel-sliced input is not channels_last by
                    # strides; padding it as NCHW made the first layer's relayout 16% of GPU time.
                    x = x.contiguous(memory_format=torch.channels_last)
                    if extra is not None:
                        x = F.pad(x, extra).contiguous(memory_format=torch.channels_last)
                    bias = getattr(self, b) if b is not None else None
                    return F.conv2d(x, getattr(self, w), bias, strides, padding, dilations, groups)
                return conv
            if op == "Clip":
                lo = float(const(1)) if len(ins) > 1 and ins[1] else a.get("min", float("-inf"))
                hi = float(const(2)) if len(ins) > 2 and ins[2] else a.get("max", float("inf"))
                if lo == 0.0 and hi == 6.0:
                    return lambda x, *_: F.relu6(x)
                return lambda x, *_: torch.clamp(x, lo, hi)
            if op == "Relu":
                return lambda x, *_: F.relu(x)
            if op == "GlobalAveragePool":
                return lambda x, *_: x.to(fdt).mean((2, 3), keepdim=True)
            if op == "AveragePool":
                kernel, stride = tuple(a["kernel_shape"]), tuple(a.get("strides", a["kernel_shape"]))
                pads = list(a.get("pads", [0, 0, 0, 0]))
                if pads[0] != pads[2] or pads[1] != pads[3]:
                    raise UserError(f"the torch engine supports only symmetric AveragePool pads ({node.name!r})")
                include = bool(a.get("count_include_pad", 0))
                return lambda x, *_: F.avg_pool2d(x.to(fdt), kernel, stride, (pads[0], pads[1]),
                                                  count_include_pad=include)
            if op == "Flatten":
                axis = int(a.get("axis", 1))
                return lambda x, *_: torch.flatten(x, axis)
            if op == "Reshape":
                shape = [int(s) for s in const(1)]
                return lambda x, *_: x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(shape)])
            if op == "Squeeze":
                axes = tuple(int(v) for v in (const(1) if len(ins) > 1 else a.get("axes", ())))
                return lambda x, *_: x.squeeze(axes) if axes else x.squeeze()
            if op == "Gemm":
                if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                    raise UserError(f"the torch engine supports Gemm with transA=0, alpha=beta=1 ({node.name!r})")
                weight = consts[ins[1]] if a.get("transB", 0) else consts[ins[1]].T
                key = f"p{len(self._buffers)}"
                self.register_buffer(key, torch.from_numpy(np.array(weight)).to(fdt))
                b = self._param(ins[2], fdt) if len(ins) > 2 and ins[2] else None
                return lambda x, *_: F.linear(x.to(fdt), getattr(self, key), getattr(self, b) if b else None)
            if op == "MatMul":
                key = self._param(ins[1], fdt)
                return lambda x, *_: torch.matmul(x.to(fdt), getattr(self, key))
            if op == "ArgMax":
                axis, keep = int(a.get("axis", 0)), bool(a.get("keepdims", 1))
                return lambda x, *_: torch.argmax(x, dim=axis, keepdim=keep)
            if op == "Softmax":
                axis = int(a.get("axis", -1))
                return lambda x, *_: torch.softmax(x, dim=axis)
            raise UserError(f"the torch engine does not implement ONNX op {op} (node {node.name!r}); "
                            f"use --engine onnxruntime for this model")

        def forward(self, x: Any) -> Any:
            env: dict[str, Any] = {graph.input[0].name: x}
            for fn, ins, outs in self.steps:
                env[outs[0]] = fn(*(env.get(name) for name in ins))
            return env[graph.output[0].name]

    return OnnxGraph()


class TorchBackend:
    """The wrapped ONNX model on one GPU through torch (fp16 channels_last, compiled, graph-replayed)."""

    name = "torch"

    def __init__(self, model_path: Path, device: int, buckets: Sequence[int], precision: str = "fp16",
                 compile_mode: str | None = "default", fold: bool = True) -> None:
        import torch

        if precision not in ("fp16", "fp32"):
            raise UserError(f"the torch engine runs fp16 or fp32, not {precision!r}")
        self.device = device
        self.precision = precision
        self._buckets = tuple(sorted(set(buckets)))
        self._torch = torch
        self._dev = torch.device("cuda", device)
        model = onnx.load(str(model_path))
        if fold:  # exact, and much cheaper on the GPU (asyncbench.model.gpu_rewrite); off only to measure it
            model = fold_pad_channel(model)
        if len(model.graph.input) != 1 or len(model.graph.output) != 1:
            raise UserError(f"{model_path} must have one input and one output (the engine contract)")
        dtype = torch.float16 if precision == "fp16" else torch.float32
        torch.backends.cudnn.benchmark = True
        with torch.cuda.device(self._dev):
            self.module = _build_module(model, dtype).to(self._dev).eval()
            self._pool = torch.cuda.graph_pool_handle()
        # One dynamic-shape compile serves every bucket (batch 1 gets its own specialisation). Each
        # device adds entries for the same forward(); past Dynamo's recompile limit it would
        # silently run (and capture) eager code, so the limit grows with the devices used.
        config = torch._dynamo.config
        if hasattr(config, "recompile_limit"):
            config.recompile_limit = max(config.recompile_limit, 4 * (device + 2))
        self._fn = torch.compile(self.module, mode=compile_mode, dynamic=True) if compile_mode else self.module
        self._graphs: list[Any] = []

    def buckets(self) -> tuple[int, ...]:
        """The batch sizes with a captured graph."""
        return self._buckets

    def bind(self, input_ptr: int, output_ptr: int, stream: Stream) -> Launch:
        """Capture one CUDA graph per bucket reading this slot's input and writing its top-1."""
        torch = self._torch
        rows = self._buckets[-1]
        tstream = torch.cuda.ExternalStream(stream.handle, device=self._dev)
        graphs: dict[int, Any] = {}
        with torch.cuda.device(self._dev), torch.inference_mode():
            x_all = torch.as_tensor(device_array(input_ptr, np.int8, (rows, 224, 224, 4)), device=self._dev)
            y_all = torch.as_tensor(device_array(output_ptr, np.int32, (rows,)), device=self._dev)
            with torch.cuda.stream(tstream):
                for b in self._buckets:
                    x, y = x_all[:b], y_all[:b]
                    for _ in range(2):  # compiles on first use; cuDNN picks its algorithms outside capture
                        y.copy_(self._fn(x))
                    tstream.synchronize()
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=self._pool, stream=tstream,
                                          capture_error_mode="thread_local"):
                        y.copy_(self._fn(x))  # the result lands in the slot's buffer; nothing stays live
                    graphs[b] = graph
        self._graphs.extend(graphs.values())

        def launch(bucket: int) -> None:
            with torch.cuda.stream(tstream):
                graphs[bucket].replay()
        return launch

    def close(self) -> None:
        """Drop the graphs and the module (torch's allocator keeps the memory for reuse)."""
        self._graphs.clear()
        self.module = None
        self._fn = None
