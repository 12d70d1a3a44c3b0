"""What a run's instruments see: one interface for the timeline, NVTX, the progress line and the event log.

The drivers call a hook at each stage of a batch (never per sample, except LoadGen's issue call,
which at Server rates is one sample). The base class does nothing and says so with ``active``
False, so the hot path holds one check per stage and pays nothing more when no instrument is on.
``watch`` runs beside the test on the loop (the progress line); ``finished`` gets the run's
closing facts (the event log). ``Observers`` joins several into one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast


class Counters(Protocol):
    """The running counts a watcher reads (a run's Ledger)."""

    issued: int
    completed: int
    failed_samples: int


@dataclass(frozen=True)
class BatchStamps:
    """Monotonic-clock nanoseconds of one batch's life."""

    seq: int
    size: int
    slot: int
    oldest_arrival: int
    formed: int
    started: int
    executed: int
    completed: int
    ok: bool
    pending_after: int  # samples still waiting in the batcher when it was formed
    in_flight: int  # batches executing when it started (itself included)


class Observer:
    """The hooks a run calls; every one does nothing here. Subclasses set ``active`` when they use the batch hooks."""

    active = False  # True: the drivers call the per-batch hooks (issued .. batch_done)

    def issued(self, samples: int) -> None:
        """LoadGen's issue thread: one issue call of ``samples`` samples."""

    def pull_start(self, calls: int) -> object:
        """The loop takes ``calls`` queued issue calls from the inbox; returns what ``pull_end`` gets."""
        return None

    def pull_end(self, token: object) -> None:
        """The inbox pull that ``pull_start`` began has ended."""

    def execute_start(self, seq: int, size: int, slot: int | None) -> object:
        """Batch ``seq`` goes to slot ``slot`` (None: inline, on LoadGen's thread); returns a token for the end."""
        return None

    def execute_end(self, token: object) -> None:
        """The execution ``execute_start`` began has ended (result or failure)."""

    def complete_start(self, seq: int) -> object:
        """Batch ``seq`` is being completed to LoadGen; returns ``complete_end``'s token."""
        return None

    def complete_end(self, token: object) -> None:
        """The completion ``complete_start`` began has ended."""

    def batch_done(self, stamps: BatchStamps) -> None:
        """A batch's whole life, once it has been completed."""

    async def watch(self, ledger: Counters, min_duration_s: float) -> None:
        """Runs on the loop beside LoadGen's test until cancelled at its end (the progress line)."""

    def finished(self, **facts: object) -> None:
        """The run's closing facts: counts, batch sizes, queue statistics, the failure (the event log)."""


class Observers(Observer):
    """Several observers as one; active when any of them is."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self._all = tuple(observers)
        self._batch = tuple(o for o in self._all if o.active)
        self.active = bool(self._batch)

    def issued(self, samples: int) -> None:
        for o in self._batch:
            o.issued(samples)

    def pull_start(self, calls: int) -> object:
        return [o.pull_start(calls) for o in self._batch]

    def pull_end(self, token: object) -> None:
        for o, t in zip(self._batch, cast("list[object]", token), strict=True):
            o.pull_end(t)

    def execute_start(self, seq: int, size: int, slot: int | None) -> object:
        return [o.execute_start(seq, size, slot) for o in self._batch]

    def execute_end(self, token: object) -> None:
        for o, t in zip(self._batch, cast("list[object]", token), strict=True):
            o.execute_end(t)

    def complete_start(self, seq: int) -> object:
        return [o.complete_start(seq) for o in self._batch]

    def complete_end(self, token: object) -> None:
        for o, t in zip(self._batch, cast("list[object]", token), strict=True):
            o.complete_end(t)

    def batch_done(self, stamps: BatchStamps) -> None:
        for o in self._batch:
            o.batch_done(stamps)

    async def watch(self, ledger: Counters, min_duration_s: float) -> None:
        await asyncio.gather(*(o.watch(ledger, min_duration_s) for o in self._all))

    def finished(self, **facts: object) -> None:
        for o in self._all:
            o.finished(**facts)


NO_OBSERVER = Observer()
