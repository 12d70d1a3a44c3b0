"""Channel: FIFO order, capacity backpressure, close semantics, cancellation safety, statistics.

Every async test runs on plain asyncio and on uvloop. Nothing waits on wall-clock time: a test
yields to the loop a fixed number of times (settle) and then checks what must, or must not, have run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncbench.runtime.channel import Channel, ChannelClosed, ChannelEmpty, ChannelFull, ChannelStats

R = TypeVar("R")
LOOP_FACTORIES = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
loops = pytest.mark.parametrize("loop_kind", list(LOOP_FACTORIES))
WATCHDOG_S = 60  # only a hung test ever gets near it


def run(coro_fn: Callable[[], Awaitable[R]], loop_kind: str) -> R:
    """Run one test body on a fresh loop of the given kind; the watchdog turns a deadlock into a failure."""
    with asyncio.Runner(loop_factory=LOOP_FACTORIES[loop_kind]) as runner:
        return runner.run(asyncio.wait_for(coro_fn(), WATCHDOG_S))


async def settle(rounds: int = 20) -> None:
    """Let every ready task run until it blocks again (a fixed number of loop turns, not a duration)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        Channel(0)


def test_nowait_fifo_full_empty() -> None:
    ch: Channel[int] = Channel(3)
    with pytest.raises(ChannelEmpty):
        ch.receive_nowait()
    for i in range(3):
        ch.send_nowait(i)
    with pytest.raises(ChannelFull):
        ch.send_nowait(3)
    assert [ch.receive_nowait() for _ in range(3)] == [0, 1, 2]


@loops
def test_send_waits_while_full(loop_kind: str) -> None:
    async def body() -> None:
        ch: Channel[int] = Channel(1)
        await ch.send(1)
        sender = asyncio.create_task(ch.send(2))
        await settle()
        assert not sender.done()
        assert ch.statistics().waiting_senders == 1
        assert await ch.receive() == 1
        await settle()
        assert sender.done()
        assert await ch.receive() == 2

    run(body, loop_kind)


@loops
def test_receive_waits_while_empty(loop_kind: str) -> None:
    async def body() -> None:
        ch: Channel[str] = Channel(2)
        receivers = [asyncio.create_task(ch.receive()) for _ in range(2)]
        await settle()
        assert not any(r.done() for r in receivers)
        assert ch.statistics().waiting_receivers == 2
        ch.send_nowait("a")
        ch.send_nowait("b")
        assert [await r for r in receivers] == ["a", "b"]

    run(body, loop_kind)


@loops
def test_async_iteration_until_closed_and_drained(loop_kind: str) -> None:
    async def body() -> None:
        ch: Channel[int] = Channel(2)

        async def produce() -> None:
            for i in range(10):
                await ch.send(i)
            ch.close()

        producer = asyncio.create_task(produce())
        assert [i async for i in ch] == list(range(10))
        await producer

    run(body, loop_kind)


@loops
def test_close_delivers_buffered_items_then_closed(loop_kind: str) -> None:
    async def body() -> None:
        ch: Channel[int] = Channel(4)
        ch.send_nowait(1)
        ch.send_nowait(2)
        ch.close()
        ch.close()  # idempotent
        assert await ch.receive() == 1
        assert ch.receive_nowait() == 2
        with pytest.raises(ChannelClosed):
            await ch.receive()
        with pytest.raises(ChannelClosed):
            ch.receive_nowait()

    run(body, loop_kind)


@loops
def test_send_after_close_raises_even_with_room(loop_kind: str) -> None:
    async def body() -> None:
        ch: Channel[int] = Channel(4)
        ch.close()
        with pytest.raises(ChannelClosed):
            await ch.send(1)
        with pytest.raises(ChannelClosed):
            ch.send_nowait(1)
        assert ch.statistics().total_sent == 0

    run(body, loop_kind)


@loops
def test_close_wakes_blocked_senders_and_receivers(loop_kind: str) -> None:
    async def body() -> None:
        full: Channel[int] = Channel(1)
        full.send_nowait(0)
        senders = [asyncio.create_task(full.send(i)) for i in (1, 2)]
        empty: Channel[int] = Channel(1)
        receivers = [asyncio.create_task(empty.receive()) for _ in range(2)]
        await settle()
        full.close()
        empty.close()
        for task in (*senders, *receivers):
            with pytest.raises(ChannelClosed):
                await task
        assert full.receive_nowait() == 0  # the item buffered before close is still delivered
        with pytest.raises(ChannelClosed):
            full.receive_nowait()

    run(body, loop_kind)


@loops
def test_sender_woken_then_closed_gets_closed(loop_kind: str) -> None:
    """Room appeared, but the channel closed before the woken sender ran: its item is not sent."""

    async def body() -> None:
        ch: Channel[int] = Channel(1)
        ch.send_nowait(0)
        sender = asyncio.create_task(ch.send(1))
        await settle()
        assert ch.receive_nowait() == 0  # wakes the sender...
        ch.close()  # ...which has not run yet
        with pytest.raises(ChannelClosed):
            await sender
        assert ch.statistics().total_sent == 1

    run(body, loop_kind)


@loops
def test_cancelled_waiting_receiver_takes_nothing(loop_kind: str) -> None:
    async def body() -> None:
        ch: Channel[int] = Channel(1)
        first = asyncio.create_task(ch.receive())
        second = asyncio.create_task(ch.receive())
        await settle()
        first.cancel()
        await settle()
        assert first.cancelled()
        assert ch.statistics().waiting_receivers == 1
        ch.send_nowait(7)
        assert await second == 7

    run(body, loop_kind)


@loops
def test_receiver_woken_then_cancelled_leaves_item_for_the_next(loop_kind: str) -> None:
    async def body() -> None:
        ch: Channel[int] = Channel(1)
        first = asyncio.create_task(ch.receive())
        second = asyncio.create_task(ch.receive())
        await settle()
        ch.send_nowait(7)  # wakes `first`...
        first.cancel()  # ...which is cancelled before it runs: the wake-up passes to `second`
        assert await second == 7
        assert first.cancelled()
        assert ch.statistics().buffered == 0

    run(body, loop_kind)


@loops
def test_cancelled_waiting_sender_sends_nothing(loop_kind: str) -> None:
    async def body() -> None:
        ch: Channel[int] = Channel(1)
        ch.send_nowait(0)
        sender = asyncio.create_task(ch.send(1))
        await settle()
        sender.cancel()
        await settle()
        assert sender.cancelled()
        assert ch.receive_nowait() == 0
        with pytest.raises(ChannelEmpty):
            ch.receive_nowait()
        assert ch.statistics() == ChannelStats(buffered=0, capacity=1, waiting_senders=0, waiting_receivers=0,
                                               closed=False, total_sent=1, max_buffered=1)

    run(body, loop_kind)


@loops
def test_sender_woken_then_cancelled_passes_room_on(loop_kind: str) -> None:
    async def body() -> None:
        ch: Channel[int] = Channel(1)
        ch.send_nowait(0)
        first = asyncio.create_task(ch.send(1))
        second = asyncio.create_task(ch.send(2))
        await settle()
        assert ch.receive_nowait() == 0  # wakes `first`...
        first.cancel()  # ...which is cancelled before it runs: the room goes to `second`
        await second
        assert first.cancelled()
        assert ch.receive_nowait() == 2
        with pytest.raises(ChannelEmpty):
            ch.receive_nowait()

    run(body, loop_kind)


@loops
def test_statistics(loop_kind: str) -> None:
    async def body() -> None:
        ch: Channel[int] = Channel(2)
        assert ch.statistics() == ChannelStats(buffered=0, capacity=2, waiting_senders=0, waiting_receivers=0,
                                               closed=False, total_sent=0, max_buffered=0)
        ch.send_nowait(1)
        ch.send_nowait(2)
        blocked = asyncio.create_task(ch.send(3))
        await settle()
        assert ch.statistics() == ChannelStats(buffered=2, capacity=2, waiting_senders=1, waiting_receivers=0,
                                               closed=False, total_sent=2, max_buffered=2)
        assert [await ch.receive() for _ in range(3)] == [1, 2, 3]
        await blocked
        receiver = asyncio.create_task(ch.receive())
        await settle()
        assert ch.statistics().waiting_receivers == 1
        ch.close()
        with pytest.raises(ChannelClosed):
            await receiver
        assert ch.statistics() == ChannelStats(buffered=0, capacity=2, waiting_senders=0, waiting_receivers=0,
                                               closed=True, total_sent=3, max_buffered=2)

    run(body, loop_kind)


@loops
@settings(max_examples=40, deadline=None)
@given(capacity=st.integers(1, 4),
       sends=st.lists(st.integers(0, 6), min_size=1, max_size=3),
       receivers=st.integers(1, 3),
       cancels=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=6))
def test_exactly_once_under_random_cancellation(loop_kind: str, capacity: int, sends: list[int], receivers: int,
                                                cancels: list[tuple[int, int]]) -> None:
    """Producers and consumers cancelled at random points: every completed send is received exactly once
    (items still buffered at the end are collected too), nothing else is, and each producer's items keep their
    order (an item leaves the buffer and is recorded in one step, so `got` is the channel's FIFO order)."""

    async def body() -> None:
        ch: Channel[tuple[int, int]] = Channel(capacity)
        sent: list[tuple[int, int]] = []
        got: list[tuple[int, int]] = []

        async def produce(p: int, n: int) -> None:
            for i in range(n):
                await ch.send((p, i))
                sent.append((p, i))

        async def consume() -> None:
            async for item in ch:
                got.append(item)
                await asyncio.sleep(0)

        producers = [asyncio.create_task(produce(p, n)) for p, n in enumerate(sends)]
        consumers = [asyncio.create_task(consume()) for _ in range(receivers)]
        tasks = [*producers, *consumers]
        for turns, victim in cancels:
            await settle(turns)
            tasks[victim % len(tasks)].cancel()
        consumers.append(asyncio.create_task(consume()))  # never cancelled, so every producer can finish
        await asyncio.gather(*producers, return_exceptions=True)
        ch.close()
        await asyncio.gather(*consumers, return_exceptions=True)
        while True:
            try:
                got.append(ch.receive_nowait())
            except ChannelClosed:
                break
        assert sorted(got) == sorted(sent)
        assert len(set(got)) == len(got)
        for p in range(len(sends)):
            assert [i for q, i in got if q == p] == [i for q, i in sent if q == p]
        assert ch.statistics().total_sent == len(sent)

    run(body, loop_kind)
