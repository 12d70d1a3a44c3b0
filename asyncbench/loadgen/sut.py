"""LoadGen's side of a run: the SUT and QSL callbacks, the completer, signals and the abort gate.

Threads: the event loop owns the pipeline. LoadGen's StartTest runs on its own thread; its issue
callback only hands each call's (ids, indices) lists to the loop with one call_soon_threadsafe,
and never raises (an exception escaping a LoadGen callback aborts the process). Every sample id
LoadGen issues is completed exactly once, whatever fails.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import mlperf_loadgen as lg
import numpy as np

from asyncbench.data.qsl import SampleArena
from asyncbench.errors import RunFailure
from asyncbench.runtime.batcher import BatchPolicy
from asyncbench.runtime.execution import Execution
from asyncbench.runtime.ledger import Completer, Driver, Ledger
from asyncbench.runtime.pipeline import Pipeline


@dataclass(frozen=True)
class QueryCycle:
    """Seconds per SingleStream / MultiStream query through the whole pipeline, as a pilot measured them."""

    fast_s: float  # the quickest query: what LoadGen's generated queries must cover
    median_s: float  # the typical query: what the run's length is estimated from


class LoadGenCompleter:
    """One QuerySamplesComplete per batch, from response objects reused across batches.

    Building a QuerySampleResponse per sample was the event loop's largest cost at Server rates
    (a profile at 80k QPS). Here response k always points at slot k of one int32 buffer: a batch
    copies its top-1 into the buffer and only sets each response's id (about 0.3 us per sample
    against 0.9 us to construct one). QuerySamplesComplete copies what it needs before it
    returns, and completions run one at a time on the loop thread, so one pool serves every batch.
    """

    def __init__(self) -> None:
        self._ok: list[lg.QuerySampleResponse] = []
        self._buffer = np.zeros(0, np.int32)
        self._failed: list[lg.QuerySampleResponse] = []

    def _grow(self, n: int) -> None:
        size = max(n, 2 * len(self._ok), 64)
        self._buffer = np.zeros(size, np.int32)
        base = self._buffer.ctypes.data
        self._ok = list(map(lg.QuerySampleResponse, repeat(0, size), range(base, base + 4 * size, 4),
                            repeat(4, size)))

    def __call__(self, ids: Sequence[int], top1: np.ndarray | None) -> None:
        """Complete ``ids`` with their top-1 classes, or as failed (no data) when ``top1`` is None."""
        n = len(ids)
        if top1 is None:
            if len(self._failed) < n:
                self._failed.extend(lg.QuerySampleResponse(0, 0, 0) for _ in range(n - len(self._failed)))
            responses = self._failed[:n]
        else:
            if len(self._ok) < n:
                self._grow(n)
            self._buffer[:n] = top1
            responses = self._ok[:n]
        for response, sample_id in zip(responses, ids, strict=True):
            response.id = sample_id
        lg.QuerySamplesComplete(responses)


INTERRUPTED = "interrupted by"  # how a run aborted by a signal names its failure


SAME_SIGNAL_S = 0.05  # a repeat of the first signal this soon is the same request, delivered twice


class _Signals:
    """First Ctrl-C / SIGTERM aborts the run cleanly; a second one exits at once.

    GNU ``timeout`` (and a shell killing a process group) delivers one SIGTERM to the process
    twice, microseconds apart: a repeat of the same signal within ``SAME_SIGNAL_S`` is not a
    second request, or ``timeout -k 5 N`` would leave no summary and no result.json.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, on_abort: Callable[[str], None]) -> None:
        self.loop, self.on_abort, self.count = loop, on_abort, 0
        self._first: tuple[int, float] | None = None
        self.installed: list[int] = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._handle, sig)
                self.installed.append(sig)

    def _handle(self, sig: int) -> None:
        now = time.monotonic()
        if self._first is not None and self._first[0] == sig and now - self._first[1] < SAME_SIGNAL_S:
            return
        self._first = self._first or (sig, now)
        self.count += 1
        name = signal.Signals(sig).name
        if self.count > 1:
            print(f"error: {name} again: exiting now without waiting for LoadGen", file=sys.stderr, flush=True)
            os._exit(130)
        print(f"\n{name}: stopping: every outstanding sample is completed as failed and LoadGen is made to end "
              f"early, then its logs are written (press Ctrl-C again to exit at once)", file=sys.stderr, flush=True)
        self.on_abort(f"{INTERRUPTED} {name}")

    def remove(self) -> None:
        for sig in self.installed:
            self.loop.remove_signal_handler(sig)


@dataclass(frozen=True)
class SampleCounts:
    """Samples of one test: issued by LoadGen, completed (each exactly once), and of those completed as failed."""

    issued: int
    completed: int
    failed: int


class AbortGate:
    """What LoadGen's issue thread does once the run is aborted (a failure or Ctrl-C): stop it quickly.

    LoadGen has no call that ends a test. SingleStream, MultiStream and Offline end once LoadGen runs
    out of queries, so each later query is completed as failed right here on LoadGen's thread without
    a trip through the event loop: that drain is what a stop costs (LoadGen's own floor is about 2 us
    per SingleStream and 5 us per MultiStream query on a 2-core machine), which is why a quick run's
    generated queries are bounded (plan.ABORT_QUERIES). Server issues on a fixed schedule; it stops
    early only when more than ``server_max_async_queries`` are outstanding, so with ``hold`` the later
    queries are held uncompleted until LoadGen gives up and calls flush, and then completed as failed.
    issue and flush both run on LoadGen's thread, so nothing here needs a lock.
    """

    def __init__(self, complete: Completer, hold: bool) -> None:
        self._complete = complete
        self._hold = hold
        self._held: list[int] = []
        self._flushed = False
        self.completed = 0

    def take(self, ids: list[int]) -> None:
        """A query issued after the abort: hold it (Server) or complete it as failed now."""
        if self._hold and not self._flushed:
            self._held.extend(ids)
            return
        self.completed += len(ids)
        self._complete(ids, None)

    def flush(self) -> None:
        """LoadGen stopped issuing: complete everything held."""
        self._flushed = True
        held, self._held = self._held, []
        self.completed += len(held)
        if held:
            self._complete(held, None)


PILOT_GAVE_UP = "the pilot was stopped"  # no engine fault: interrupted, or its samples never came back
PILOT_QUERIES = 300  # at most this many queries ...
PILOT_SECONDS = 0.5  # ... or this long, whichever ends first,
PILOT_MIN_QUERIES = 5  # but never fewer than this


async def _end_pilot(pool: ThreadPoolExecutor, pipeline: Pipeline, run_task: asyncio.Future[Any],
                     arena: SampleArena, indices: Sequence[int], measured: bool) -> None:
    """Tear a pilot down: its issuing thread, its pipeline (aborted unless it measured something), the arena."""
    pool.shutdown(wait=True)
    if not measured:
        pipeline.abort(PILOT_GAVE_UP)
    pipeline.close()
    await run_task
    arena.unload(indices)


class _PilotCompleter:
    """Counts one pilot query's samples down and wakes the issuing thread when they are all complete."""

    def __init__(self) -> None:
        self.pending = 0
        self.done = threading.Event()

    def __call__(self, ids: Sequence[int], top1: np.ndarray | None) -> None:
        self.pending -= len(ids)
        if self.pending <= 0:
            self.done.set()


async def measure_cycle(execution: Execution, arena: SampleArena, policy: BatchPolicy, samples: int, *,
                        timeout_s: float | None) -> QueryCycle | None:
    """Seconds per query of ``samples`` through the pipeline, issued one at a time from another thread as
    LoadGen issues SingleStream and MultiStream queries (the quickest and the median); None if it was
    stopped. An engine failure raises RunFailure.

    The engine's warm-up alone misses the harness's thread hops: for the null engine a query costs
    about 0.1 ms end to end against 1 us in the engine, and LoadGen generates 2 x duration / expected
    latency queries, all of which it issues before it ends, even after Ctrl-C. A handful of warm-up
    calls is also a noisy estimate of a real engine (65 ms against a real p50 of 27 ms was seen).
    """
    loop = asyncio.get_running_loop()
    completer = _PilotCompleter()
    pipeline = Pipeline(execution, policy, Ledger(completer, execution.times), timeout_s=timeout_s, loop=loop)
    indices = [i % arena.total for i in range(samples)]
    arena.load(indices)
    wait_s = timeout_s if timeout_s is not None else 60.0
    stop = threading.Event()

    def issue_one_at_a_time() -> list[float]:
        cycles: list[float] = []
        deadline = time.perf_counter() + PILOT_SECONDS
        while len(cycles) < PILOT_QUERIES and (len(cycles) < PILOT_MIN_QUERIES or time.perf_counter() < deadline):
            completer.pending = samples
            completer.done.clear()
            start = time.perf_counter()
            pipeline.issue(list(range(samples)), indices)
            if not completer.done.wait(wait_s) or stop.is_set() or pipeline.ledger.failure is not None:
                return []
            cycles.append(time.perf_counter() - start)
        return cycles

    await pipeline.start()
    run_task = asyncio.create_task(pipeline.run(), name="pilot")
    pool = ThreadPoolExecutor(1, thread_name_prefix="pilot")
    cycles: list[float] = []
    try:
        cycles = await loop.run_in_executor(pool, issue_one_at_a_time)
    finally:
        stop.set()
        completer.done.set()
        await _end_pilot(pool, pipeline, run_task, arena, indices, bool(cycles))
    _raise_engine_failure(pipeline)
    if not cycles:
        return None
    # The quickest query, not a median: on a shared 2-core machine the cycle moved between 45 and 130 us
    # from one minute to the next, and LoadGen must generate enough queries for the run's fastest stretch.
    return QueryCycle(min(cycles), statistics.median(cycles))


THROUGHPUT_SECONDS = 0.4  # how long the throughput pilot keeps the pipeline busy


class _WindowCompleter:
    """Counts outstanding pilot samples down, waking the issuing thread as room opens in its window."""

    def __init__(self) -> None:
        self.outstanding = 0
        self.completed = 0
        self.room = threading.Condition()

    def __call__(self, ids: Sequence[int], top1: np.ndarray | None) -> None:
        with self.room:
            self.outstanding -= len(ids)
            self.completed += len(ids)
            self.room.notify()


async def measure_throughput(execution: Execution, arena: SampleArena, policy: BatchPolicy, *, server: bool,
                             timeout_s: float | None) -> float | None:
    """Samples per second the whole pipeline sustains under ``policy``; None if it was stopped.

    Server: one sample per issue call from another thread, as LoadGen issues them, with a window of
    samples outstanding (enough to fill every slot's batches twice over), so the batcher forms the
    batches its policy allows. Offline: everything arrives in one call, as LoadGen's single query
    does. The engine's batched peak alone overstated what runs: the null engine's warm-up says
    billions of samples/s where the harness moves about 2.5 M (Offline) and 150 k (Server) on 2 cores,
    and a CPU engine limited to batch 1 by the p99 target sustains less than half its batched peak.
    """
    loop = asyncio.get_running_loop()
    completer = _WindowCompleter()
    pipeline = Pipeline(execution, policy, Ledger(completer, execution.times), timeout_s=timeout_s, loop=loop)
    indices = list(range(arena.total))
    arena.load(indices)
    wait_s = timeout_s if timeout_s is not None else 60.0
    window = 2 * policy.max_batch_size * execution.slots
    stop = threading.Event()

    def server_load() -> float:
        start = time.perf_counter()
        deadline = start + THROUGHPUT_SECONDS
        issued = 0
        while time.perf_counter() < deadline and not stop.is_set() and pipeline.ledger.failure is None:
            with completer.room:
                if completer.outstanding >= window and not completer.room.wait_for(
                        lambda: completer.outstanding < window or stop.is_set(), wait_s):
                    return 0.0
                completer.outstanding += 1
            pipeline.issue([issued], [issued % arena.total])
            issued += 1
        with completer.room:  # what is in flight finishes: only completed samples count
            completer.room.wait_for(lambda: completer.outstanding <= 0 or stop.is_set(), wait_s)
            return completer.completed / (time.perf_counter() - start)

    def offline_load() -> float:
        # Doubling rounds until one lasts THROUGHPUT_SECONDS; the best round counts.
        n, best = window, 0.0
        while not stop.is_set() and pipeline.ledger.failure is None:
            with completer.room:
                completer.outstanding += n
            start = time.perf_counter()
            pipeline.issue(list(range(n)), [i % arena.total for i in range(n)])
            with completer.room:
                if not completer.room.wait_for(lambda: completer.outstanding <= 0 or stop.is_set(), wait_s):
                    return 0.0
            took = time.perf_counter() - start
            best = max(best, n / took)
            if took >= THROUGHPUT_SECONDS:
                return best
            n *= 2
        return 0.0

    await pipeline.start()
    run_task = asyncio.create_task(pipeline.run(), name="pilot")
    pool = ThreadPoolExecutor(1, thread_name_prefix="pilot")
    rate = 0.0
    try:
        rate = await loop.run_in_executor(pool, server_load if server else offline_load)
    finally:
        stop.set()
        with completer.room:
            completer.room.notify_all()
        await _end_pilot(pool, pipeline, run_task, arena, indices, bool(rate))
    _raise_engine_failure(pipeline)
    return rate or None


def _raise_engine_failure(pipeline: Pipeline) -> None:
    """A pilot's engine failure or stall fails the run before LoadGen starts, as a warm-up failure does."""
    failure = pipeline.ledger.failure
    if failure is not None and not str(failure).startswith(PILOT_GAVE_UP):
        raise RunFailure.caused_by(f"pilot before LoadGen: {failure}", failure.__cause__)


@dataclass(frozen=True)
class LoadGenTest:
    """One LoadGen test: its settings, where it logs, the samples it loads, and the audit file it reads."""

    settings: lg.TestSettings
    log_settings: lg.LogSettings
    performance_count: int
    audit_config: Path  # passed explicitly, so LoadGen never reads ./audit.config


async def drive(driver: Driver, arena: SampleArena, test: LoadGenTest, *, gate_complete: Completer | None = None,
                around_test: AbstractContextManager[object] | None = None) -> SampleCounts:
    """Run LoadGen's test against ``driver`` on the running loop; returns the test's counts.

    The driver's ledger holds what the run came to, and its observer watches beside the test and
    gets the closing facts. ``gate_complete``: how samples issued after an abort are completed
    (default: a LoadGenCompleter of the gate's own, since it runs on LoadGen's thread).
    """
    loop = asyncio.get_running_loop()
    ledger, settings = driver.ledger, test.settings
    observer = ledger.observer
    hold = settings.scenario == lg.TestScenario.Server and settings.server_max_async_queries > 0 \
        and settings.mode != lg.TestMode.AccuracyOnly
    gate = AbortGate(gate_complete or LoadGenCompleter(), hold)
    callback_errors: list[RunFailure] = []
    driver_issue, observing = driver.issue, observer.active

    def issue(ids: list[int], indices: list[int]) -> None:
        try:
            if observing:
                observer.issued(len(ids))
            if ledger.failure is not None:
                gate.take(ids)
            else:
                driver_issue(ids, indices)
        except BaseException as e:  # noqa: BLE001 - an exception escaping a LoadGen callback kills the process
            callback_errors.append(RunFailure.caused_by(f"issue: {e!r}", e))

    def flush() -> None:
        try:
            gate.flush()
        except BaseException as e:  # noqa: BLE001 - see issue()
            callback_errors.append(RunFailure.caused_by(f"flush: {e!r}", e))

    def load(indices: list[int]) -> None:
        try:
            arena.load(indices)
        except BaseException as e:  # noqa: BLE001 - see issue(); the run fails instead, every sample completed
            failure = RunFailure.caused_by(f"loading samples failed: {e}", e)
            callback_errors.append(failure)
            loop.call_soon_threadsafe(driver.abort, failure)

    def unload(indices: list[int]) -> None:
        try:
            arena.unload(indices)
        except BaseException as e:  # noqa: BLE001
            callback_errors.append(RunFailure.caused_by(f"unload_samples: {e!r}", e))

    sut = lg.ConstructFastSUT(issue, flush)
    qsl = lg.ConstructQSL(arena.total, test.performance_count, load, unload)
    signals = _Signals(loop, driver.abort)
    await driver.start()  # before LoadGen's clock starts: its first queries pay for no connecting
    run_task = asyncio.create_task(driver.run(), name="pipeline")
    watcher = asyncio.create_task(observer.watch(ledger, settings.min_duration_ms / 1000), name="observer")
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="loadgen") as pool, around_test or nullcontext():
            await loop.run_in_executor(pool, lg.StartTestWithLogSettings, sut, qsl, settings, test.log_settings,
                                       str(test.audit_config))
        driver.close()
        await run_task
    finally:
        watcher.cancel()
        signals.remove()
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    if callback_errors and ledger.failure is None:
        ledger.fail(callback_errors[0] if len(callback_errors) == 1 else RunFailure.caused_by(
            "; ".join(map(str, callback_errors)), callback_errors[0].__cause__))
    # What the gate completed after an abort never reached the driver.
    counts = SampleCounts(ledger.issued + gate.completed, ledger.completed + gate.completed,
                          ledger.failed_samples + gate.completed)
    observer.finished(issued=counts.issued, completed=counts.completed, failed=counts.failed,
                      histogram=driver.histogram(), loop_wakeups=driver.wakeups, queues=driver.statistics(),
                      **(ledger.failure.details() if ledger.failure else {"failure": None}))
    return counts
