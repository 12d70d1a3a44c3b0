"""Dynamic batching in the manner of Triton Inference Server's dynamic batcher.

The policy is the pure function `decide`, so every rule can be tested without an event loop.
`Batcher` drives it: LoadGen's issue calls arrive through the synchronous `submit`, batches leave
through a bounded `Channel`, and a full channel holds the batcher back (backpressure) while
`submit` keeps accepting, so that held samples can still merge into bigger batches.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import pairwise

from asyncbench.runtime.channel import Channel


@dataclass(frozen=True)
class BatchPolicy:
    """Triton's dynamic-batching knobs; the queue delay is measured from the oldest pending sample."""

    max_batch_size: int
    max_queue_delay_ns: int
    preferred_batch_sizes: tuple[int, ...] = ()
    # Not None: send what is pending at once when the engine is idle (nothing executing), the last batch left at
    # least this long ago, at most `idle_max_pending` samples wait and at most `idle_max_recent` arrived within
    # the last queue delay. At low load a sample then never waits out the queue delay for company. At higher
    # rates more samples arrive per queue delay and batches form exactly as without the rule. Sending to the idle
    # engine at every chance cut the null engine's highest VALID Server QPS from 250k to below it on 2 cores;
    # a gate on pending samples alone still sent small batches into the H200's idle gaps at 70k QPS; a gate at 4
    # arrivals per queue delay kept waiting at 2,000 QPS often enough to triple the p99 (Poisson bursts).
    idle_gap_ns: int | None = None
    idle_max_pending: int = 4
    idle_max_recent: int = 16

    def __post_init__(self) -> None:
        sizes = tuple(self.preferred_batch_sizes)  # a list from a config file is accepted too
        object.__setattr__(self, "preferred_batch_sizes", sizes)
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay_ns < 0:
            raise ValueError(f"max_queue_delay_ns must be >= 0, got {self.max_queue_delay_ns}")
        if self.idle_gap_ns is not None and self.idle_gap_ns < 0:
            raise ValueError(f"idle_gap_ns must be >= 0 or None, got {self.idle_gap_ns}")
        if any(not 1 <= size <= self.max_batch_size for size in sizes):
            raise ValueError(f"preferred_batch_sizes {list(sizes)} must each lie in 1..max_batch_size "
                             f"({self.max_batch_size})")
        if any(a >= b for a, b in pairwise(sizes)):
            raise ValueError(f"preferred_batch_sizes {list(sizes)} must be sorted ascending, without repeats")


@dataclass(frozen=True)
class Dispatch:
    """Send the `size` oldest pending samples now."""

    size: int


@dataclass(frozen=True)
class Wait:
    """Hold the pending samples until the clock reaches `until_ns`, or until an arrival (None: only an arrival)."""

    until_ns: int | None


def decide(pending: int, oldest_arrival_ns: int | None, now_ns: int, policy: BatchPolicy,
           more_coming: bool = True, engine_idle: bool = False, last_dispatch_ns: int | None = None,
           recent_arrivals: int = 0) -> Dispatch | Wait:
    """Triton's rule: a full batch, then the largest preferred batch that can be formed, go at once; a smaller
    batch waits until the oldest sample has waited the queue delay, or until no more samples can come.
    With ``policy.idle_gap_ns``, an idle engine gets whatever is pending once that long has passed since
    the last batch left (``last_dispatch_ns``; None: none has), unless more than ``policy.idle_max_pending``
    samples are pending or more than ``policy.idle_max_recent`` arrived within the last queue delay
    (``recent_arrivals``)."""
    if pending == 0:
        return Wait(None)
    if pending < 0 or oldest_arrival_ns is None:
        raise ValueError(f"decide() needs pending >= 0 and, with samples pending, the oldest arrival time; "
                         f"got pending={pending}, oldest_arrival_ns={oldest_arrival_ns}")
    if pending >= policy.max_batch_size:
        return Dispatch(policy.max_batch_size)
    idle_at = None
    if (engine_idle and policy.idle_gap_ns is not None and pending <= policy.idle_max_pending
            and recent_arrivals <= policy.idle_max_recent):
        idle_at = now_ns if last_dispatch_ns is None else last_dispatch_ns + policy.idle_gap_ns
        if now_ns >= idle_at:
            return Dispatch(pending)
    for size in reversed(policy.preferred_batch_sizes):
        if size <= pending:
            return Dispatch(size)
    deadline = oldest_arrival_ns + policy.max_queue_delay_ns
    if now_ns >= deadline or not more_coming:
        return Dispatch(pending)
    return Wait(deadline if idle_at is None else min(deadline, idle_at))


@dataclass
class Batch:
    """Samples cut together: LoadGen ids, QSL indices, when the oldest arrived, and the batch's number.

    ``spans`` are (first arrival, last arrival, samples) per piece of a submitted chunk: the samples
    of a piece arrived between those two times (in order), so latencies can be recorded per piece.
    """

    ids: list[int]
    indices: list[int]
    oldest_arrival_ns: int
    seq: int
    spans: list[tuple[int, int, int]] = field(default_factory=list, compare=False)
    formed_ns: int = field(default=0, compare=False)  # when the batcher cut it (its clock)
    pending_after: int = field(default=0, compare=False)  # samples left waiting when it was cut


async def sleep_until(until_ns: int, clock: Callable[[], int]) -> None:
    """Sleep on the loop's timers until `clock()` reaches `until_ns` (uvloop's timers round to 1 ms)."""
    while (left := until_ns - clock()) > 0:
        await asyncio.sleep(left / 1e9)


class Batcher:
    """Holds submitted samples and sends them to `out` in batches cut by `decide`.

    `clock` and `sleep_until` (awaitable that returns once `clock()` >= its argument) are injectable
    so that tests drive time by hand; by default they are time.monotonic_ns and the loop's timers.
    """

    def __init__(self, policy: BatchPolicy, out: Channel[Batch], clock: Callable[[], int] = time.monotonic_ns,
                 sleep_until: Callable[[int], Awaitable[None]] | None = None,
                 engine_idle: Callable[[], bool] = lambda: False) -> None:
        self.policy = policy
        self._engine_idle = engine_idle  # nothing executing: see BatchPolicy.idle_gap_ns
        self._out = out
        self._clock = clock
        self._sleep_until = sleep_until or self._loop_sleep_until
        # (ids, indices, first arrival, last arrival) per submit
        self._chunks: deque[tuple[list[int], list[int], int, int]] = deque()
        self._offset = 0  # samples of the front chunk already dispatched
        self._pending = 0
        self._wake = asyncio.Event()  # set by submit/close/drain and by the deadline sleeper
        self._closed = False
        self._seq = 0
        self._histogram: dict[int, int] = {}
        self._timer: asyncio.Future[None] | None = None
        self._timer_due = 0
        self._last_dispatch: int | None = None  # clock of the last batch sent
        # Idle dispatch only: (arrival, samples) per submit within the last queue delay, and their sum.
        self._recent: deque[tuple[int, int]] = deque()
        self._recent_count = 0

    @property
    def pending_count(self) -> int:
        """Samples submitted and not yet dispatched (nor drained)."""
        return self._pending

    def histogram(self) -> dict[int, int]:
        """How many batches of each size were dispatched, by size."""
        return dict(sorted(self._histogram.items()))

    def submit(self, ids: list[int], indices: list[int], arrival_ns: int | None = None,
               last_arrival_ns: int | None = None) -> None:
        """Accept one LoadGen issue call (on the loop thread); the lists are kept, not copied.

        `arrival_ns` is when the samples really arrived, if they waited in an inbox before reaching
        the loop: the queue delay is measured from it, not from the hand-off. `last_arrival_ns` is
        when the newest of them arrived (a merged inbox chunk), for latency records only.
        """
        if self._closed:
            raise RuntimeError("Batcher.submit() after close()")
        if len(ids) != len(indices):
            raise ValueError(f"submit() needs one index per id, got {len(ids)} ids and {len(indices)} indices")
        if ids:
            first = self._clock() if arrival_ns is None else arrival_ns
            self._chunks.append((ids, indices, first, first if last_arrival_ns is None else last_arrival_ns))
            self._pending += len(ids)
            if self.policy.idle_gap_ns is not None:
                self._recent.append((first, len(ids)))
                self._recent_count += len(ids)
            self._wake.set()

    @property
    def dispatched(self) -> int:
        """Batches sent to `out` so far."""
        return self._seq

    def engine_went_idle(self) -> None:
        """The engine finished its last batch: decide again (an idle engine may take what is pending now)."""
        if self.policy.idle_gap_ns is not None and self._pending:
            self._wake.set()

    def close(self) -> None:
        """No more submits: run() dispatches what is left, closes `out` and returns."""
        self._closed = True
        self._wake.set()

    def drain(self) -> tuple[list[int], list[int]]:
        """Remove and return every pending sample (ids, indices), oldest first, so an abort can fail them."""
        ids, indices, _ = self._take(self._pending)
        self._wake.set()
        return ids, indices

    async def run(self) -> None:
        """Dispatch batches until close() and nothing is left.

        `out` is closed however run() ends, so its consumers never wait on a batcher that is gone. A
        batch whose send fails (run() cancelled, `out` closed by someone else) goes back to the front of
        the pending samples, where drain() finds it.
        """
        try:
            while True:
                self._wake.clear()
                oldest = self._chunks[0][2] if self._chunks else None
                now = self._clock()
                idle = self.policy.idle_gap_ns is not None and self._engine_idle()
                decision = decide(self._pending, oldest, now, self.policy, not self._closed, idle,
                                  self._last_dispatch, self._arrived_since(now - self.policy.max_queue_delay_ns)
                                  if idle else 0)
                if isinstance(decision, Dispatch):
                    await self._dispatch(decision.size)
                elif self._closed:
                    return
                else:
                    self._arm(decision.until_ns)
                    await self._wake.wait()
        finally:
            self._out.close()
            self._disarm()

    async def _dispatch(self, size: int) -> None:
        oldest = self._chunks[0][2]
        ids, indices, spans = self._take(size)
        try:
            await self._out.send(Batch(ids, indices, oldest, self._seq, spans, self._clock(), self._pending))
            self._last_dispatch = self._clock()
        except BaseException:
            self._put_back(ids, indices, oldest, max(last for _, last, _ in spans))
            raise
        self._seq += 1
        self._histogram[size] = self._histogram.get(size, 0) + 1

    def _arrived_since(self, since_ns: int) -> int:
        """Samples submitted at or after ``since_ns`` (older records are dropped)."""
        recent = self._recent
        while recent and recent[0][0] < since_ns:
            self._recent_count -= recent.popleft()[1]
        return self._recent_count

    def _take(self, n: int) -> tuple[list[int], list[int], list[tuple[int, int, int]]]:
        """The n oldest pending samples and their arrival spans; a batch that ends inside a chunk leaves the rest."""
        ids: list[int] = []
        indices: list[int] = []
        spans: list[tuple[int, int, int]] = []
        self._pending -= n
        while n:
            chunk_ids, chunk_indices, first, last = self._chunks[0]
            start = self._offset
            stop = min(start + n, len(chunk_ids))
            ids += chunk_ids[start:stop]
            indices += chunk_indices[start:stop]
            step = (last - first) / max(len(chunk_ids) - 1, 1)  # arrivals spread evenly over the chunk
            spans.append((first + round(step * start), first + round(step * (stop - 1)), stop - start))
            n -= stop - start
            if stop == len(chunk_ids):
                self._chunks.popleft()
                self._offset = 0
            else:
                self._offset = stop
        return ids, indices, spans

    def _put_back(self, ids: list[int], indices: list[int], arrival_ns: int, last_arrival_ns: int) -> None:
        """Undo the _take of a batch that was never sent: its samples become the oldest pending ones again."""
        if self._offset:
            front_ids, front_indices, front_first, front_last = self._chunks[0]
            self._chunks[0] = (front_ids[self._offset:], front_indices[self._offset:], front_first, front_last)
            self._offset = 0
        self._chunks.appendleft((ids, indices, arrival_ns, last_arrival_ns))
        self._pending += len(ids)

    def _arm(self, until_ns: int | None) -> None:
        """Keep one sleeper per deadline: the deadline follows the oldest sample, so arrivals rarely move it."""
        timer = self._timer
        if timer is not None and until_ns == self._timer_due and not timer.done():
            return
        self._disarm()
        if until_ns is not None:
            self._timer = asyncio.ensure_future(self._sleep_until(until_ns))
            self._timer.add_done_callback(self._on_timer)
            self._timer_due = until_ns

    def _on_timer(self, timer: asyncio.Future[None]) -> None:
        if not timer.cancelled():
            self._wake.set()

    def _disarm(self) -> None:
        """Stop the deadline sleeper; one that has finished is reaped, so a failing sleep_until fails run()."""
        timer, self._timer = self._timer, None
        if timer is None:
            return
        if not timer.done():
            timer.cancel()
        elif not timer.cancelled():
            timer.result()

    async def _loop_sleep_until(self, until_ns: int) -> None:
        await sleep_until(until_ns, self._clock)
