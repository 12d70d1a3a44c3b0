"""Warm-up under the run's engine timeout: every batch size the engine prepared, before LoadGen starts."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import structlog

from asyncbench.engines.base import WARMUP_REPEATS, Engine
from asyncbench.errors import RunFailure

COMPILE_ALLOWANCE_S = 900.0  # a GPU engine's first warm-up size also compiles and captures graphs


def warm_up(engine: Engine, timeout_s: float, log: structlog.typing.FilteringBoundLogger) -> None:
    """Run ``engine.warmup`` size by size; a failure or a stall raises RunFailure with the cause chained.

    Each size runs on a daemon thread so a stalled engine cannot hang the process: the wait per size
    is the engine timeout per batch (a GPU engine's first size may also compile, and gets longer).
    """
    sizes = engine.capabilities.buckets
    log.info("warmup_start", engine=engine.name, sizes=list(sizes), timeout_s=timeout_s)
    for position, size in enumerate(sizes):
        outcome: list[BaseException | dict[int, float]] = []
        worker = threading.Thread(target=_capture, args=(outcome, engine.warmup, [size]), name="warmup",
                                  daemon=True)
        limit = timeout_s * WARMUP_REPEATS
        if position == 0 and engine.device != "cpu":
            limit = max(limit, COMPILE_ALLOWANCE_S)
        worker.start()
        worker.join(limit)
        if worker.is_alive():
            log.error("warmup_stalled", batch_size=size, waited_s=limit)
            raise RunFailure(f"warm-up: the {engine.name} engine stalled: batch size {size} did not finish "
                             f"{WARMUP_REPEATS} batches within {limit:g} s (--engine-timeout {timeout_s:g})")
        result = outcome[0]
        if isinstance(result, BaseException):
            failure = RunFailure.caused_by(f"warm-up: the {engine.name} engine failed at batch size {size}: "
                                           f"{type(result).__name__}: {result}", result)
            log.error("warmup_failed", batch_size=size, **failure.details())
            raise failure
        log.info("warmup_size", batch_size=size, seconds=result.get(size))


def _capture(into: list[BaseException | dict[int, float]], fn: Callable[[Sequence[int]], dict[int, float]],
             *args: Sequence[int]) -> None:
    """Append ``fn(*args)``'s result, or the exception it raised, to ``into`` (for a worker thread)."""
    try:
        into.append(fn(*args))
    except BaseException as e:  # noqa: BLE001 - handed back to the waiting thread
        into.append(e)
