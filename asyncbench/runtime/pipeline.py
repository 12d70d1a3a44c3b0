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

Inline (latency-bound scenarios on a device engine): LoadGen has one query outstanding at a time,
so ``run_inline`` runs it on LoadGen's issue thread and completes it there. The loop, the batcher
and the completion thread stay out of its way; the same counters, latency record, timeline and
exactly-once rule apply.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from asyncbench.errors import RunFailure
from asyncbench.runtime.batcher import Batch, Batcher, BatchPolicy
from asyncbench.runtime.channel import Channel, ChannelClosed, ChannelEmpty
from asyncbench.runtime.execution import Execution, InlineExecution
from asyncbench.runtime.latency import LatencyHistogram
from asyncbench.runtime.nvtx_ranges import NvtxRanges
from asyncbench.runtime.timeline import BatchStamps, Timeline

# complete(ids, top1): top1 is an int32 array aligned with ids, or None when the samples failed.
Completer = Callable[[Sequence[int], "np.ndarray | None"], None]
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
    """Runs LoadGen's samples through one engine; see the module docstring for the guarantees."""

    def __init__(self, execution: Execution, policy: BatchPolicy, complete: Completer, *,
                 timeout_s: float | None = None, sleep_until: Callable[[int], Awaitable[None]] | None = None,
                 clock: Callable[[], int] = time.monotonic_ns, timeline: Timeline | None = None,
                 nvtx: NvtxRanges | None = None, inline: bool = False) -> None:
        if inline and not isinstance(execution, InlineExecution):
            raise TypeError("the inline path needs an execution with run_now (a device engine)")
        self._execution = execution
        self._inline_sizes: dict[int, int] = {}
        self._inline_seq = 0
        self._clock = clock  # the clock arrivals are stamped with (the inbox's)
        self.latency = LatencyHistogram()
        self.timeline = timeline
        self._nvtx = nvtx
        self._running = 0  # batches executing now
        self._complete_cb = complete
        self.inflight = execution.slots
        self.timeout_s = timeout_s
        self._batches: Channel[Batch] = Channel(1)
        self._done: Channel[_Work] = Channel(self.inflight * 2)
        self.batcher = Batcher(policy, self._batches, sleep_until=sleep_until, engine_idle=self._engine_idle)
        self._executed = 0  # batches whose execution ended (result or failure)
        self.times = execution.times
        self.failure: RunFailure | None = None
        self.issued = 0
        self.completed = 0
        self.failed_samples = 0
        self._works: dict[int, _Work] = {}  # works holding samples not yet completed, by id()

    # -- entry points (loop thread) ---------------------------------------------------------------------------------
    def submit(self, ids: list[int], indices: list[int], arrival_ns: int | None = None,
               last_arrival_ns: int | None = None) -> None:
        """Accept LoadGen issue calls (arrived between the two times); after a failure, complete them as failed."""
        self.issued += len(ids)
        if self.failure is not None:
            self._finish(ids, None)
            return
        self.batcher.submit(ids, indices, arrival_ns, last_arrival_ns)

    def run_inline(self, ids: list[int], indices: list[int]) -> None:
        """LoadGen's issue thread: run this query now, split at the max batch size, and complete it from here."""
        execution = self._execution
        assert isinstance(execution, InlineExecution)
        arrival = self._clock()
        self.issued += len(ids)
        size = self.batcher.policy.max_batch_size
        for start in range(0, len(ids), size):
            chunk = ids[start:start + size]
            if self.failure is not None:  # a failed chunk (or an abort) completes the rest as failed
                self._finish(ids[start:], None)
                return
            seq, self._inline_seq = self._inline_seq, self._inline_seq + 1
            nvtx_range = None
            if self._nvtx is not None:
                self._nvtx.mark(f"batch {seq} ({len(chunk)}) inline")
                nvtx_range = self._nvtx.start(f"execute batch {seq} ({len(chunk)})")
            started = self._clock()
            try:
                top1 = execution.run_now(indices[start:start + size], self.timeout_s)
            except Exception as e:  # noqa: BLE001 - any engine error fails the run, with its traceback kept
                if self.failure is None:
                    self.failure = RunFailure.caused_by(f"engine failed: {type(e).__name__}: {e}", e)
                self._finish(ids[start:], None)
                return
            finally:
                if self._nvtx is not None:
                    self._nvtx.end(nvtx_range)
            executed = self._clock()
            now = self._complete_batch(seq, chunk, top1, [(arrival, arrival, len(chunk))])
            self._inline_sizes[len(chunk)] = self._inline_sizes.get(len(chunk), 0) + 1
            if self.timeline is not None:
                self.timeline.add(BatchStamps(seq, len(chunk), 0, arrival, started, started, executed, now, True,
                                              0, 1))

    def histogram(self) -> dict[int, int]:
        """Batches run per batch size, by size (the batcher's and the inline path's)."""
        merged = dict(self.batcher.histogram())
        for size, count in self._inline_sizes.items():
            merged[size] = merged.get(size, 0) + count
        return dict(sorted(merged.items()))

    def abort(self, reason: RunFailure | str) -> None:
        """Stop doing work: complete everything pending as failed, and everything that arrives later."""
        if self.failure is None:
            self.failure = reason if isinstance(reason, RunFailure) else RunFailure(reason)
        ids, _ = self.batcher.drain()
        if ids:
            self._finish(ids, None)

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
            self._fail(work, self.failure or RunFailure(STOPPED))
        while True:
            try:
                batch = self._batches.receive_nowait()
            except (ChannelEmpty, ChannelClosed):
                break
            self._fail(_Work(batch), self.failure or RunFailure(STOPPED))
        ids, _ = self.batcher.drain()  # a batch whose send was cancelled went back to pending
        if ids:
            self.abort(self.failure or RunFailure(STOPPED))
            self._finish(ids, None)

    async def _execute(self, slot: int) -> None:
        """One in-flight slot: awaits its batch through the engine's execution adapter."""
        async for batch in self._batches:
            work = _Work(batch, slot=slot)
            self._works[id(work)] = work
            if self.failure is not None:
                self._fail(work, self.failure)
                continue
            self._running += 1
            work.in_flight, work.started = self._running, self._clock()
            nvtx_range = None
            if self._nvtx is not None:
                self._nvtx.mark(f"batch {batch.seq} ({len(batch.ids)}) to slot {slot}")
                nvtx_range = self._nvtx.start(f"execute batch {batch.seq} ({len(batch.ids)})")
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
                if self._nvtx is not None:
                    self._nvtx.end(nvtx_range)
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
            now = self._complete_batch(b.seq, b.ids, work.data, b.spans)
            if self.timeline is not None:
                self.timeline.add(BatchStamps(b.seq, len(b.ids), work.slot, b.oldest_arrival_ns, b.formed_ns,
                                              work.started, work.executed, now, True, b.pending_after,
                                              work.in_flight))

    def _complete_batch(self, seq: int, ids: Sequence[int], top1: np.ndarray | None,
                        spans: Sequence[tuple[int, int, int]]) -> int:
        """One executed batch to LoadGen, recorded (latency, stage time, NVTX); returns the clock after it.

        The loop's completer and the inline path both end a batch here.
        """
        t0 = time.perf_counter()
        nvtx_range = None if self._nvtx is None else self._nvtx.start(f"complete batch {seq}")
        self._finish(ids, top1)
        if self._nvtx is not None:
            self._nvtx.end(nvtx_range)
        now = self._clock()
        self.latency.add(now, spans)
        self.times.batches += 1
        self.times.samples += len(ids)
        self.times.complete += time.perf_counter() - t0
        return now

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
            self._finish(work.batch.ids, None)
        self.abort(reason)

    def _finish(self, ids: Sequence[int], top1: np.ndarray | None) -> None:
        self.completed += len(ids)
        if top1 is None:
            self.failed_samples += len(ids)
        self._complete_cb(ids, top1)
