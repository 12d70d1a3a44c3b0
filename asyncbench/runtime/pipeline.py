"""The streaming pipeline: batcher -> (gather + execute) slots -> complete, joined by bounded channels.

The event-loop thread batches and completes. For a blocking engine (CPU compute) each execute
slot hands its batch to an engine thread that gathers the samples out of the arena and runs the
engine, so no bulk memory work blocks the loop; an engine with an async form (the null engine's
modelled device) is awaited on the loop itself, and a GPU engine takes the batch's QSL indices
and copies the samples from the (pinned) arena by DMA itself, so the host never gathers.
Backpressure is the number of slots: at most `inflight` batches are in the engine at once;
while they are busy the one-slot batch channel is full and the batcher keeps merging new
arrivals into bigger batches.

Exactly once: every sample id that enters through submit() leaves through the completer exactly
once. A batch is completed by whichever comes first, its result or its failure (an engine
error, a stall past the timeout, an abort); the other path sees `batch.done` and does nothing.
After a failure or an abort the pipeline completes every pending and every later sample at once,
as failed, so LoadGen can finish its schedule and write its logs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from asyncbench.data.qsl import SampleArena
from asyncbench.engines.base import Engine
from asyncbench.runtime.batcher import Batch, Batcher, BatchPolicy
from asyncbench.runtime.channel import Channel

# complete(ids, top1): top1 is an int32 array aligned with ids, or None when the samples failed.
Completer = Callable[[Sequence[int], "np.ndarray | None"], None]


@dataclass
class StageTimes:
    """Seconds each stage spent working (not waiting), for the run summary."""

    gather: float = 0.0
    execute: float = 0.0
    complete: float = 0.0
    batches: int = 0
    samples: int = 0


@dataclass
class _Work:
    batch: Batch
    data: np.ndarray | None = None
    done: bool = False


class Pipeline:
    """Runs LoadGen's samples through one engine; see the module docstring for the guarantees."""

    def __init__(self, engine: Engine, arena: SampleArena, policy: BatchPolicy, complete: Completer, *,
                 inflight: int = 2, timeout_s: float | None = None,
                 sleep_until: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.engine = engine
        self.arena = arena
        self._complete_cb = complete
        self.inflight = max(1, inflight)
        self.timeout_s = timeout_s
        self._batches: Channel[Batch] = Channel(1)
        self._done: Channel[_Work] = Channel(self.inflight * 2)
        self.batcher = Batcher(policy, self._batches, sleep_until=sleep_until)
        # Engines with an async form run on the loop; blocking ones (CPU compute) get worker threads.
        self._by_index = hasattr(engine, "infer_indices")
        self._on_loop = self._by_index or hasattr(engine, "infer_async")
        self._pool = ThreadPoolExecutor(max_workers=self.inflight, thread_name_prefix="engine")
        self.times = StageTimes()
        self.failure: str | None = None
        self.issued = 0
        self.completed = 0
        self.failed_samples = 0
        self._works: dict[int, _Work] = {}  # works holding samples not yet completed, by id()

    # -- entry points (loop thread) ---------------------------------------------------------------------------------
    def submit(self, ids: list[int], indices: list[int], arrival_ns: int | None = None) -> None:
        """Accept one LoadGen issue call; after a failure, complete it at once as failed."""
        self.issued += len(ids)
        if self.failure is not None:
            self._finish(ids, None)
            return
        self.batcher.submit(ids, indices, arrival_ns)

    def abort(self, reason: str) -> None:
        """Stop doing work: complete everything pending as failed, and everything that arrives later."""
        if self.failure is None:
            self.failure = reason
        ids, _ = self.batcher.drain()
        if ids:
            self._finish(ids, None)

    def close(self) -> None:
        """No more issues will come (LoadGen's test ended): flush and let the stages finish."""
        self.batcher.close()

    # -- stages -----------------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run every stage until close() (or abort) drains the pipeline."""
        workers = [asyncio.create_task(self._execute(), name=f"execute-{i}") for i in range(self.inflight)]
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
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._complete_leftovers()

    def _complete_leftovers(self) -> None:
        """Whatever a crashed or cancelled stage still held is completed as failed: never left hanging."""
        for work in list(self._works.values()):
            self._fail(work, self.failure or "pipeline stopped with samples in flight")
        while True:
            try:
                batch = self._batches.receive_nowait()
            except Exception:  # ChannelEmpty or ChannelClosed: nothing left
                break
            self._fail(_Work(batch), self.failure or "pipeline stopped with samples in flight")
        ids, _ = self.batcher.drain()  # a batch whose send was cancelled went back to pending
        if ids:
            self.abort(self.failure or "pipeline stopped with samples in flight")
            self._finish(ids, None)

    def _input(self, batch: Batch, buffer: np.ndarray) -> np.ndarray:
        """The batch's samples in this slot's buffer (left as is for engines that never read pixels)."""
        if self.engine.reads_input:
            return self.arena.gather(batch.indices, out=buffer)
        return buffer[: len(batch.indices)]

    def _gather_infer(self, work: _Work, buffer: np.ndarray) -> np.ndarray:
        """Worker thread: copy the batch into this slot's buffer, then run the engine (the loop stays free)."""
        t0 = time.perf_counter()
        data = self._input(work.batch, buffer)
        t1 = time.perf_counter()
        top1 = self.engine.infer(data)
        self.times.gather += t1 - t0
        self.times.execute += time.perf_counter() - t1
        return top1

    async def _execute(self) -> None:
        """One in-flight slot: it owns a reusable input buffer (LWIS-style), so slots bound memory and work."""
        loop = asyncio.get_running_loop()
        buffer = None if self._by_index else np.empty(
            (self.batcher.policy.max_batch_size, *self.engine.sample_shape), self.engine.sample_dtype)
        async for batch in self._batches:
            work = _Work(batch)
            self._works[id(work)] = work
            if self.failure is not None:
                self._fail(work, self.failure)
                continue
            t0 = t1 = time.perf_counter()
            if self._by_index:
                pending = self.engine.infer_indices(self.arena, batch.indices)
            elif self._on_loop:
                data = self._input(batch, buffer)
                t1 = time.perf_counter()
                self.times.gather += t1 - t0
                pending = self.engine.infer_async(data)
            else:
                pending = asyncio.shield(loop.run_in_executor(self._pool, self._gather_infer, work, buffer))
            try:
                work.data = await asyncio.wait_for(pending, self.timeout_s)
                if self._on_loop:
                    self.times.execute += time.perf_counter() - t1
            except TimeoutError:
                self._fail(work, f"engine stalled: no result for a batch of {len(batch.ids)} "
                                 f"within {self.timeout_s:g} s")
                continue
            except Exception as e:
                self._fail(work, f"engine failed: {type(e).__name__}: {e}")
                continue
            await self._done.send(work)

    async def _completer(self) -> None:
        async for work in self._done:
            if work.done:
                continue
            t0 = time.perf_counter()
            work.done = True
            self._works.pop(id(work), None)
            self._finish(work.batch.ids, work.data)
            self.times.batches += 1
            self.times.samples += len(work.batch.ids)
            self.times.complete += time.perf_counter() - t0

    # -- completion -------------------------------------------------------------------------------------------------
    def _fail(self, work: _Work, reason: str) -> None:
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
