"""One run's account of its samples, whichever driver moves them: the loop pipeline or the inline driver.

It holds the counters (issued, completed, failed), the harness's latency record, the stage times,
the run's failure (the first one wins), and the one exit every sample leaves by: ``finish``
completes a list of sample ids to LoadGen (with their top-1, or as failed) and counts them. The
drivers keep the rule that each id reaches ``finish`` exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from asyncbench.errors import RunFailure
from asyncbench.runtime.execution import StageTimes
from asyncbench.runtime.latency import LatencyHistogram
from asyncbench.runtime.observer import NO_OBSERVER, Observer

# complete(ids, top1): top1 is an int32 array aligned with ids, or None when the samples failed.
Completer = Callable[[Sequence[int], "np.ndarray | None"], None]


class Ledger:
    """Counters, latency record, stage times and the failure of one run; ``finish`` is every sample's way out."""

    def __init__(self, complete: Completer, times: StageTimes, *, clock: Callable[[], int] = time.monotonic_ns,
                 observer: Observer = NO_OBSERVER) -> None:
        self._complete = complete
        self.times = times
        self.clock = clock  # the clock arrivals are stamped with (the inbox's)
        self.observer = observer
        self.latency = LatencyHistogram()
        self.failure: RunFailure | None = None
        self.issued = 0
        self.completed = 0
        self.failed_samples = 0

    def fail(self, reason: RunFailure | str) -> RunFailure:
        """Record the run's failure (the first one stays); returns the one recorded."""
        if self.failure is None:
            self.failure = reason if isinstance(reason, RunFailure) else RunFailure(reason)
        return self.failure

    def finish(self, ids: Sequence[int], top1: np.ndarray | None) -> None:
        """Complete ``ids`` to LoadGen (``top1`` None: as failed) and count them."""
        self.completed += len(ids)
        if top1 is None:
            self.failed_samples += len(ids)
        self._complete(ids, top1)

    def complete_batch(self, seq: int, ids: Sequence[int], top1: np.ndarray | None,
                       spans: Sequence[tuple[int, int, int]]) -> int:
        """One executed batch to LoadGen, recorded (latency, stage time, the observer); returns the clock after it."""
        t0 = time.perf_counter()
        observer = self.observer
        token = observer.complete_start(seq) if observer.active else None
        self.finish(ids, top1)
        if observer.active:
            observer.complete_end(token)
        now = self.clock()
        self.latency.add(now, spans)
        self.times.batches += 1
        self.times.samples += len(ids)
        self.times.complete += time.perf_counter() - t0
        return now


class Driver(Protocol):
    """What moves a run's samples through the engine into its ``Ledger``: the loop pipeline or the inline driver."""

    ledger: Ledger

    @property
    def wakeups(self) -> int:
        """Times LoadGen's thread woke the event loop."""
        ...

    def issue(self, ids: list[int], indices: list[int]) -> None:
        """LoadGen's issue thread: take one issue call."""
        ...

    async def start(self) -> None:
        """On the loop, before the first issue call: the execution's per-loop resources, made and warmed."""
        ...

    async def run(self) -> None:
        """On the loop, until ``close`` (or an abort) lets it finish; the execution is closed when it returns."""
        ...

    def abort(self, reason: RunFailure | str) -> None:
        """Loop thread: fail the run; what is pending and what comes later is completed as failed."""
        ...

    def close(self) -> None:
        """Loop thread: LoadGen's test ended, no more issue calls come."""
        ...

    def histogram(self) -> dict[int, int]:
        """Batches run per batch size."""
        ...

    def statistics(self) -> dict[str, object]:
        """Queue state for the event log."""
        ...
