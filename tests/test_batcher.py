"""The dynamic batcher: the pure policy (table and properties) and the async driver on a fake clock.

Every async test runs on plain asyncio and on uvloop. Time moves only when a test advances the
fake clock; the driver's progress is checked after a fixed number of loop turns (settle), so no
result depends on how fast or how loaded the machine is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncbench.runtime.batcher import Batch, Batcher, BatchPolicy, Dispatch, Wait, decide
from asyncbench.runtime.channel import Channel, ChannelClosed, ChannelEmpty

R = TypeVar("R")
LOOP_FACTORIES = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
loops = pytest.mark.parametrize("loop_kind", list(LOOP_FACTORIES))
WATCHDOG_S = 60  # only a hung test ever gets near it
T0 = 1_000_000


def run(coro_fn: Callable[[], Awaitable[R]], loop_kind: str) -> R:
    """Run one test body on a fresh loop of the given kind; the watchdog turns a deadlock into a failure."""
    with asyncio.Runner(loop_factory=LOOP_FACTORIES[loop_kind]) as runner:
        return runner.run(asyncio.wait_for(coro_fn(), WATCHDOG_S))


async def settle(rounds: int = 30) -> None:
    """Let every ready task run until it blocks again (a fixed number of loop turns, not a duration)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeClock:
    """Nanoseconds that move only on advance(); sleep_until returns once advance() reaches its deadline."""

    def __init__(self, now: int = T0) -> None:
        self.now = now
        self.sleep_calls = 0
        self._sleepers: list[tuple[int, asyncio.Future[None]]] = []

    def __call__(self) -> int:
        return self.now

    async def sleep_until(self, until_ns: int) -> None:
        self.sleep_calls += 1
        if until_ns > self.now:
            fut = asyncio.get_running_loop().create_future()
            self._sleepers.append((until_ns, fut))
            await fut

    def advance(self, ns: int) -> None:
        self.now += ns
        due = [fut for until, fut in self._sleepers if until <= self.now]
        self._sleepers = [(until, fut) for until, fut in self._sleepers if until > self.now]
        for fut in due:
            if not fut.done():
                fut.set_result(None)


def make(policy: BatchPolicy, capacity: int = 1000) -> tuple[Batcher, Channel[Batch], FakeClock]:
    clock = FakeClock()
    out: Channel[Batch] = Channel(capacity)
    return Batcher(policy, out, clock=clock, sleep_until=clock.sleep_until), out, clock


def ready(out: Channel[Batch]) -> list[Batch]:
    """The batches dispatched so far and not yet received, without waiting."""
    batches = []
    while True:
        try:
            batches.append(out.receive_nowait())
        except (ChannelEmpty, ChannelClosed):
            return batches


def sizes(batches: list[Batch]) -> list[int]:
    return [len(b.ids) for b in batches]


# -- policy ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    ((0, 0), "max_batch_size must be >= 1"),
    ((4, -1), "max_queue_delay_ns must be >= 0"),
    ((4, 0, (0,)), r"must each lie in 1\.\.max_batch_size"),
    ((4, 0, (2, 5)), r"must each lie in 1\.\.max_batch_size \(4\)"),
    ((4, 0, (3, 2)), "sorted ascending, without repeats"),
    ((4, 0, (2, 2)), "sorted ascending, without repeats"),
])
def test_policy_validation(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchPolicy(*args)


def test_policy_accepts_a_list_of_preferred_sizes() -> None:
    assert BatchPolicy(8, 0, [2, 4]).preferred_batch_sizes == (2, 4)  # type: ignore[arg-type]


MAX8 = BatchPolicy(max_batch_size=8, max_queue_delay_ns=100)
PREF = BatchPolicy(max_batch_size=8, max_queue_delay_ns=100, preferred_batch_sizes=(2, 4))


@pytest.mark.parametrize(("pending", "oldest", "now", "policy", "more", "expected"), [
    (0, None, T0, MAX8, True, Wait(None)),  # nothing pending: wait for an arrival
    (0, None, T0, MAX8, False, Wait(None)),
    (8, T0, T0, MAX8, True, Dispatch(8)),  # a full batch goes at once
    (20, T0, T0, MAX8, True, Dispatch(8)),  # never more than max
    (3, T0, T0, MAX8, True, Wait(T0 + 100)),  # below max and before the deadline: hold
    (3, T0, T0 + 99, MAX8, True, Wait(T0 + 100)),  # the deadline follows the oldest, not the clock
    (3, T0, T0 + 100, MAX8, True, Dispatch(3)),  # the oldest has waited the delay
    (3, T0, T0 + 500, MAX8, True, Dispatch(3)),
    (3, T0, T0, MAX8, False, Dispatch(3)),  # nothing more can come: no point waiting
    (20, T0, T0, MAX8, False, Dispatch(8)),
    (1, T0, T0, BatchPolicy(8, 0), True, Dispatch(1)),  # zero delay: dispatch whatever is pending
    (5, T0, T0, PREF, True, Dispatch(4)),  # the largest formable preferred size goes at once
    (4, T0, T0, PREF, True, Dispatch(4)),
    (3, T0, T0, PREF, True, Dispatch(2)),
    (1, T0, T0, PREF, True, Wait(T0 + 100)),  # no preferred size formable: the delay rule applies
    (1, T0, T0 + 100, PREF, True, Dispatch(1)),
    (9, T0, T0, PREF, True, Dispatch(8)),  # max beats preferred
])
def test_decide_table(pending: int, oldest: int | None, now: int, policy: BatchPolicy, more: bool,
                      expected: Dispatch | Wait) -> None:
    assert decide(pending, oldest, now, policy, more_coming=more) == expected


@pytest.mark.parametrize(("pending", "oldest"), [(1, None), (-1, T0)])
def test_decide_rejects_inconsistent_inputs(pending: int, oldest: int | None) -> None:
    with pytest.raises(ValueError, match="decide\\(\\) needs"):
        decide(pending, oldest, T0, MAX8)


@st.composite
def policies(draw: st.DrawFn) -> BatchPolicy:
    max_batch = draw(st.integers(1, 64))
    preferred = draw(st.sets(st.integers(1, max_batch), max_size=4))
    return BatchPolicy(max_batch, draw(st.integers(0, 10_000)), tuple(sorted(preferred)))


decisions = dict(pending=st.integers(0, 200), oldest=st.integers(0, 10**12), elapsed=st.integers(0, 20_000),
                 policy=policies(), more=st.booleans())


@settings(max_examples=300, deadline=None)
@given(**decisions)
def test_decide_properties(pending: int, oldest: int, elapsed: int, policy: BatchPolicy, more: bool) -> None:
    now = oldest + elapsed
    decision = decide(pending, oldest if pending else None, now, policy, more_coming=more)
    if pending == 0:
        assert decision == Wait(None)
        return
    formable = any(size <= pending for size in policy.preferred_batch_sizes)
    due = now >= oldest + policy.max_queue_delay_ns
    should_dispatch = due or pending >= policy.max_batch_size or formable or not more
    assert isinstance(decision, Dispatch) == should_dispatch
    if isinstance(decision, Dispatch):
        assert 1 <= decision.size <= min(pending, policy.max_batch_size)
    else:
        assert decision.until_ns == oldest + policy.max_queue_delay_ns


# -- driver ----------------------------------------------------------------------------------------------------------

@loops
def test_held_below_max_until_the_oldest_reaches_the_deadline(loop_kind: str) -> None:
    async def body() -> None:
        batcher, out, clock = make(BatchPolicy(8, max_queue_delay_ns=100))
        task = asyncio.create_task(batcher.run())
        batcher.submit([10, 11], [0, 1])
        await settle()
        clock.advance(60)
        batcher.submit([12], [2])  # a later arrival does not push the deadline back
        await settle()
        clock.advance(39)
        await settle()
        assert ready(out) == [] and batcher.pending_count == 3
        clock.advance(1)
        await settle()
        assert ready(out) == [Batch([10, 11, 12], [0, 1, 2], oldest_arrival_ns=T0, seq=0)]
        assert batcher.pending_count == 0
        assert clock.sleep_calls == 1  # one sleeper for the deadline, kept across the arrival
        batcher.close()
        await task

    run(body, loop_kind)


@loops
def test_delay_counts_from_a_given_arrival_time(loop_kind: str) -> None:
    """Samples that waited before reaching the loop bring their real arrival time; the deadline follows it."""

    async def body() -> None:
        batcher, out, clock = make(BatchPolicy(8, max_queue_delay_ns=100))
        task = asyncio.create_task(batcher.run())
        clock.advance(70)
        batcher.submit([1], [1], arrival_ns=T0)
        await settle()
        assert ready(out) == []
        clock.advance(30)
        await settle()
        assert ready(out) == [Batch([1], [1], oldest_arrival_ns=T0, seq=0)]
        batcher.close()
        await task

    run(body, loop_kind)


@loops
def test_reaching_max_dispatches_without_the_clock_moving(loop_kind: str) -> None:
    async def body() -> None:
        batcher, out, _ = make(BatchPolicy(4, max_queue_delay_ns=10**12))
        task = asyncio.create_task(batcher.run())
        for i in range(3):
            batcher.submit([i], [i])
        await settle()
        assert ready(out) == []
        batcher.submit([3, 4, 5, 6, 7, 8], [3, 4, 5, 6, 7, 8])
        await settle()
        assert [b.ids for b in ready(out)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
        assert batcher.pending_count == 1
        batcher.close()
        await task

    run(body, loop_kind)


@loops
def test_preferred_size_dispatches_at_once_and_the_rest_waits(loop_kind: str) -> None:
    async def body() -> None:
        batcher, out, clock = make(BatchPolicy(8, max_queue_delay_ns=100, preferred_batch_sizes=(4,)))
        task = asyncio.create_task(batcher.run())
        batcher.submit(list(range(5)), list(range(5)))
        await settle()
        assert [b.ids for b in ready(out)] == [[0, 1, 2, 3]]
        clock.advance(100)
        await settle()
        assert ready(out) == [Batch([4], [4], oldest_arrival_ns=T0, seq=1)]  # the split chunk keeps its arrival
        batcher.close()
        await task
        assert batcher.histogram() == {1: 1, 4: 1}

    run(body, loop_kind)


@loops
def test_zero_delay_dispatches_each_submit(loop_kind: str) -> None:
    async def body() -> None:
        batcher, out, _ = make(BatchPolicy(8, max_queue_delay_ns=0))
        task = asyncio.create_task(batcher.run())
        for i in range(3):
            batcher.submit([i], [i])
            await settle()
        assert [b.ids for b in ready(out)] == [[0], [1], [2]]
        batcher.close()
        await task

    run(body, loop_kind)


@loops
def test_default_clock_and_loop_timers(loop_kind: str) -> None:
    """Without injection the deadline is served by the loop's own timers (1 ms here; no timing is asserted)."""

    async def body() -> None:
        out: Channel[Batch] = Channel(4)
        batcher = Batcher(BatchPolicy(8, max_queue_delay_ns=1_000_000), out)
        task = asyncio.create_task(batcher.run())
        batcher.submit([1, 2], [5, 6])
        batch = await asyncio.wait_for(out.receive(), timeout=60)
        assert (batch.ids, batch.indices) == ([1, 2], [5, 6])
        batcher.close()
        await task

    run(body, loop_kind)


@loops
@settings(max_examples=30, deadline=None)
@given(policy=policies(),
       events=st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 70)), max_size=25))
def test_fifo_exactly_once_and_policy_respected(loop_kind: str, policy: BatchPolicy,
                                                events: list[tuple[int, int]]) -> None:
    """Random arrivals: every id comes out once and in order, each batch was allowed when it was cut, and the
    driver never holds samples the policy says to dispatch."""

    async def body() -> None:
        batcher, out, clock = make(policy, capacity=10_000)
        task = asyncio.create_task(batcher.run())
        arrival: list[int] = []  # per sample id (ids are 0, 1, 2, ...)
        batches: list[Batch] = []
        for advance, n in events:
            clock.advance(advance)
            ids = list(range(len(arrival), len(arrival) + n))
            batcher.submit(ids, [i * 10 for i in ids])
            arrival += [clock.now] * n
            await settle()
            for batch in ready(out):  # all cut at this clock reading: the clock only moves here
                assert decide(len(batch.ids), batch.oldest_arrival_ns, clock.now, policy) == Dispatch(len(batch.ids))
                assert batch.oldest_arrival_ns == arrival[batch.ids[0]]
                batches.append(batch)
            pending = batcher.pending_count
            oldest = arrival[len(arrival) - pending] if pending else None
            assert isinstance(decide(pending, oldest, clock.now, policy), Wait)
        batcher.close()
        await task
        batches += ready(out)
        assert [i for b in batches for i in b.ids] == list(range(len(arrival)))
        assert all(b.indices == [i * 10 for i in b.ids] for b in batches)
        assert all(1 <= len(b.ids) <= policy.max_batch_size for b in batches)
        assert [b.seq for b in batches] == list(range(len(batches)))
        histogram = batcher.histogram()
        assert sum(size * count for size, count in histogram.items()) == len(arrival)
        assert sum(histogram.values()) == len(batches)

    run(body, loop_kind)


@loops
def test_full_channel_backpressures_run_while_submit_accepts(loop_kind: str) -> None:
    async def body() -> None:
        batcher, out, _ = make(BatchPolicy(2, max_queue_delay_ns=0), capacity=1)
        task = asyncio.create_task(batcher.run())
        batcher.submit([0, 1, 2, 3], [0, 1, 2, 3])
        await settle()
        stats = out.statistics()
        assert (stats.buffered, stats.waiting_senders) == (1, 1)  # run() is stuck sending the second batch
        for i in range(4, 9):
            batcher.submit([i], [i])
        await settle()
        assert batcher.pending_count == 5 and not task.done()
        batcher.close()
        received = [b.ids async for b in out]
        await task
        assert received == [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
        assert out.statistics().max_buffered == 1

    run(body, loop_kind)


@loops
def test_close_flushes_what_is_left_then_closes_out(loop_kind: str) -> None:
    async def body() -> None:
        batcher, out, _ = make(BatchPolicy(4, max_queue_delay_ns=10**12))
        task = asyncio.create_task(batcher.run())
        batcher.submit(list(range(7)), list(range(7)))
        batcher.submit([7, 8, 9], [7, 8, 9])
        batcher.submit([], [])  # an empty issue is nothing
        await settle()
        assert sizes(ready(out)) == [4, 4]
        batcher.close()
        await task
        assert [b.ids for b in ready(out)] == [[8, 9]]
        assert out.statistics().closed
        with pytest.raises(RuntimeError, match="after close"):
            batcher.submit([10], [10])

    run(body, loop_kind)


@loops
def test_close_before_anything_arrives(loop_kind: str) -> None:
    async def body() -> None:
        batcher, out, _ = make(BatchPolicy(4, max_queue_delay_ns=100))
        task = asyncio.create_task(batcher.run())
        await settle()
        batcher.close()
        await task
        assert ready(out) == [] and out.statistics().closed and batcher.histogram() == {}

    run(body, loop_kind)


@loops
def test_drain_returns_everything_pending_and_nothing_twice(loop_kind: str) -> None:
    async def body() -> None:
        batcher, out, _ = make(BatchPolicy(3, max_queue_delay_ns=100), capacity=1)
        task = asyncio.create_task(batcher.run())
        batcher.submit(list(range(5)), list(range(100, 105)))
        batcher.submit([5, 6], [105, 106])
        await settle()  # [0,1,2] buffered in out, run() stuck sending [3,4,5], [6] pending
        ids, indices = batcher.drain()
        assert (ids, indices) == ([6], [106])
        assert batcher.pending_count == 0 and batcher.drain() == ([], [])
        assert [b.ids for b in ready(out)] == [[0, 1, 2]]
        await settle()
        assert [b.ids for b in ready(out)] == [[3, 4, 5]]
        batcher.close()
        await task
        assert ready(out) == [] and batcher.histogram() == {3: 2}

    run(body, loop_kind)


@loops
def test_cancelled_send_puts_the_batch_back_for_drain(loop_kind: str) -> None:
    async def body() -> None:
        batcher, out, _ = make(BatchPolicy(2, max_queue_delay_ns=0), capacity=1)
        task = asyncio.create_task(batcher.run())
        batcher.submit([0, 1, 2], [0, 1, 2])
        batcher.submit([3], [3])
        await settle()  # [0,1] buffered, run() stuck sending [2,3]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [b.ids for b in ready(out)] == [[0, 1]]
        assert out.statistics().closed  # consumers are not left waiting on a dead batcher
        assert batcher.drain() == ([2, 3], [2, 3])
        assert batcher.histogram() == {2: 1}

    run(body, loop_kind)


@loops
def test_cancelled_send_mid_chunk_keeps_fifo(loop_kind: str) -> None:
    async def body() -> None:
        batcher, out, _ = make(BatchPolicy(2, max_queue_delay_ns=0), capacity=1)
        task = asyncio.create_task(batcher.run())
        batcher.submit(list(range(7)), list(range(7)))
        await settle()  # [0,1] buffered, run() stuck sending [2,3]; 4..6 pending inside the same chunk
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert batcher.pending_count == 5
        assert batcher.drain() == ([2, 3, 4, 5, 6], [2, 3, 4, 5, 6])

    run(body, loop_kind)


@loops
def test_failing_sleep_until_fails_run(loop_kind: str) -> None:
    async def body() -> None:
        async def broken(until_ns: int) -> None:
            raise OSError("timer broke")

        out: Channel[Batch] = Channel(4)
        batcher = Batcher(BatchPolicy(8, max_queue_delay_ns=100), out, clock=FakeClock(), sleep_until=broken)
        task = asyncio.create_task(batcher.run())
        batcher.submit([1], [1])
        with pytest.raises(OSError, match="timer broke"):
            await task
        assert out.statistics().closed

    run(body, loop_kind)


def test_submit_needs_matching_lengths() -> None:
    batcher, _, _ = make(BatchPolicy(4, 0))
    with pytest.raises(ValueError, match="one index per id"):
        batcher.submit([1, 2], [1])


# -- low load: an idle engine takes what is pending at once --------------------------------------------------------

def test_decide_sends_everything_to_an_idle_engine_only_when_the_policy_says_so() -> None:
    idle_policy = BatchPolicy(8, 1_000, idle_gap_ns=200)
    assert decide(3, T0, T0, idle_policy, engine_idle=True) == Dispatch(3)  # nothing sent yet
    assert decide(3, T0, T0, idle_policy, engine_idle=True, last_dispatch_ns=T0 - 200) == Dispatch(3)
    # Idle, but a batch left 50 ns ago: wait for the gap, not for the whole delay.
    assert decide(3, T0, T0, idle_policy, engine_idle=True, last_dispatch_ns=T0 - 50) == Wait(T0 + 150)
    assert decide(3, T0, T0, idle_policy, engine_idle=False) == Wait(T0 + 1_000)
    assert decide(3, T0, T0, BatchPolicy(8, 1_000), engine_idle=True) == Wait(T0 + 1_000)
    assert decide(20, T0, T0, idle_policy, engine_idle=True) == Dispatch(8)  # never above the cap
    # More than idle_max_pending (4) piled up within the gap: a high rate, so batching as usual.
    assert decide(5, T0, T0, idle_policy, engine_idle=True, last_dispatch_ns=T0 - 300) == Wait(T0 + 1_000)
    # One sample waits, but 17 arrived within the last queue delay: the rate is high, so it waits for company.
    assert decide(1, T0, T0, idle_policy, engine_idle=True, last_dispatch_ns=T0 - 300,
                  recent_arrivals=17) == Wait(T0 + 1_000)
    assert decide(1, T0, T0, idle_policy, engine_idle=True, last_dispatch_ns=T0 - 300,
                  recent_arrivals=16) == Dispatch(1)


@loops
def test_an_engine_going_idle_takes_the_pending_samples_before_the_deadline(loop_kind: str) -> None:
    async def body() -> None:
        clock = FakeClock()
        out: Channel[Batch] = Channel(1000)
        state = {"idle": False}
        batcher = Batcher(BatchPolicy(8, 1_000, idle_gap_ns=100), out, clock=clock,
                          sleep_until=clock.sleep_until, engine_idle=lambda: state["idle"])
        task = asyncio.create_task(batcher.run())
        batcher.submit([1, 2], [1, 2])
        await settle()
        assert ready(out) == [] and batcher.pending_count == 2  # the engine is busy: batching as before
        state["idle"] = True
        batcher.engine_went_idle()
        await settle()
        assert sizes(ready(out)) == [2] and clock.now == T0  # the clock never moved
        batcher.submit([3], [3])  # still idle, but a batch just left: it waits for the gap, not the delay
        await settle()
        assert ready(out) == []
        clock.advance(100)
        await settle()
        assert sizes(ready(out)) == [1]
        # A burst: more than idle_max_recent (16) samples within the queue delay, so batching as without the rule.
        batcher.submit(list(range(4, 20)), list(range(4, 20)))
        await settle()
        assert sizes(ready(out)) == [8, 8]  # full batches go at once anyway
        clock.advance(300)
        batcher.submit([99], [99])  # one sample, the engine idle, the gap passed: but 20 arrived within 1000 ns
        await settle()
        assert ready(out) == []
        clock.advance(500)
        await settle()
        assert ready(out) == []
        clock.advance(500)
        await settle()
        assert sizes(ready(out)) == [1]  # its deadline
        batcher.close()
        await task

    run(body, loop_kind)
