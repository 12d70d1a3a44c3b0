"""The TensorRT backend: the calibrated INT8 model compiled for one GPU, one CUDA graph per bucket.

The engine is built from ``tensorrt_form`` of the QDQ model, with explicit quantization: our
calibration's Q/DQ scales decide every int8 tensor, and the network is strongly typed, so what
the model keeps float (the logits up to the arg-max) stays fp32. Its int8 input is declared in
TensorRT's CHW4 layout, which is our NHW4 sample buffer byte for byte, so the first convolution
reads a slot's input where the frame copied it, with no relayout kernel.

Building takes a while, so the serialized engine is cached on disk, keyed by everything that
changes it: the rewritten model, the TensorRT version, the GPU model and the largest batch.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from asyncbench.cuda.api import device_name, set_device
from asyncbench.cuda.graphs import CapturedGraph
from asyncbench.cuda.memory import DeviceBuffer
from asyncbench.cuda.stream import Stream
from asyncbench.engines.gpu import Launch
from asyncbench.errors import UserError
from asyncbench.fileio import write_bytes_atomic
from asyncbench.model.profiles import load_onnx
from asyncbench.model.trt_onnx import TRT_INPUT_SHAPE, tensorrt_form
from asyncbench.model.wrap import ENGINE_INPUT, ENGINE_OUTPUT

# What the build settings below produce; part of the cache key, so bump it when they change.
RECIPE = "strongly-typed, input int8 CHW4, one profile 1..max, no aux streams"
Log = Callable[[str], None]


def tensorrt_available() -> bool:
    """True when TensorRT's Python package imports (whether a GPU is present is checked elsewhere)."""
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):  # OSError: the wheel is there but its shared libraries are not
        return False
    return True


def _logger(trt: Any, say: Log) -> Any:
    """A TensorRT logger that keeps errors, to be raised as one line, and passes warnings to ``say``."""
    severity = trt.ILogger.Severity

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, level: Any, msg: str) -> None:
            if level in (severity.INTERNAL_ERROR, severity.ERROR):
                self.errors.append(" ".join(msg.split()))
            elif level == severity.WARNING:
                say(f"tensorrt: warning: {' '.join(msg.split())}")

        def take(self) -> str:
            """The errors logged since the last call, as one line."""
            text = "; ".join(self.errors) or "no error was logged"
            self.errors.clear()
            return text

    return Logger()


def _build(trt: Any, logger: Any, model: bytes, max_batch: int, what: str) -> bytes:
    """Parse the TensorRT-form model and build a serialized engine; any failure is one UserError line."""
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model):
        errors = (parser.get_error(i) for i in range(parser.num_errors))
        text = "; ".join(f"{e.node_name() or 'graph'}: {e.desc()}" for e in errors)
        raise UserError(f"TensorRT cannot parse {what}: {text or logger.take()}")
    # The NHW4 sample buffer is CHW4 of int8 [N,3,224,224]: allowing only that layout makes the
    # engine read the frame's input buffer as it is.
    network.get_input(0).allowed_formats = 1 << int(trt.TensorFormat.CHW4)
    config = builder.create_builder_config()
    config.max_aux_streams = 0  # one stream per slot: capture sees no fork/join, MobileNet has no branches
    profile = builder.create_optimization_profile()
    shape = TRT_INPUT_SHAPE
    profile.set_shape(ENGINE_INPUT, (1, *shape), (max_batch, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(f"TensorRT could not build {what} with an int8 CHW4 input (the layout of the NHW4 "
                        f"sample buffer; a linear input would need a relayout this backend does not have): "
                        f"{logger.take()}")
    return bytes(plan)


def _check_io(trt: Any, engine: Any, path: Path) -> None:
    """The engine must honour the contract: int8 CHW4 samples in, int32 top-1 out."""
    found = (engine.get_tensor_dtype(ENGINE_INPUT), engine.get_tensor_format(ENGINE_INPUT),
             engine.get_tensor_dtype(ENGINE_OUTPUT))
    if found != (trt.int8, trt.TensorFormat.CHW4, trt.int32):
        raise UserError(f"{path} has input {found[0]} {found[1]} and output {found[2]}, not int8 CHW4 in and "
                        f"int32 out; delete it to rebuild")


class _Binding:
    """One bound slot: its scratch memory, one execution context per bucket, and their graphs (or direct enqueues)."""

    def __init__(self, scratch: DeviceBuffer) -> None:
        self.scratch = scratch
        self.contexts: list[Any] = []
        self.graphs: dict[int, CapturedGraph] = {}
        self.enqueues: dict[int, Callable[[], None]] = {}

    def close(self) -> None:
        for graph in self.graphs.values():
            graph.close()
        self.graphs.clear()
        self.enqueues.clear()
        self.contexts.clear()  # TensorRT destroys a context when its last reference goes
        self.scratch.close()


class TensorRTBackend:
    """The INT8 engine model as a TensorRT engine on one GPU (DeviceBackend)."""

    name = "tensorrt"
    precision = "int8"

    def __init__(self, model_path: Path, device: int, buckets: Sequence[int], cache_dir: Path,
                 log: Log = print, graphs: bool = True) -> None:
        """Load this model's engine for this GPU from ``cache_dir``, or build it there (a build takes a while).

        ``graphs=False`` enqueues the contexts directly for every batch (kernel-level profiles).
        """
        import tensorrt as trt

        if not hasattr(trt.ICudaEngine, "device_memory_size_v2"):
            raise UserError(f"the tensorrt engine needs TensorRT 10.1 or newer (found {trt.__version__}): "
                            f"pip install -U '.[tensorrt]'")
        sizes = sorted({int(b) for b in buckets})
        if not sizes or sizes[0] < 1:
            raise ValueError(f"buckets must be batch sizes >= 1, got {list(buckets)}")
        self.device = device
        self.graphs = graphs
        self._buckets = tuple(sizes)
        self._trt = trt
        self._log = log
        self._bindings: list[_Binding] = []
        model_path = Path(model_path)
        try:
            model = tensorrt_form(load_onnx(model_path)).SerializeToString()
        except ValueError as e:
            raise UserError(f"{model_path}: {e}") from None
        set_device(device)
        gpu = device_name(device)
        key = "\n".join([hashlib.sha256(model).hexdigest(), trt.__version__, gpu, f"max batch {sizes[-1]}", RECIPE])
        path = Path(cache_dir) / f"{model_path.stem}.{hashlib.sha256(key.encode()).hexdigest()[:16]}.engine"
        self.engine_path = path
        self._logger = _logger(trt, log)  # TensorRT keeps a pointer to it: it must outlive the runtime
        self._runtime = trt.Runtime(self._logger)
        self._engine: Any = self._load(path)
        if self._engine is None:
            start = time.perf_counter()
            plan = _build(trt, self._logger, model, sizes[-1], f"{model_path} for {gpu}")
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, plan)
            log(f"tensorrt: built {path} (batch 1..{sizes[-1]}, {gpu}, TensorRT {trt.__version__}) "
                f"in {time.perf_counter() - start:.1f} s")
            self._engine = self._runtime.deserialize_cuda_engine(plan)
            if self._engine is None:
                raise UserError(f"TensorRT cannot load the engine it just built ({path}): {self._logger.take()}")
        _check_io(trt, self._engine, path)

    def _load(self, path: Path) -> Any:
        """The cached engine, or None when there is none or it no longer deserializes."""
        if not path.is_file():
            return None
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            self._log(f"tensorrt: ignoring {path}, which does not load ({self._logger.take()}); rebuilding")
        else:
            self._log(f"tensorrt: using the cached engine {path}")
        return engine

    def buckets(self) -> tuple[int, ...]:
        """The batch sizes with a context and a captured graph per bound slot."""
        return self._buckets

    def bind(self, input_ptr: int, output_ptr: int, stream: Stream) -> Launch:
        """One execution context and CUDA graph per bucket, reading and writing this slot's buffers.

        The slot's contexts run one at a time, in order, on ``stream``, so they share one scratch
        buffer (TensorRT forbids sharing it only between contexts that run concurrently).
        """
        trt = self._trt
        set_device(self.device)
        size = self._engine.device_memory_size_v2
        binding = _Binding(DeviceBuffer(size, self.device))
        self._bindings.append(binding)
        try:
            for bucket in self._buckets:
                context = self._engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
                if context is None:
                    raise UserError(f"TensorRT could not create an execution context: {self._logger.take()}")
                binding.contexts.append(context)
                context.set_device_memory(binding.scratch.ptr, size)
                if not (context.set_input_shape(ENGINE_INPUT, (bucket, *TRT_INPUT_SHAPE))
                        and context.set_tensor_address(ENGINE_INPUT, input_ptr)
                        and context.set_tensor_address(ENGINE_OUTPUT, output_ptr)):
                    raise UserError(f"TensorRT refused batch {bucket} on {self.engine_path}: {self._logger.take()}")

                def enqueue(context: Any = context, bucket: int = bucket) -> None:
                    if not context.execute_async_v3(stream.handle):
                        raise UserError(f"TensorRT could not enqueue batch {bucket}: {self._logger.take()}")

                enqueue()  # the first run does one-time set-up that must not end up in the graph
                stream.synchronize()
                if self.graphs:
                    binding.graphs[bucket] = CapturedGraph(stream, enqueue)
                else:
                    binding.enqueues[bucket] = enqueue
        except BaseException:
            self._bindings.remove(binding)
            binding.close()
            raise
        graphs, enqueues, buckets = binding.graphs, binding.enqueues, self._buckets

        def launch(bucket: int) -> None:
            run = graphs[bucket].launch if bucket in graphs else enqueues.get(bucket)
            if run is None:
                raise ValueError(f"batch {bucket} is not one of this backend's buckets {buckets}")
            run()

        return launch

    def close(self) -> None:
        """Free every slot's graphs, contexts and scratch memory, then the engine."""
        if self._engine is None:
            return
        set_device(self.device)
        for binding in self._bindings:
            binding.close()
        self._bindings.clear()
        self._engine = None
        self._runtime = None
