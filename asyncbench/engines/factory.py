"""Engine selection (`--engine`), kept apart from the engines so each stays importable alone."""

from __future__ import annotations

from collections.abc import Callable

from asyncbench.config import ENGINE_PRECISIONS, RunConfig
from asyncbench.engines.base import Engine
from asyncbench.errors import UsageError, UserError
from asyncbench.paths import BuildPaths

CPU_MAX_BATCH = 32
GPU_MAX_BATCH = 1024  # Offline peaks at the largest batch; Server and MultiStream pick smaller ones
GPU_SLOTS = 3  # batches in flight per GPU: one copying in, one computing, one coming back


def resolve_engine_name(requested: str, say: Callable[[str], None] = print) -> str:
    """`auto`: TensorRT when it imports and a GPU is present, else torch on CUDA, else onnxruntime."""
    if requested != "auto":
        return requested
    from asyncbench.cuda.api import CudaError, device_count

    try:
        gpus = device_count()
    except CudaError as e:
        say(f"note: --engine auto: CUDA is not usable ({e}); using onnxruntime")
        return "onnxruntime"
    if gpus == 0:
        return "onnxruntime"
    from asyncbench.engines.tensorrt_engine import tensorrt_available
    from asyncbench.engines.torch_engine import torch_available

    if tensorrt_available():
        return "tensorrt"
    if torch_available():
        return "torch"
    return "onnxruntime"


def _gpu_devices(cfg: RunConfig, name: str) -> list[int]:
    from asyncbench.cuda.api import CudaError, device_count

    try:
        count = device_count()
    except CudaError as e:
        raise UserError(f"the {name} engine cannot use CUDA: {e}") from None
    if count == 0:
        raise UserError(f"the {name} engine needs an NVIDIA GPU and none is visible (check nvidia-smi and "
                        f"CUDA_VISIBLE_DEVICES), or use --engine onnxruntime")
    wanted = cfg.gpus or count
    if wanted > count:
        raise UsageError(f"--gpus {wanted}: only {count} GPU(s) are visible")
    return list(range(wanted))


def _require_backend(name: str) -> None:
    """One clear line when the GPU engine's package is missing."""
    if name == "torch":
        from asyncbench.engines.torch_engine import torch_available

        if not torch_available():
            raise UserError("the torch engine needs torch with CUDA and a visible GPU: pip install '.[torch]', "
                            "or use --engine onnxruntime")
    if name == "tensorrt":
        from asyncbench.engines.tensorrt_engine import tensorrt_available

        if not tensorrt_available():
            raise UserError("the tensorrt engine needs TensorRT's Python package: pip install '.[tensorrt]', "
                            "or use --engine torch / onnxruntime")


def _gpu_engine(cfg: RunConfig, devices: list[int], make_backend: Callable[[int, list[int]], object]) -> Engine:
    from asyncbench.engines.gpu import GpuEngine
    from asyncbench.runtime.runner import batch_sizes_upto

    buckets = batch_sizes_upto(cfg.max_batch_size or GPU_MAX_BATCH)
    backends = [make_backend(device, buckets) for device in devices]
    return GpuEngine(backends, cfg.inflight or GPU_SLOTS, start_from_device=cfg.start_from_device,
                     notifier=cfg.completion)


def create_engine(cfg: RunConfig, paths: BuildPaths, say: Callable[[str], None] = print) -> Engine:
    """The engine the config names; `auto` picks the best one this machine can run."""
    name = resolve_engine_name(cfg.engine, say)
    if cfg.engine == "auto":
        say(f"note: --engine auto chose {name}")
    allowed = ENGINE_PRECISIONS[name]
    if cfg.precision is not None and cfg.precision not in allowed:
        raise UsageError(f"--precision {cfg.precision}: the {name} engine runs {' or '.join(allowed)}")
    precision = cfg.precision or allowed[0]
    if name == "null":
        from asyncbench.engines.null import NullEngine, parse_null_spec

        options = parse_null_spec(cfg.null_spec)
        if cfg.max_batch_size:
            options["max_batch_size"] = cfg.max_batch_size
        return NullEngine(**options)
    devices = _gpu_devices(cfg, name) if name in ("torch", "tensorrt") else []
    _require_backend(name)  # before building models: a missing package should fail at once
    from asyncbench.model.calibrate import ensure_engine_models

    fp32, int8 = ensure_engine_models(paths)
    if name == "onnxruntime":
        from asyncbench.engines.onnxruntime_engine import OnnxRuntimeEngine

        model = fp32 if precision == "fp32" else int8
        return OnnxRuntimeEngine(model, max_batch_size=cfg.max_batch_size or CPU_MAX_BATCH,
                                 intra_op_threads=cfg.threads)
    if name == "torch":
        from asyncbench.engines.torch_engine import TorchBackend, use_cache_dir

        use_cache_dir(paths.compile_cache)
        compile_mode = None if cfg.torch_compile == "none" else cfg.torch_compile

        def torch_backend(device: int, buckets: list[int]) -> TorchBackend:
            backend = TorchBackend(fp32, device, buckets, precision, compile_mode)
            if device == devices[0]:
                say(f"note: torch engine: {backend.path}; CUDA graphs per batch size "
                    f"(kernels cached under {paths.compile_cache})")
            return backend
        return _gpu_engine(cfg, devices, torch_backend)
    if name == "tensorrt":
        from asyncbench.engines.tensorrt_engine import TensorRTBackend

        return _gpu_engine(cfg, devices,
                           lambda device, buckets: TensorRTBackend(int8, device, buckets, paths.engine_cache))
    raise UsageError(f"unknown engine {name!r}")
