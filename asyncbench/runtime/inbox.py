"""The hand-off from LoadGen's issue thread to the event loop, with a doorbell that rarely rings.

Waking the loop costs far more than queueing: at 15k Server queries/s a wake-up per issue call
kept the loop busy and the GIL contended, and the p99 suffered. So the LoadGen thread appends
(ids, indices, arrival time) under a lock and rings the loop only when someone must look now:
  - the loop is idle (the batcher waits for an arrival, not for a deadline), or
  - a full batch has piled up.
While the batcher sleeps towards a deadline the inbox stays quiet; the deadline's sleeper empties
it just before the batcher decides, and the arrival times keep the delay honest (measured from
the oldest sample's real arrival).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from itertools import chain

from asyncbench.runtime.batcher import sleep_until
from asyncbench.runtime.observer import NO_OBSERVER, Observer


class Inbox:
    """Thread-safe queue of issue calls with a doorbell; see the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sink: Callable[[list[int], list[int], int, int], None],
                 ring_at: int, clock: Callable[[], int] = time.monotonic_ns, observer: Observer = NO_OBSERVER) -> None:
        self._loop, self._sink, self._ring_at, self._clock = loop, sink, max(1, ring_at), clock
        self._queue: list[tuple[list[int], list[int], int]] = []
        self._count = 0
        self._lock = threading.Lock()
        self._scheduled = False  # a pull is already queued on the loop
        self._quiet = False  # the batcher sleeps towards a deadline and will pull then
        self._observer = observer
        self.rings = 0  # times the loop was woken (call_soon_threadsafe): the hand-off's cost driver

    def put(self, ids: list[int], indices: list[int]) -> None:
        """Any thread: queue one issue call; ring the loop only when it must act now.

        The arrival is read under the lock, so calls queue in the order of their stamps (with two
        issuing threads, a stamp read before the lock could land behind a newer one).
        """
        with self._lock:
            self._queue.append((ids, indices, self._clock()))
            self._count += len(ids)
            if self._scheduled or (self._quiet and self._count < self._ring_at):
                return
            self._scheduled = True
            self.rings += 1
        self._loop.call_soon_threadsafe(self.pull)

    def pull(self) -> None:
        """Loop thread: hand everything queued so far to the sink as one chunk, stamped with the oldest arrival.

        One chunk per pull instead of one per issue call: at Server rates each call is one sample,
        and per-chunk bookkeeping in the batcher was the loop's largest cost. Stamping the merged
        chunk with its oldest arrival can only make the batcher dispatch earlier, never later. The
        newest arrival goes along too, so latency records can spread the chunk's samples between them.
        """
        with self._lock:
            queued, self._queue = self._queue, []
            self._count = 0
            self._scheduled = False
        observer = self._observer
        observed = observer.active and bool(queued)
        token = observer.pull_start(len(queued)) if observed else None
        if len(queued) == 1:
            ids, indices, arrival = queued[0]
            self._sink(ids, indices, arrival, arrival)
        elif queued:  # chain walks the lists in C: a comprehension here was a tenth of the loop's time
            ids = list(chain.from_iterable(chunk[0] for chunk in queued))
            indices = list(chain.from_iterable(chunk[1] for chunk in queued))
            self._sink(ids, indices, queued[0][2], queued[-1][2])
        if observed:
            observer.pull_end(token)

    def _set_quiet(self, quiet: bool) -> None:
        with self._lock:
            self._quiet = quiet
            ring = not quiet and bool(self._queue) and not self._scheduled
            if ring:
                self._scheduled = True
        if ring:
            self._loop.call_soon(self.pull)

    async def sleep_until(self, until_ns: int) -> None:
        """The batcher's deadline sleeper: quiet while sleeping, then pull so the decision sees every arrival."""
        self._set_quiet(True)
        try:
            await sleep_until(until_ns, self._clock)
            self.pull()
        finally:
            self._set_quiet(False)
