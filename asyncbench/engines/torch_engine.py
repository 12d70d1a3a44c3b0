"""The torch backend: the project's ONNX model on one GPU, one CUDA graph per bucket (or eager launches).

The network comes from the same ONNX file the onnxruntime engine runs (int8 NHW4 in, int32
top-1 out), so the weights and the whole contract are shared with the CPU engines. Two paths:
- fp16 (default) on a MobileNet-shaped graph: the body runs as fused Triton kernels
  (asyncbench.engines.triton_chain, read out of the graph by asyncbench.model.convchain) and the
  pooling, classifier and arg-max after it run node by node in fp32, so the arg-max matches the
  fp32 CPU model. No torch.compile: start-up is seconds once Triton's cache is warm.
- int8 on the same graphs: the body in integers (asyncbench.engines.triton_int8: TensorRT's INT8
  recipe with the calibration cache's scales, asyncbench.model.int8chain), its int8 output
  dequantized into the same fp32 tail.
- anything else (fp32, other graphs, or fused=False): every node through the per-op builders of
  asyncbench.model.torch_ops, compiled with a static shape per bucket.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from asyncbench.contract import SAMPLE_DTYPE, SAMPLE_SHAPE
from asyncbench.cuda.memory import device_array
from asyncbench.cuda.stream import Stream
from asyncbench.engines.gpu import Launch
from asyncbench.errors import UserError
from asyncbench.model.convchain import match_chain
from asyncbench.model.gpu_rewrite import fold_pad_channel


def torch_available() -> bool:
    """True when torch imports and sees a CUDA device."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def use_cache_dir(folder: Path) -> None:
    """Keep Triton's and inductor's compiled kernels (and tuning choices) under ``folder`` across runs.

    Only where the user has not chosen a folder already; must run before the first compile.
    """
    os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder / "inductor"))


def int8_unsupported(model_path: Path, calibration: Path) -> str | None:
    """Why the integer Triton body cannot run this model with this cache (None when it can).

    Lets the engine's default (int8) step down to fp16 for a graph of another shape, where an
    explicit ``--precision int8`` is refused.
    """
    from asyncbench.engines.triton_int8 import supported
    from asyncbench.model.calibrate import CalibrationCache
    from asyncbench.model.int8chain import quantize_chain

    if not calibration.is_file():
        return f"no calibration cache at {calibration}"
    q = quantize_chain(onnx.load(str(model_path)), CalibrationCache.load(calibration))
    return "the graph is not a depthwise-separable body" if q is None else supported(q)


class TorchBackend:
    """The wrapped ONNX model on one GPU through torch: fused Triton body or compiled graph, graph-replayed."""

    name = "torch"

    def __init__(self, model_path: Path, device: int, buckets: Sequence[int], precision: str = "fp16",
                 compile_mode: str | None = "default", fold: bool = True, fused: bool = True,
                 graphs: bool = True, calibration: Path | None = None) -> None:
        """``calibration``: the calibration cache an int8 body takes its activation scales from."""
        import torch

        if precision not in ("fp16", "fp32", "int8"):
            raise UserError(f"the torch engine runs fp16, int8 or fp32, not {precision!r}")
        self.device = device
        self.precision = precision
        self.graphs = graphs
        self._buckets = tuple(sorted(set(buckets)))
        self._torch = torch
        self._dev = torch.device("cuda", device)
        model = onnx.load(str(model_path))
        if fold:  # exact, and much cheaper on the GPU (asyncbench.model.gpu_rewrite); off only to measure it
            model = fold_pad_channel(model)
        if len(model.graph.input) != 1 or len(model.graph.output) != 1:
            raise UserError(f"{model_path} must have one input and one output (the engine contract)")
        torch.backends.cudnn.benchmark = True
        self.body: Any = None  # the Triton body's kernels (their forms per batch size); None node by node
        # One graph memory pool per stream: graphs in one pool share their activations' memory,
        # which is safe only while they replay one after another (slots of one stream do; slots
        # of concurrent inference streams would overwrite each other's activations).
        self._pools: dict[int, Any] = {}
        with torch.cuda.device(self._dev):
            if precision == "int8":
                self._fn = self._int8_body(model_path, model, calibration)
            else:
                self._fn = self._float_body(model, precision, fused, compile_mode)
        self._graphs: list[Any] = []

    def _float_body(self, model: onnx.ModelProto, precision: str, fused: bool,
                    compile_mode: str | None) -> Callable[[Any], Any]:
        """The fp16 fused Triton body with its fp32 tail, else the whole graph node by node."""
        torch = self._torch
        from asyncbench.model.torch_ops import GraphModule

        chain = match_chain(model) if fused and precision == "fp16" else None
        if not fused:
            why: str | None = "fused=False"
        elif precision == "fp32":
            why = "fp32 runs node by node"
        elif chain is None:
            why = "the graph is not a depthwise-separable body"
        else:
            from asyncbench.engines.triton_chain import supported

            why = supported(chain)
        if why is None and chain is not None:  # why is None only for a matched, supported chain
            from asyncbench.engines.triton_chain import ChainKernels

            body = self.body = ChainKernels(chain, self._dev)
            tail = GraphModule(model, torch.float32, chain.tail, chain.output).to(self._dev).eval()
            self.path = f"fp16 fused Triton body ({len(chain.blocks)} separable blocks), fp32 classifier"
            return lambda x: tail(body(x).permute(0, 3, 1, 2))
        dtype = torch.float16 if precision == "fp16" else torch.float32
        module = GraphModule(model, dtype).to(self._dev).eval()
        # A static compile per bucket (15% faster than one dynamic-shape compile). Each
        # bucket and device adds an entry for the same forward(); past Dynamo's recompile
        # limit it would silently run (and capture) eager code, so the limit grows to fit.
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, len(self._buckets) * (self.device + 1) + 1)
        self.path = (f"{precision} node by node ({why}), "
                     f"{f'torch.compile {compile_mode} per bucket' if compile_mode else 'eager'}")
        return torch.compile(module, mode=compile_mode, dynamic=False) if compile_mode else module

    def _int8_body(self, model_path: Path, folded: onnx.ModelProto, calibration: Path | None) -> Callable[[Any], Any]:
        """The integer Triton body with the fp32 tail; a graph or cache it cannot run is a UserError."""
        torch = self._torch
        from asyncbench.engines.triton_int8 import Int8Kernels, supported
        from asyncbench.model.calibrate import CalibrationCache
        from asyncbench.model.int8chain import quantize_chain
        from asyncbench.model.torch_ops import GraphModule

        if calibration is None:
            raise UserError("--precision int8 on the torch engine needs the calibration cache (run `make calibrate`)")
        q = quantize_chain(onnx.load(str(model_path)), CalibrationCache.load(calibration))
        why = "the graph is not a depthwise-separable body" if q is None else supported(q)
        if why is not None or q is None:
            raise UserError(f"--precision int8 on the torch engine: {why}; use --precision fp16")
        body = self.body = Int8Kernels(q, self._dev)
        self.path = (f"int8 Triton body ({len(q.blocks)} separable blocks, per-channel int8 weights, "
                     f"calibrated per-tensor activations), fp32 classifier")
        # The tail's float weights come from the graph as it is (not bias-corrected: it is not quantized).
        pool = q.chain.tail[0] if q.chain.tail else None
        if pool is not None and pool.op_type == "GlobalAveragePool":  # pooled and dequantized in one kernel
            rest = GraphModule(folded, torch.float32, q.chain.tail[1:], pool.output[0]).to(self._dev).eval()
            return lambda x: rest(body.pool(body(x)))
        tail = GraphModule(folded, torch.float32, q.chain.tail, q.chain.output).to(self._dev).eval()
        scale = body.out_scale
        return lambda x: tail(body(x).to(torch.float32).mul_(scale).permute(0, 3, 1, 2))

    def buckets(self) -> tuple[int, ...]:
        """The batch sizes with a captured graph."""
        return self._buckets

    def bind(self, input_ptr: int, output_ptr: int, stream: Stream) -> Launch:
        """Launch on ``stream`` from this slot's input to its top-1: one CUDA graph per bucket, or eager kernels.

        Without graphs every batch launches each kernel (and allocates its activations from torch's
        caching allocator on this stream): slower, but a profiler sees every kernel at its launch.
        """
        torch = self._torch
        rows = self._buckets[-1]
        tstream = torch.cuda.ExternalStream(stream.handle, device=self._dev)
        graphs: dict[int, Any] = {}
        with torch.cuda.device(self._dev), torch.inference_mode():
            pool = self._pools.setdefault(stream.handle, torch.cuda.graph_pool_handle())
            x_all = torch.as_tensor(device_array(input_ptr, SAMPLE_DTYPE, (rows, *SAMPLE_SHAPE)), device=self._dev)
            y_all = torch.as_tensor(device_array(output_ptr, np.int32, (rows,)), device=self._dev)
            with torch.cuda.stream(tstream):
                for b in self._buckets:
                    x, y = x_all[:b], y_all[:b]
                    for _ in range(2):  # compiles on first use; cuDNN picks its algorithms outside capture
                        y.copy_(self._fn(x))
                    tstream.synchronize()
                    if not self.graphs:
                        continue
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool, stream=tstream,
                                          capture_error_mode="thread_local"):
                        y.copy_(self._fn(x))  # the result lands in the slot's buffer; nothing stays live
                    graphs[b] = graph
        self._graphs.extend(graphs.values())
        if not self.graphs:
            fn, dev = self._fn, self._dev

            def launch_eager(bucket: int) -> None:
                with torch.cuda.device(dev), torch.inference_mode(), torch.cuda.stream(tstream):
                    y_all[:bucket].copy_(fn(x_all[:bucket]))
            return launch_eager

        def launch(bucket: int) -> None:
            with torch.cuda.stream(tstream):
                graphs[bucket].replay()
        return launch

    def close(self) -> None:
        """Drop the graphs and the module (torch's allocator keeps the memory for reuse)."""
        self._graphs.clear()
        self._fn = None  # type: ignore[assignment]
