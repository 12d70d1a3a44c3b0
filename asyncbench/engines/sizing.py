"""How big an engine is built, decided before it exists: its batch sizes, slots and streams, and opening it.

The sizes come from the command line or the defaults of the engine's kind; the batcher's policy
over them is decided after warm-up (``asyncbench.harness.policy``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from asyncbench.config import EngineKind, RunConfig
from asyncbench.engines.base import Engine, batch_sizes_upto
from asyncbench.engines.factory import create_engine, resolve_engine_kind
from asyncbench.errors import ConfigError
from asyncbench.paths import BuildPaths

CPU_MAX_BATCH = 32
NULL_MAX_BATCH = 1024
GPU_MAX_BATCH = 1024  # Offline peaks at the largest batch; Server and MultiStream pick smaller ones
CPU_SLOTS = 2  # batches in a CPU engine at once: one computing, one being gathered
GPU_EXTRA_SLOTS = 2  # batches in flight per GPU beyond one per inference stream: one copying in, one coming back
GPU_STREAMS = 2  # inference streams per GPU: the best Server result on the H200 (docs/results/gpu.md)


@dataclass(frozen=True)
class EngineSizing:
    """What an engine is built for: the batch sizes it prepares and the batches it holds at once."""

    buckets: tuple[int, ...]
    slots: int  # per device for a GPU engine
    streams: int = 1  # inference streams per device (GPU engines)

    @property
    def max_batch_size(self) -> int:
        """The largest batch the engine runs."""
        return self.buckets[-1]


def engine_sizing(cfg: RunConfig, kind: EngineKind) -> EngineSizing:
    """``--max-batch-size`` and ``--inflight``, else the defaults of this kind of engine."""
    default_max = GPU_MAX_BATCH if kind.on_gpu else NULL_MAX_BATCH if kind is EngineKind.NULL else CPU_MAX_BATCH
    max_batch = cfg.batching.max_batch_size or default_max
    if not kind.on_gpu:
        return EngineSizing(batch_sizes_upto(max_batch), cfg.batching.inflight or CPU_SLOTS)
    asked = cfg.gpu.inference_streams
    streams = asked or (min(GPU_STREAMS, cfg.batching.inflight) if cfg.batching.inflight else GPU_STREAMS)
    slots = cfg.batching.inflight or streams + GPU_EXTRA_SLOTS
    if slots < streams:
        raise ConfigError(f"--inflight {slots} is fewer slots than --inference-streams {streams}: "
                          f"each inference stream needs a slot of its own")
    return EngineSizing(batch_sizes_upto(max_batch), slots, streams)


def open_engine(cfg: RunConfig, paths: BuildPaths, say: Callable[[str], None] = print) -> Engine:
    """The engine ``cfg`` names (`auto` resolved and announced), sized by ``engine_sizing``."""
    kind = resolve_engine_kind(cfg.engine.kind, say)
    if cfg.engine.kind is EngineKind.AUTO:
        say(f"note: --engine auto chose {kind}")
    sizing = engine_sizing(cfg, kind)
    return create_engine(kind, cfg, paths, sizing.buckets, sizing.slots, say, sizing.streams)


def engine_peak_qps(engine: Engine) -> float | None:
    """Best samples/s over the batch sizes the engine's warm-up measured."""
    rates = [b / lat for b in engine.capabilities.buckets if (lat := engine.latency(b))]
    return max(rates) if rates else None
