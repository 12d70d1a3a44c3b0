"""One adapter per execution form (asyncbench.engines.base.ExecutionForm), chosen once per pipeline.

Each adapter turns a batch into an awaitable top-1 array and records the stage times; the
pipeline awaits it the same way whatever the engine:

- ``ThreadExecution`` (BLOCKING): a worker thread gathers the samples out of the arena into a
  reused buffer and runs ``infer``, so no bulk memory work blocks the loop.
- ``LoopExecution`` (LOOP): the loop gathers (when the engine reads pixels) and awaits ``infer_async``.
- ``DeviceExecution`` (DEVICE): the engine takes the QSL indices and copies the samples from its
  own (pinned) arena by DMA, so the host never gathers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from asyncbench.contract import SAMPLE_DTYPE, SAMPLE_SHAPE
from asyncbench.data.qsl import SampleArena
from asyncbench.engines.base import DeviceEngine, Engine, ExecutionForm, FillingEngine, LoopBound, LoopEngine


@dataclass
class StageTimes:
    """Seconds each stage spent working (not waiting), for the run summary."""

    gather: float = 0.0
    execute: float = 0.0
    complete: float = 0.0
    batches: int = 0
    samples: int = 0


class Execution(Protocol):
    """Runs one batch of QSL indices through the engine."""

    times: StageTimes
    slots: int  # batches it takes at once: the engine's declared slots

    async def start(self) -> None:
        """On the loop that will run the batches, before the first (an engine's per-loop resources)."""
        ...

    async def run(self, indices: Sequence[int]) -> np.ndarray:
        """Top-1 of these samples; cancellation (a timeout) leaves no buffer in use by a later batch."""
        ...

    def close(self) -> None:
        """Stop taking batches (worker threads are not waited for: a stalled engine must not hang the run)."""
        ...


@runtime_checkable
class InlineExecution(Protocol):
    """An execution that can also run a batch on the calling thread (the pipeline's inline path)."""

    def run_now(self, indices: Sequence[int], timeout_s: float | None) -> np.ndarray:
        """Top-1 of these samples, computed and waited for on the calling thread."""
        ...


class _Buffers:
    """Reusable batch buffers, one per slot: already paged-in memory (fresh multi-MB arrays cost page faults)."""

    def __init__(self, max_batch_size: int) -> None:
        self._max = max_batch_size
        self._free: list[np.ndarray] = []

    def take(self) -> np.ndarray:
        """A free buffer, or a new one (only after a timed-out batch kept its buffer)."""
        return self._free.pop() if self._free else np.empty((self._max, *SAMPLE_SHAPE), SAMPLE_DTYPE)

    def give(self, buffer: np.ndarray) -> None:
        self._free.append(buffer)


class _HostExecution:
    """What the two host-batch forms share: a buffer per slot, and a timed gather into it."""

    def __init__(self, engine: Engine, arena: SampleArena, max_batch_size: int) -> None:
        self.engine, self.arena = engine, arena
        self.times = StageTimes()
        self.slots = engine.capabilities.slots
        self._buffers = _Buffers(max_batch_size)

    def _gather(self, indices: Sequence[int], buffer: np.ndarray) -> np.ndarray:
        """The batch's samples in ``buffer`` (left as is for an engine that never reads pixels)."""
        t0 = time.perf_counter()
        data = self.arena.gather(indices, out=buffer) if self.engine.capabilities.reads_input \
            else buffer[: len(indices)]
        self.times.gather += time.perf_counter() - t0
        return data


class ThreadExecution(_HostExecution):
    """BLOCKING form: gather and ``infer`` on one of ``slots`` worker threads."""

    def __init__(self, engine: Engine, arena: SampleArena, max_batch_size: int) -> None:
        super().__init__(engine, arena, max_batch_size)
        self._pool = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="engine")

    async def start(self) -> None:
        """Nothing: the worker threads start with their first batch."""

    def _work(self, indices: Sequence[int], buffer: np.ndarray) -> np.ndarray:
        data = self._gather(indices, buffer)
        t1 = time.perf_counter()
        top1 = self.engine.infer(data)
        self.times.execute += time.perf_counter() - t1
        return top1

    async def run(self, indices: Sequence[int]) -> np.ndarray:
        buffer = self._buffers.take()
        future = asyncio.get_running_loop().run_in_executor(self._pool, self._work, indices, buffer)
        future.add_done_callback(lambda _: self._buffers.give(buffer))  # only once the thread let go of it
        return await asyncio.shield(future)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class LoopExecution(_HostExecution):
    """LOOP form: gather on the loop, then await ``infer_async``; an engine sending from memory of its
    own (``FillingEngine``) has the samples gathered straight into it."""

    engine: LoopEngine

    def __init__(self, engine: LoopEngine, arena: SampleArena, max_batch_size: int) -> None:
        super().__init__(engine, arena, max_batch_size)
        self._fill = engine.infer_fill if isinstance(engine, FillingEngine) else None

    async def start(self) -> None:
        if isinstance(self.engine, LoopBound):
            await self.engine.bind_loop()

    async def run(self, indices: Sequence[int]) -> np.ndarray:
        if self._fill is None:
            buffer = self._buffers.take()
            try:
                data = self._gather(indices, buffer)
                t1 = time.perf_counter()
                top1 = await self.engine.infer_async(data)
                self.times.execute += time.perf_counter() - t1
                return top1
            finally:
                self._buffers.give(buffer)
        gathering = 0.0

        def fill(out: np.ndarray) -> np.ndarray:
            nonlocal gathering
            t0 = time.perf_counter()
            data = self._gather(indices, out)
            gathering = time.perf_counter() - t0
            return data

        t1 = time.perf_counter()
        top1 = await self._fill(len(indices), fill)
        self.times.execute += time.perf_counter() - t1 - gathering
        return top1

    def close(self) -> None:
        pass


class DeviceExecution:
    """DEVICE form: the engine reads the samples from its own arena; ``run_now`` is the inline path's form."""

    def __init__(self, engine: DeviceEngine) -> None:
        self.engine = engine
        self.times = StageTimes()
        self.slots = engine.capabilities.slots

    async def start(self) -> None:
        """Nothing: a device engine's streams and threads are made with it."""

    async def run(self, indices: Sequence[int]) -> np.ndarray:
        t0 = time.perf_counter()
        top1 = await self.engine.infer_indices(indices)
        self.times.execute += time.perf_counter() - t0
        return top1

    def run_now(self, indices: Sequence[int], timeout_s: float | None) -> np.ndarray:
        """``run`` on the calling thread (LoadGen's issue thread), waiting by polling up to ``timeout_s``."""
        t0 = time.perf_counter()
        top1 = self.engine.infer_indices_now(indices, timeout_s)
        self.times.execute += time.perf_counter() - t0
        return top1

    def close(self) -> None:
        pass


def execution_for(engine: Engine, arena: SampleArena, max_batch_size: int) -> Execution:
    """The adapter for the form the engine declares; an engine lacking that form's method is refused here."""
    form = engine.capabilities.form
    if form is ExecutionForm.BLOCKING:
        return ThreadExecution(engine, arena, max_batch_size)
    if form is ExecutionForm.LOOP:
        if not isinstance(engine, LoopEngine):
            raise TypeError(f"{engine.name} declares the loop form but has no infer_async")
        return LoopExecution(engine, arena, max_batch_size)
    if not isinstance(engine, DeviceEngine):
        raise TypeError(f"{engine.name} declares the device form but has no infer_indices")
    return DeviceExecution(engine)
