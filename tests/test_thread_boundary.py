"""The thread boundary between LoadGen's issue thread and the event loop.

What is tested, and why:
  - ``Inbox`` (asyncbench.runtime.inbox): LoadGen's thread queues issue calls and wakes ("rings") the loop
    only when it must act now: when the loop is idle, or, while the batcher sleeps towards a deadline,
    once a full batch has piled up. Many puts before the loop gets to run coalesce into one wake-up
    and one chunk stamped with its oldest and newest arrival; the deadline sleeper pulls everything
    before it returns and leaves nothing stranded when cancelled. A wrong rule here either loses
    samples or costs a loop wake-up per sample (the p99 problem the module docstring describes).
  - ``LoadGenCompleter`` (asyncbench.loadgen.sut): one QuerySamplesComplete per batch, every id
    completed once, with its top-1 (or no data when failed), although response objects and their
    int32 buffer are reused from batch to batch.
  - ``AbortGate`` and ``_Signals`` (asyncbench.loadgen.sut): after an abort, queries are completed as
    failed at once or held until LoadGen's flush (Server), exactly once; the first Ctrl-C / SIGTERM
    aborts, the same signal delivered twice is one request, a second request exits at once.

Threads are real where the code is called from another thread; they are synchronised with
threading.Event gates and joins with timeouts, never sleeps. Loop tests run on asyncio and uvloop.
``mlperf_loadgen.QuerySamplesComplete`` is replaced by a recorder, so no LoadGen test runs.
"""

from __future__ import annotations

import asyncio
import ctypes
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import uvloop

from asyncbench.loadgen import sut
from asyncbench.loadgen.sut import INTERRUPTED, SAME_SIGNAL_S, AbortGate, LoadGenCompleter, _Signals
from asyncbench.runtime.inbox import Inbox

TIMEOUT_S = 2.0  # only a broken test waits this long: every wait below ends on an event


# ---------------------------------------------------------------------------------------------- helpers


@pytest.fixture(params=["asyncio", "uvloop"])
def runner(request: pytest.FixtureRequest) -> Iterator[asyncio.Runner]:
    """A fresh event loop of each kind: stdlib asyncio and uvloop."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as r:
        yield r


class Sink:
    """Records what Inbox hands the batcher; ``arrived`` is set once ``expect`` samples have come through."""

    def __init__(self, expect: int | None = None) -> None:
        self.calls: list[tuple[list[int], list[int], int, int]] = []
        self.threads: list[str] = []
        self.expect = expect
        self.arrived: asyncio.Event | None = None  # made inside the loop by the test that waits on it

    def __call__(self, ids: list[int], indices: list[int], first: int, last: int) -> None:
        self.calls.append((list(ids), list(indices), first, last))
        self.threads.append(threading.current_thread().name)
        if self.arrived is not None and (self.expect is None or self.samples() >= self.expect):
            self.arrived.set()

    def samples(self) -> int:
        """Samples handed over so far."""
        return sum(len(ids) for ids, _, _, _ in self.calls)

    def ids(self) -> list[int]:
        """Every id handed over, in order."""
        return [i for ids, _, _, _ in self.calls for i in ids]


class RecordingLoop:
    """Stands in for the loop in pure-logic tests: records what Inbox schedules instead of running it."""

    def __init__(self) -> None:
        self.threadsafe: list[Callable[[], None]] = []
        self.soon: list[Callable[[], None]] = []

    def call_soon_threadsafe(self, callback: Callable[[], None], *args: Any) -> None:
        self.threadsafe.append(callback)

    def call_soon(self, callback: Callable[[], None], *args: Any) -> None:
        self.soon.append(callback)


class ManualClock:
    """A nanosecond clock that moves only when a test sets ``now``."""

    def __init__(self, now: int = 1_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def fake_loop_inbox(sink: Callable[[list[int], list[int], int, int], None], ring_at: int,
                    clock: Callable[[], int]) -> tuple[Inbox, RecordingLoop]:
    """An Inbox on a RecordingLoop."""
    loop = RecordingLoop()
    return Inbox(cast(asyncio.AbstractEventLoop, loop), sink, ring_at=ring_at, clock=clock), loop


def in_thread(target: Callable[[], None], name: str = "loadgen-issue") -> None:
    """Run ``target`` on a real second thread and wait for it; a hang fails the test instead of blocking it.

    Called on the loop thread, this also blocks the loop, so nothing the thread schedules can run
    before the caller looks at the result.
    """
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            target()
        except BaseException as e:  # noqa: BLE001 - re-raised on the test's thread
            errors.append(e)

    thread = threading.Thread(target=guarded, name=name)
    thread.start()
    thread.join(TIMEOUT_S)
    assert not thread.is_alive(), "the issuing thread hung"
    if errors:
        raise errors[0]


async def settle(rounds: int = 10) -> None:
    """A fixed number of loop turns (not a duration), so anything already scheduled gets to run."""
    for _ in range(rounds):
        await asyncio.sleep(0)


@dataclass(frozen=True)
class Completion:
    """One QuerySampleResponse as LoadGen saw it during its QuerySamplesComplete call."""

    id: int
    data: int
    size: int
    top1: int | None  # the int32 at ``data`` while the call lasted; None for a response without data


class LoadGenRecorder:
    """Stands in for ``mlperf_loadgen.QuerySamplesComplete``: snapshots each response, as LoadGen copies it."""

    def __init__(self) -> None:
        self.calls: list[list[Completion]] = []
        self.threads: list[str] = []

    def __call__(self, responses: Sequence[Any]) -> None:
        self.calls.append([Completion(r.id, r.data, r.size, ctypes.c_int32.from_address(r.data).value
                                      if r.size else None) for r in responses])
        self.threads.append(threading.current_thread().name)

    def completions(self) -> list[Completion]:
        """Every response of every call, in order."""
        return [c for call in self.calls for c in call]

    def id_counts(self) -> Counter[int]:
        """How many times each sample id was completed."""
        return Counter(c.id for c in self.completions())


@pytest.fixture
def loadgen(monkeypatch: pytest.MonkeyPatch) -> LoadGenRecorder:
    """QuerySamplesComplete replaced, on the module object sut.py looks it up on (``lg``), by a recorder."""
    recorder = LoadGenRecorder()
    monkeypatch.setattr(sut.lg, "QuerySamplesComplete", recorder)
    return recorder


class FailedLedger:
    """A Completer for AbortGate: records each call's ids and whether it carried results."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[int], bool]] = []

    def __call__(self, ids: Sequence[int], top1: np.ndarray | None) -> None:
        self.calls.append((list(ids), top1 is not None))

    def ids(self) -> list[int]:
        """Every id completed, in order."""
        return [i for ids, _ in self.calls for i in ids]


# ---------------------------------------------------------------------------------------------- Inbox: rules


def test_first_put_rings_once_and_later_puts_coalesce_into_one_chunk() -> None:
    sink = Sink()
    arrivals = iter([10, 20, 30, 40])
    inbox, loop = fake_loop_inbox(sink, ring_at=64, clock=lambda: next(arrivals))

    inbox.put([1], [101])
    inbox.put([2, 3], [102, 103])
    inbox.put([4], [104])
    assert inbox.rings == 1
    assert loop.threadsafe == [inbox.pull] and loop.soon == []
    assert sink.calls == []  # nothing reaches the batcher before the loop pulls

    loop.threadsafe.pop()()
    assert sink.calls == [([1, 2, 3, 4], [101, 102, 103, 104], 10, 30)]  # oldest and newest arrival

    inbox.put([5], [105])  # the pull re-armed the doorbell
    assert inbox.rings == 2 and loop.threadsafe == [inbox.pull]


def test_pull_of_one_call_hands_its_lists_over_with_one_arrival() -> None:
    received: list[tuple[list[int], list[int], int, int]] = []
    ids, indices = [7, 8, 9], [0, 1, 2]
    inbox, loop = fake_loop_inbox(lambda *args: received.append(args), ring_at=64, clock=ManualClock(555))
    inbox.put(ids, indices)
    loop.threadsafe.pop()()
    assert len(received) == 1
    got_ids, got_indices, first, last = received[0]
    assert got_ids is ids and got_indices is indices  # no copy for the common one-call chunk
    assert first == last == 555


def test_pull_with_nothing_queued_hands_nothing_over() -> None:
    sink = Sink()
    inbox, loop = fake_loop_inbox(sink, ring_at=4, clock=ManualClock())
    inbox.pull()
    inbox.put([1], [1])
    loop.threadsafe.pop()()
    inbox.pull()  # a second pull finds the queue empty
    assert len(sink.calls) == 1 and sink.ids() == [1]


def test_merged_chunk_is_stamped_with_its_oldest_arrival_across_issuing_threads() -> None:
    """Two issuing threads: the call that read the older stamp is queued first (the stamp is read under the lock)."""
    sink = Sink()
    early_read, release = threading.Event(), threading.Event()

    def clock() -> int:
        if threading.current_thread().name == "early":
            early_read.set()  # this call has its arrival time; it queues only once released
            assert release.wait(TIMEOUT_S)
            return 100
        return 200

    inbox, loop = fake_loop_inbox(sink, ring_at=64, clock=clock)
    early = threading.Thread(target=inbox.put, args=([1], [1]), name="early")
    early.start()
    assert early_read.wait(TIMEOUT_S)  # the early call has its stamp: the late one must queue behind it
    late = threading.Thread(target=inbox.put, args=([2], [2]), name="late")
    late.start()
    release.set()
    for thread in (early, late):
        thread.join(TIMEOUT_S)
        assert not thread.is_alive()
    loop.threadsafe.pop()()
    (_, _, first, last), = sink.calls
    assert (first, last) == (100, 200)


# ---------------------------------------------------------------------------------------------- Inbox: real loops


def test_put_from_another_thread_wakes_an_idle_loop(runner: asyncio.Runner) -> None:
    async def body() -> None:
        sink = Sink(expect=2)
        sink.arrived = asyncio.Event()
        inbox = Inbox(asyncio.get_running_loop(), sink, ring_at=64)
        go = threading.Event()

        def issue() -> None:
            assert go.wait(TIMEOUT_S)
            inbox.put([1, 2], [11, 12])

        thread = threading.Thread(target=issue, name="loadgen-issue")
        thread.start()
        go.set()  # the loop now blocks in its selector with no timer due: only the doorbell can wake it
        await asyncio.wait_for(sink.arrived.wait(), TIMEOUT_S)
        thread.join(TIMEOUT_S)
        assert sink.ids() == [1, 2] and inbox.rings == 1
        assert sink.threads == [threading.current_thread().name]  # the sink runs on the loop's thread

    runner.run(body())


def test_burst_from_another_thread_is_one_wakeup_and_one_chunk(runner: asyncio.Runner) -> None:
    async def body() -> None:
        sink = Sink(expect=500)
        sink.arrived = asyncio.Event()
        inbox = Inbox(asyncio.get_running_loop(), sink, ring_at=8)  # far fewer than the burst
        in_thread(lambda: [inbox.put([i], [i + 1000]) for i in range(500)])  # the loop is blocked meanwhile
        assert inbox.rings == 1 and sink.calls == []
        await asyncio.wait_for(sink.arrived.wait(), TIMEOUT_S)
        assert len(sink.calls) == 1
        ids, indices, first, last = sink.calls[0]
        assert ids == list(range(500)) and indices == list(range(1000, 1500)) and first <= last

    runner.run(body())


def test_deadline_sleeper_keeps_the_inbox_quiet_then_pulls_before_it_returns(runner: asyncio.Runner) -> None:
    async def body() -> None:
        sink = Sink()
        clock = ManualClock()
        inbox = Inbox(asyncio.get_running_loop(), sink, ring_at=4, clock=clock)
        until = clock.now + 1_000_000  # the sleeper waits on 1 ms timers until the test moves the clock

        async def batcher() -> list[tuple[list[int], list[int], int, int]]:
            """What the batcher sees the moment its deadline sleep returns, before it decides."""
            await inbox.sleep_until(until)
            return list(sink.calls)

        sleeper = asyncio.create_task(batcher())
        await asyncio.sleep(0)  # the sleeper goes quiet and waits

        in_thread(lambda: [inbox.put([i], [i + 10]) for i in range(3)])  # below ring_at: no wake-up
        assert inbox.rings == 0
        await settle()
        assert sink.calls == [] and not sleeper.done()

        clock.now = until
        seen_on_return = await asyncio.wait_for(sleeper, TIMEOUT_S)
        assert seen_on_return == [([0, 1, 2], [10, 11, 12], 1_000, 1_000)]  # pulled before sleep_until returned
        assert inbox.rings == 0

        sink.arrived = asyncio.Event()
        in_thread(lambda: inbox.put([3], [13]))  # no longer quiet: an idle loop is woken at once
        assert inbox.rings == 1
        await asyncio.wait_for(sink.arrived.wait(), TIMEOUT_S)
        assert sink.ids() == [0, 1, 2, 3]

    runner.run(body())


def test_full_batch_rings_even_while_the_sleeper_is_quiet(runner: asyncio.Runner) -> None:
    async def body() -> None:
        sink = Sink(expect=5)
        sink.arrived = asyncio.Event()
        clock = ManualClock()
        inbox = Inbox(asyncio.get_running_loop(), sink, ring_at=4, clock=clock)
        until = clock.now + 1_000_000
        sleeper = asyncio.create_task(inbox.sleep_until(until))
        await asyncio.sleep(0)

        rings_after_each: list[int] = []

        def issue() -> None:
            for i in range(5):
                inbox.put([i], [i])
                rings_after_each.append(inbox.rings)

        in_thread(issue)
        # samples add up across calls; the 4th rings, the 5th joins the pull already on its way
        assert rings_after_each == [0, 0, 0, 1, 1]
        await asyncio.wait_for(sink.arrived.wait(), TIMEOUT_S)
        assert sink.ids() == [0, 1, 2, 3, 4] and len(sink.calls) == 1
        assert not sleeper.done()  # the loop was woken while the batcher still slept

        in_thread(lambda: inbox.put([5], [5]))  # the pull reset the count: quiet again
        assert inbox.rings == 1
        clock.now = until
        await asyncio.wait_for(sleeper, TIMEOUT_S)
        assert sink.calls[1][0] == [5] and len(sink.calls) == 2

    runner.run(body())


def test_cancelled_sleeper_leaves_nothing_stranded(runner: asyncio.Runner) -> None:
    async def body() -> None:
        sink = Sink(expect=2)
        sink.arrived = asyncio.Event()
        inbox = Inbox(asyncio.get_running_loop(), sink, ring_at=64, clock=ManualClock())
        sleeper = asyncio.create_task(inbox.sleep_until(10**18))
        await asyncio.sleep(0)
        in_thread(lambda: inbox.put([1, 2], [1, 2]))
        assert inbox.rings == 0
        sleeper.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sleeper
        # leaving quiet with samples queued schedules a pull from the loop itself: no cross-thread wake-up
        await asyncio.wait_for(sink.arrived.wait(), TIMEOUT_S)
        assert sink.ids() == [1, 2] and inbox.rings == 0

    runner.run(body())


def test_stream_from_another_thread_arrives_once_in_order_one_chunk_per_wakeup(runner: asyncio.Runner) -> None:
    async def body() -> None:
        n = 3000
        sink = Sink(expect=n)
        sink.arrived = asyncio.Event()
        inbox = Inbox(asyncio.get_running_loop(), sink, ring_at=8)

        def issue() -> None:
            for i in range(n):
                inbox.put([i], [n + i])

        thread = threading.Thread(target=issue, name="loadgen-issue")
        thread.start()  # the loop runs and pulls while the thread issues
        await asyncio.wait_for(sink.arrived.wait(), TIMEOUT_S)
        thread.join(TIMEOUT_S)
        await settle()
        assert sink.ids() == list(range(n))
        assert [i for _, indices, _, _ in sink.calls for i in indices] == list(range(n, 2 * n))
        assert len(sink.calls) == inbox.rings  # each wake-up pulled one non-empty chunk, no more
        stamps = [t for _, _, first, last in sink.calls for t in (first, last)]
        assert stamps == sorted(stamps)  # one issuing thread: chunks are stamped in arrival order

    runner.run(body())


# ---------------------------------------------------------------------------------------------- LoadGenCompleter


def test_completer_completes_a_batch_in_one_call_with_each_top1(loadgen: LoadGenRecorder) -> None:
    complete = LoadGenCompleter()
    complete([40, 41, 42], np.array([7, 0, 999], np.int32))
    assert len(loadgen.calls) == 1
    assert [(c.id, c.size, c.top1) for c in loadgen.calls[0]] == [(40, 4, 7), (41, 4, 0), (42, 4, 999)]


def test_completer_completes_a_failed_batch_without_data(loadgen: LoadGenRecorder) -> None:
    complete = LoadGenCompleter()
    complete([5, 6], None)
    assert [(c.id, c.data, c.size) for c in loadgen.calls[0]] == [(5, 0, 0), (6, 0, 0)]


def test_completer_reuses_responses_yet_completes_every_id_once(loadgen: LoadGenRecorder) -> None:
    complete = LoadGenCompleter()
    rng = np.random.default_rng(0)
    batches: list[tuple[list[int], np.ndarray | None]] = []
    next_id = 0
    for n, ok in [(3, True), (100, True), (2, True), (70, False), (300, True), (1, False), (5, False), (1, True)]:
        ids = list(range(next_id, next_id + n))  # sizes cross the pool's growth (64, 128, 300) both ways
        next_id += n
        batches.append((ids, rng.integers(0, 1001, n).astype(np.int32) if ok else None))
    for ids, top1 in batches:
        complete(ids, top1)

    assert len(loadgen.calls) == len(batches)  # one QuerySamplesComplete per batch
    for call, (ids, top1) in zip(loadgen.calls, batches, strict=True):
        assert [c.id for c in call] == ids  # no stale responses from a larger earlier batch
        if top1 is None:
            assert all(c.size == 0 and c.data == 0 for c in call)
        else:
            assert [c.top1 for c in call] == top1.tolist() and all(c.size == 4 for c in call)
            assert len({c.data for c in call}) == len(call)  # each response has its own slot
    counts = loadgen.id_counts()
    assert set(counts) == set(range(next_id)) and set(counts.values()) == {1}


def test_two_completers_never_share_response_buffers(loadgen: LoadGenRecorder) -> None:
    """drive() gives the pipeline (loop thread) and the abort gate (LoadGen's thread) a completer each."""
    pipeline_side, gate_side = LoadGenCompleter(), LoadGenCompleter()
    pipeline_side([1, 2], np.array([5, 6], np.int32))
    gate_side([3, 4], np.array([7, 8], np.int32))
    first, second = loadgen.calls
    assert {c.data for c in first}.isdisjoint({c.data for c in second})
    # the first completer's slots still hold its own results after the second one ran
    assert [ctypes.c_int32.from_address(c.data).value for c in first] == [5, 6]


# ---------------------------------------------------------------------------------------------- AbortGate


def test_gate_without_hold_completes_each_query_as_failed_at_once() -> None:
    ledger = FailedLedger()
    gate = AbortGate(ledger, hold=False)
    gate.take([1, 2])
    assert ledger.calls == [([1, 2], False)] and gate.completed == 2
    gate.take([3])
    assert ledger.calls[-1] == ([3], False) and gate.completed == 3
    gate.flush()  # nothing held: flush completes nothing
    gate.flush()
    assert ledger.ids() == [1, 2, 3] and gate.completed == 3


def test_gate_with_hold_holds_queries_until_flush_then_fails_them_once() -> None:
    ledger = FailedLedger()
    gate = AbortGate(ledger, hold=True)
    gate.take([1])
    gate.take([2, 3])
    assert ledger.calls == [] and gate.completed == 0  # held uncompleted, so LoadGen's Server gives up

    gate.flush()
    assert ledger.calls == [([1, 2, 3], False)] and gate.completed == 3

    gate.take([4])  # after flush nothing more is held
    assert ledger.calls[-1] == ([4], False) and gate.completed == 4
    gate.flush()  # idempotent: nothing completed twice
    assert ledger.ids() == [1, 2, 3, 4] and gate.completed == 4


def test_gate_flushed_before_any_query_completes_later_ones_at_once() -> None:
    ledger = FailedLedger()
    gate = AbortGate(ledger, hold=True)
    gate.flush()
    assert ledger.calls == []
    gate.take([9])
    assert ledger.calls == [([9], False)] and gate.completed == 1


def test_gate_on_loadgen_thread_fails_every_id_exactly_once(loadgen: LoadGenRecorder) -> None:
    gate = AbortGate(LoadGenCompleter(), hold=True)
    queries = [[i] for i in range(50)] + [list(range(50, 80))]

    def issue_then_flush() -> None:  # LoadGen's thread, no event loop anywhere
        for ids in queries:
            gate.take(ids)
        gate.flush()
        gate.take([80, 81])

    in_thread(issue_then_flush)
    counts = loadgen.id_counts()
    assert set(counts) == set(range(82)) and set(counts.values()) == {1}
    assert all(c.size == 0 and c.top1 is None for c in loadgen.completions())
    assert len(loadgen.calls) == 2 and set(loadgen.threads) == {"loadgen-issue"}
    assert gate.completed == 82


# ---------------------------------------------------------------------------------------------- signals


class Exited(Exception):
    """What the patched os._exit raises, so the test sees the exit instead of the process ending."""


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """os._exit recorded instead of run (a regression must fail the test, not kill pytest)."""
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        raise Exited(code)

    monkeypatch.setattr(sut.os, "_exit", fake_exit)
    return codes


def signals_off_main_thread(on_abort: Callable[[str], None]) -> _Signals:
    """A _Signals built on another thread (none installed), so a test calls its handler by hand."""
    made: list[_Signals] = []
    in_thread(lambda: made.append(_Signals(cast(asyncio.AbstractEventLoop, None), on_abort)))
    assert made[0].installed == []
    return made[0]


def test_first_signal_aborts_and_the_same_signal_repeated_at_once_is_ignored(
        monkeypatch: pytest.MonkeyPatch, exits: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    now = [100.0]
    monkeypatch.setattr(sut, "time", SimpleNamespace(monotonic=lambda: now[0]))
    aborts: list[str] = []
    signals = signals_off_main_thread(aborts.append)
    signals._handle(signal.SIGTERM)
    now[0] += SAME_SIGNAL_S / 2  # GNU timeout delivers its SIGTERM twice, microseconds apart
    signals._handle(signal.SIGTERM)
    assert aborts == [f"{INTERRUPTED} SIGTERM"] and signals.count == 1 and exits == []
    assert "SIGTERM: stopping" in capsys.readouterr().err


@pytest.mark.parametrize(("second", "after_s"), [(signal.SIGINT, SAME_SIGNAL_S * 2), (signal.SIGTERM, 0.0)])
def test_a_second_request_exits_at_once(monkeypatch: pytest.MonkeyPatch, exits: list[int], second: int,
                                        after_s: float) -> None:
    now = [100.0]
    monkeypatch.setattr(sut, "time", SimpleNamespace(monotonic=lambda: now[0]))
    aborts: list[str] = []
    signals = signals_off_main_thread(aborts.append)
    signals._handle(signal.SIGINT)
    now[0] += after_s  # the same signal later than SAME_SIGNAL_S, or another signal at once
    with pytest.raises(Exited):
        signals._handle(second)
    assert exits == [130] and aborts == [f"{INTERRUPTED} SIGINT"]  # on_abort ran once, for the first only


def test_real_signals_reach_the_abort_through_the_loop(runner: asyncio.Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    codes: list[int] = []
    monkeypatch.setattr(sut.os, "_exit", codes.append)  # recorded, never run

    async def body() -> None:
        aborted = asyncio.Event()
        aborts: list[str] = []

        def on_abort(reason: str) -> None:
            aborts.append(reason)
            aborted.set()

        signals = _Signals(asyncio.get_running_loop(), on_abort)
        try:
            assert signals.installed == [signal.SIGINT, signal.SIGTERM]  # pytest runs tests on the main thread
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)  # one request delivered twice
            await asyncio.wait_for(aborted.wait(), TIMEOUT_S)
            await settle()
        finally:
            signals.remove()
        assert aborts == [f"{INTERRUPTED} SIGTERM"] and codes == []

    runner.run(body())
