"""Engine selection (`--engine`), kept apart from the engines so each stays importable alone."""

from __future__ import annotations

from asyncbench.config import RunConfig
from asyncbench.engines.base import Engine
from asyncbench.errors import UsageError
from asyncbench.paths import BuildPaths

CPU_MAX_BATCH = 32


def create_engine(cfg: RunConfig, paths: BuildPaths) -> Engine:
    """The engine the config names; `auto` picks the best one this machine can run."""
    name = "onnxruntime" if cfg.engine == "auto" else cfg.engine
    if name == "null":
        from asyncbench.engines.null import NullEngine, parse_null_spec

        options = parse_null_spec(cfg.null_spec)
        if cfg.max_batch_size:
            options["max_batch_size"] = cfg.max_batch_size
        return NullEngine(**options)
    if name == "onnxruntime":
        from asyncbench.engines.onnxruntime_engine import OnnxRuntimeEngine
        from asyncbench.model.calibrate import ensure_engine_models

        fp32, int8 = ensure_engine_models(paths)
        return OnnxRuntimeEngine(int8 if cfg.precision == "int8" else fp32,
                                 max_batch_size=cfg.max_batch_size or CPU_MAX_BATCH, intra_op_threads=cfg.threads)
    raise UsageError(f"the {name} engine is not part of this build yet (it comes with the GPU path): "
                     f"use --engine onnxruntime or --engine null")
