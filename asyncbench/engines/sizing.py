"""How big an engine is built, decided before it exists: its batch sizes, slots and streams, and opening it.

The sizes come from the command line or the defaults of the engine's kind; the batcher's policy
over them is decided after warm-up (``asyncbench.harness.policy``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from asyncbench.config import EngineKind, RunConfig
from asyncbench.engines.base import Engine, ExecutionForm, batch_sizes_upto
from asyncbench.engines.factory import create_engine, resolve_engine_kind
from asyncbench.engines.null import parse_null_spec
from asyncbench.errors import ConfigError
from asyncbench.paths import BuildPaths

CPU_MAX_BATCH = 32
NULL_MAX_BATCH = 1024
GPU_MAX_BATCH = 1024  # Offline peaks at the largest batch; Server and MultiStream pick smaller ones
CPU_SLOTS = 2  # batches in a CPU engine at once: one computing, one being gathered
GPU_EXTRA_SLOTS = 2  # batches in flight per GPU beyond one per inference stream: one copying in, one coming back
GPU_STREAMS = 2  # inference streams per GPU: the best Server result on the H200 (docs/results/gpu.md)
# The null engine's loop and device forms model one device: it gets a GPU's slots. With a CPU engine's two, a
# host hiccup of a few ms left the modelled device idle and the Server tail long: tune at 50 us per sample on a
# 2-core CPU found 18.4-19.4k of the 20k QPS capacity with 2 slots, 19.4-19.6k with 4 (alternating runs).
NULL_DEVICE_SLOTS = GPU_STREAMS + GPU_EXTRA_SLOTS


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
        default_slots = CPU_SLOTS
        if kind is EngineKind.NULL and parse_null_spec(cfg.engine.null_spec).get("form") is not ExecutionForm.BLOCKING:
            default_slots = NULL_DEVICE_SLOTS
        return EngineSizing(batch_sizes_upto(max_batch), cfg.batching.inflight or default_slots)
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
