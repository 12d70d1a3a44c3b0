"""Engine selection (`--engine`), kept apart from the engines so each stays importable alone.

The batch sizes and slots an engine is built with come from the caller (asyncbench.harness.policy
decides them); this module only turns a configuration into an engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from asyncbench.config import ENGINE_PRECISIONS, EngineKind, Precision, RunConfig, TorchCompile
from asyncbench.engines.base import Engine
from asyncbench.errors import ConfigError, UserError
from asyncbench.paths import BuildPaths

if TYPE_CHECKING:
    from asyncbench.engines.gpu import DeviceBackend


def resolve_engine_kind(requested: EngineKind, say: Callable[[str], None] = print) -> EngineKind:
    """`auto`: TensorRT when it imports and a GPU is present, else torch on CUDA, else onnxruntime."""
    if requested is not EngineKind.AUTO:
        return requested
    from asyncbench.cuda.api import CudaError, device_count

    try:
        gpus = device_count()
    except CudaError as e:
        say(f"note: --engine auto: CUDA is not usable ({e}); using onnxruntime")
        return EngineKind.ONNXRUNTIME
    if gpus == 0:
        return EngineKind.ONNXRUNTIME
    from asyncbench.engines.tensorrt_engine import tensorrt_available
    from asyncbench.engines.torch_engine import torch_available

    if tensorrt_available():
        return EngineKind.TENSORRT
    if torch_available():
        return EngineKind.TORCH
    return EngineKind.ONNXRUNTIME


def resolve_precision(kind: EngineKind, requested: Precision | None) -> Precision:
    """The precision asked for when this engine runs it, else the engine's best."""
    allowed = ENGINE_PRECISIONS[kind]
    if requested is not None and requested not in allowed:
        raise ConfigError(f"--precision {requested}: the {kind} engine runs {' or '.join(allowed)}")
    return requested or allowed[0]


def _gpu_devices(cfg: RunConfig, kind: EngineKind) -> list[int]:
    from asyncbench.cuda.api import CudaError, device_count

    try:
        count = device_count()
    except CudaError as e:
        raise UserError(f"the {kind} engine cannot use CUDA: {e}") from None
    if count == 0:
        raise UserError(f"the {kind} engine needs an NVIDIA GPU and none is visible (check nvidia-smi and "
                        f"CUDA_VISIBLE_DEVICES), or use --engine onnxruntime")
    wanted = cfg.gpu.count or count
    if wanted > count:
        raise ConfigError(f"--gpus {wanted}: only {count} GPU(s) are visible")
    return list(range(wanted))


def _require_backend(kind: EngineKind) -> None:
    """One clear line when the GPU engine's package is missing."""
    if kind is EngineKind.TORCH:
        from asyncbench.engines.torch_engine import torch_available

        if not torch_available():
            raise UserError("the torch engine needs torch with CUDA and a visible GPU: pip install '.[torch]', "
                            "or use --engine onnxruntime")
    if kind is EngineKind.TENSORRT:
        from asyncbench.engines.tensorrt_engine import tensorrt_available

        if not tensorrt_available():
            raise UserError("the tensorrt engine needs TensorRT's Python package: pip install '.[tensorrt]', "
                            "or use --engine torch / onnxruntime")


def create_engine(kind: EngineKind, cfg: RunConfig, paths: BuildPaths, buckets: Sequence[int], slots: int,
                  say: Callable[[str], None] = print, streams: int = 1) -> Engine:
    """The ``kind`` engine (already resolved from `auto`), built for these batch sizes and slots.

    ``buckets`` are the batch sizes it prepares (the last is its maximum); ``slots`` the batches it
    holds at once (per device for a GPU engine), spread over ``streams`` inference streams. A Triton
    engine takes its batch sizes and slots from the servers' model configuration instead.
    """
    if kind is EngineKind.AUTO:
        raise ValueError("resolve `auto` with resolve_engine_kind first")
    if kind is EngineKind.TRITON:
        if cfg.engine.precision is not None:
            raise ConfigError(f"--precision {cfg.engine.precision}: a Triton server runs the precision it serves "
                              f"(choose it with `asyncbench serve --precision`)")
        from asyncbench.engines.triton_remote import TritonEngine

        return TritonEngine(cfg.engine.triton_urls, cfg.engine.triton_model, cfg.batching.max_batch_size,
                            cfg.batching.inflight, cfg.engine.timeout_s, cfg.engine.triton_shm,
                            cfg.engine.triton_shm_token)
    precision = resolve_precision(kind, cfg.engine.precision)
    max_batch = max(buckets)
    if kind is EngineKind.NULL:
        from asyncbench.engines.null import NullEngine, parse_null_spec

        return NullEngine(max_batch_size=max_batch, slots=slots, **parse_null_spec(cfg.engine.null_spec))
    devices = _gpu_devices(cfg, kind) if kind.on_gpu else []
    _require_backend(kind)  # before building models: a missing package should fail at once
    from asyncbench.model.calibrate import ensure_engine_models

    fp32, int8 = ensure_engine_models(paths)
    if kind is EngineKind.ONNXRUNTIME:
        from asyncbench.engines.onnxruntime_engine import OnnxRuntimeEngine

        model = fp32 if precision is Precision.FP32 else int8
        return OnnxRuntimeEngine(model, max_batch_size=max_batch, intra_op_threads=cfg.engine.threads, slots=slots)
    backends: list[DeviceBackend]
    if kind is EngineKind.TORCH:
        from asyncbench.engines.torch_engine import TorchBackend, use_cache_dir

        use_cache_dir(paths.compile_cache)
        compile_mode = None if cfg.engine.torch_compile is TorchCompile.NONE else str(cfg.engine.torch_compile)
        if precision is Precision.INT8 and cfg.engine.precision is None:
            from asyncbench.engines.torch_engine import int8_unsupported

            if (why := int8_unsupported(fp32, paths.calibration_cache)) is not None:
                say(f"note: torch engine: fp16, not its default int8 ({why})")
                precision = Precision.FP16
        torch_backends = [TorchBackend(fp32, device, buckets, str(precision), compile_mode,
                                       graphs=cfg.gpu.cuda_graphs, calibration=paths.calibration_cache)
                          for device in devices]
        launches = "CUDA graphs per batch size" if cfg.gpu.cuda_graphs else "kernels launched one by one (no graphs)"
        say(f"note: torch engine: {torch_backends[0].path}; {launches} (kernels cached under {paths.compile_cache})")
        backends = list(torch_backends)
    else:
        from asyncbench.engines.tensorrt_engine import TensorRTBackend
        from asyncbench.model.calibrate import ensure_signed_int8_model

        signed = ensure_signed_int8_model(paths)  # TensorRT takes symmetric signed int8 only
        backends = [TensorRTBackend(signed, device, buckets, paths.engine_cache, graphs=cfg.gpu.cuda_graphs)
                    for device in devices]
    from asyncbench.engines.gpu import GpuEngine

    return GpuEngine(backends, slots, start_from_device=cfg.gpu.start_from_device, notifier=cfg.gpu.completion,
                     inference_streams=streams, copy_streams=cfg.gpu.copy_streams)
