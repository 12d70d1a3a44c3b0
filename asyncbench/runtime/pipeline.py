"""The streaming pipeline: batcher -> execute slots -> complete, joined by bounded channels.

The event-loop thread batches and completes. Each execute slot awaits one batch through the
engine's execution adapter (asyncbench.runtime.execution: worker thread, loop-native or
device-indexed, chosen once from the engine's declared form). Backpressure is the engine's
slots: at most ``capabilities.slots`` batches are in the engine at once; while they are busy
the one-slot batch channel is full and the batcher keeps merging new arrivals into bigger
batches.

Exactly once: every sample id that enters through submit() leaves through the completer exactly
once. A batch is completed by whichever comes first, its result or its failure (an engine
error, a stall past the timeout, an abort); the other path sees `batch.done` and does nothing.
After a failure or an abort the pipeline completes every pending and every later sample at once,
as failed, so LoadGen can finish its schedule and write its logs.

This is the loop driver; the inline driver (asyncbench.runtime.inline) runs latency-bound
scenarios on LoadGen's own thread instead. Both write one ``Ledger`` (counters, latency record,
stage times, the failure, the one exit every sample takes) and report to one ``Observer``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from asyncbench.errors import RunFailure
from asyncbench.runtime.batcher import Batch, Batcher, BatchPolicy
from asyncbench.runtime.channel import Channel, ChannelClosed, ChannelEmpty
from asyncbench.runtime.execution import Execution
from asyncbench.runtime.inbox import Inbox
from asyncbench.runtime.ledger import Ledger
from asyncbench.runtime.observer import BatchStamps

STOPPED = "pipeline stopped with samples in flight"


@dataclass
class _Work:
    batch: Batch
    data: np.ndarray | None = None
    done: bool = False
    slot: int = 0
    started: int = 0  # clock stamps for the timeline
    executed: int = 0
    in_flight: int = 0


class Pipeline:
    """The loop driver: runs LoadGen's samples through one engine; see the module docstring for the guarantees.

    ``loop``: the event loop LoadGen's issue thread hands its calls to (through an ``Inbox``); without
    it, samples enter only through ``submit`` on the loop thread (tests, and nothing waits on the inbox).
    """

    def __init__(self, execution: Execution, policy: BatchPolicy, ledger: Ledger, *,
                 timeout_s: float | None = None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._execution = execution
        self.ledger = ledger
        self._observer = ledger.observer
        self._clock = ledger.clock
        self._running = 0  # batches executing now
        self.inflight = execution.slots
        self.timeout_s = timeout_s
        self._inbox = None if loop is None else Inbox(
            loop, self.submit, ring_at=policy.max_batch_size, clock=ledger.clock, observer=ledger.observer)
        self._batches: Channel[Batch] = Channel(1)
        self._done: Channel[_Work] = Channel(self.inflight * 2)
        self.batcher = Batcher(policy, self._batches, clock=ledger.clock,
                               sleep_until=None if self._inbox is None else self._inbox.sleep_until,
                               engine_idle=self._engine_idle)
        self._executed = 0  # batches whose execution ended (result or failure)
        self._works: dict[int, _Work] = {}  # works holding samples not yet completed, by id()
        # LoadGen's issue thread: hand the call to the loop (one wake-up for many calls). The inbox's own put,
        # not a method around it: at Server rates this runs once per sample.
        self.issue: Callable[[list[int], list[int]], None] = self._no_loop if self._inbox is None else self._inbox.put

    @property
    def wakeups(self) -> int:
        """Times LoadGen's thread woke the loop (the inbox's rings)."""
        return 0 if self._inbox is None else self._inbox.rings

    # -- entry points -----------------------------------------------------------------------------------------------
    @staticmethod
    def _no_loop(ids: list[int], indices: list[int]) -> None:
        raise RuntimeError("a pipeline made without a loop takes samples through submit() on the loop thread")

    def submit(self, ids: list[int], indices: list[int], arrival_ns: int | None = None,
               last_arrival_ns: int | None = None) -> None:
        """Loop thread: accept issue calls (arrived between the two times); after a failure, complete them as failed."""
        self.ledger.issued += len(ids)
        if self.ledger.failure is not None:
            self.ledger.finish(ids, None)
            return
        self.batcher.submit(ids, indices, arrival_ns, last_arrival_ns)

    def histogram(self) -> dict[int, int]:
        """Batches run per batch size, by size."""
        return dict(sorted(self.batcher.histogram().items()))

    def abort(self, reason: RunFailure | str) -> None:
        """Stop doing work: complete everything pending as failed, and everything that arrives later."""
        self.ledger.fail(reason)
        ids, _ = self.batcher.drain()
        if ids:
            self.ledger.finish(ids, None)

    def close(self) -> None:
        """No more issues will come (LoadGen's test ended): flush and let the stages finish."""
        self.batcher.close()

    def statistics(self) -> dict[str, object]:
        """Queue state for the event log: samples waiting in the batcher, and each channel's counters.

        ``batches.max_buffered`` 1 with many ``waiting_senders`` means the engine's slots were the
        bottleneck; ``done.max_buffered`` near its capacity means completion was.
        """
        return {"pending_samples": self.batcher.pending_count, "batches": vars(self._batches.statistics()),
                "done": vars(self._done.statistics())}

    async def start(self) -> None:
        """Before the first sample: the execution's per-loop resources (a remote engine connects and warms)."""
        await self._execution.start()

    # -- stages -----------------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run every stage until close() (or abort) drains the pipeline."""
        workers = [asyncio.create_task(self._execute(i), name=f"execute-{i}") for i in range(self.inflight)]
        stages = [asyncio.create_task(self.batcher.run(), name="batcher"), *workers,
                  asyncio.create_task(self._completer(), name="complete")]
        try:
            await stages[0]
            await asyncio.gather(*workers)
            self._done.close()
            await stages[-1]
        finally:
            for task in stages:
                task.cancel()
            self._execution.close()
            self._complete_leftovers()

    def _complete_leftovers(self) -> None:
        """Whatever a crashed or cancelled stage still held is completed as failed: never left hanging."""
        for work in list(self._works.values()):
            self._fail(work, self.ledger.failure or RunFailure(STOPPED))
        while True:
            try:
                batch = self._batches.receive_nowait()
            except (ChannelEmpty, ChannelClosed):
                break
            self._fail(_Work(batch), self.ledger.failure or RunFailure(STOPPED))
        ids, _ = self.batcher.drain()  # a batch whose send was cancelled went back to pending
        if ids:
            self.abort(self.ledger.failure or RunFailure(STOPPED))
            self.ledger.finish(ids, None)

    async def _execute(self, slot: int) -> None:
        """One in-flight slot: awaits its batch through the engine's execution adapter."""
        async for batch in self._batches:
            work = _Work(batch, slot=slot)
            self._works[id(work)] = work
            if self.ledger.failure is not None:
                self._fail(work, self.ledger.failure)
                continue
            self._running += 1
            work.in_flight, work.started = self._running, self._clock()
            observer = self._observer
            token = observer.execute_start(batch.seq, len(batch.ids), slot) if observer.active else None
            try:
                work.data = await asyncio.wait_for(self._execution.run(batch.indices), self.timeout_s)
            except TimeoutError as e:
                self._fail(work, RunFailure.caused_by(
                    f"engine stalled: no result for a batch of {len(batch.ids)} within {self.timeout_s:g} s", e))
                continue
            except Exception as e:  # noqa: BLE001 - any engine error fails the run, with its traceback kept
                self._fail(work, RunFailure.caused_by(f"engine failed: {type(e).__name__}: {e}", e))
                continue
            finally:  # a failed batch's range and count end too
                self._running -= 1
                if observer.active:
                    observer.execute_end(token)
            work.executed = self._clock()
            self._executed_one()
            await self._done.send(work)

    async def _completer(self) -> None:
        async for work in self._done:
            if work.done:
                continue
            work.done = True
            self._works.pop(id(work), None)
            b = work.batch
            now = self.ledger.complete_batch(b.seq, b.ids, work.data, b.spans)
            if self._observer.active:
                self._observer.batch_done(BatchStamps(b.seq, len(b.ids), work.slot, b.oldest_arrival_ns, b.formed_ns,
                                                      work.started, work.executed, now, True, b.pending_after,
                                                      work.in_flight))

    def _engine_idle(self) -> bool:
        """Nothing executing and nothing waiting for a slot (BatchPolicy.idle_gap_ns)."""
        return self.batcher.dispatched == self._executed

    def _executed_one(self) -> None:
        self._executed += 1
        if self._executed == self.batcher.dispatched:
            self.batcher.engine_went_idle()

    # -- completion -------------------------------------------------------------------------------------------------
    def _fail(self, work: _Work, reason: RunFailure) -> None:
        if not work.done:
            work.done = True
            self._works.pop(id(work), None)
            self.ledger.finish(work.batch.ids, None)
        self.abort(reason)
