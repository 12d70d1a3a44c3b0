"""A bounded asyncio channel in the manner of trio/anyio memory channels.

The pipeline's stages hand work on through channels; a channel's capacity is the backpressure
(a full channel makes its sender wait). Futures are made only when a party has to wait, so an
item that finds room (or finds one buffered) costs a deque operation and nothing else.

A wake-up is a hint, never a hand-off: the woken party re-checks the buffer when it runs, so
an item only enters or leaves the buffer in the synchronous part of send/receive. A send or
receive cancelled while it waits therefore never loses or duplicates an item; a party woken and
then cancelled before it ran passes its wake-up on to the next one waiting.
"""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import suppress
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class ChannelClosed(Exception):
    """The channel is closed: nothing more may be sent, and (once drained) nothing is left to receive."""


class ChannelFull(Exception):
    """send_nowait found the buffer at capacity."""


class ChannelEmpty(Exception):
    """receive_nowait found nothing buffered on a channel that is still open."""


@dataclass(frozen=True)
class ChannelStats:
    """A snapshot of one channel, for the run summary and for tests."""

    buffered: int
    capacity: int
    waiting_senders: int
    waiting_receivers: int
    closed: bool
    total_sent: int
    max_buffered: int  # high-water mark of `buffered`


def _wake_one(waiters: deque[asyncio.Future[None]]) -> None:
    """Wake the longest-waiting party, skipping any whose wait was already cancelled."""
    while waiters:
        fut = waiters.popleft()
        if not fut.done():
            fut.set_result(None)
            return


def _live(waiters: deque[asyncio.Future[None]]) -> int:
    """Parties still waiting (a cancelled one stays queued until its task runs and leaves)."""
    return sum(not fut.done() for fut in waiters)


class Channel(Generic[T]):
    """A FIFO of at most `capacity` items between tasks of one event loop."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"channel capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._buffer: deque[T] = deque()
        self._senders: deque[asyncio.Future[None]] = deque()
        self._receivers: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._total_sent = 0
        self._max_buffered = 0

    def send_nowait(self, item: T) -> None:
        """Buffer `item`; ChannelClosed after close(), ChannelFull when there is no room."""
        if self._closed:
            raise ChannelClosed("send on a closed channel")
        buffer = self._buffer
        if len(buffer) >= self._capacity:
            raise ChannelFull(f"channel is at its capacity of {self._capacity}")
        buffer.append(item)
        self._total_sent += 1
        if len(buffer) > self._max_buffered:
            self._max_buffered = len(buffer)
        if self._receivers:
            _wake_one(self._receivers)

    async def send(self, item: T) -> None:
        """Buffer `item`, waiting while the channel is full; ChannelClosed if it is (or gets) closed."""
        while not self._closed and len(self._buffer) >= self._capacity:
            await self._wait(self._senders)
        self.send_nowait(item)

    def receive_nowait(self) -> T:
        """The oldest item; ChannelEmpty when none is buffered, ChannelClosed once closed and drained."""
        if self._buffer:
            item = self._buffer.popleft()
            if self._senders:
                _wake_one(self._senders)
            return item
        if self._closed:
            raise ChannelClosed("channel is closed and drained")
        raise ChannelEmpty("channel is empty")

    async def receive(self) -> T:
        """The oldest item, waiting while the channel is empty; ChannelClosed once closed and drained."""
        while not self._buffer and not self._closed:
            await self._wait(self._receivers)
        return self.receive_nowait()

    def close(self) -> None:
        """No more sends: waiting senders get ChannelClosed, receivers get what is buffered and then ChannelClosed."""
        if self._closed:
            return
        self._closed = True
        for waiters in (self._senders, self._receivers):
            while waiters:
                _wake_one(waiters)

    def statistics(self) -> ChannelStats:
        """The channel's state now, plus its lifetime counters."""
        return ChannelStats(buffered=len(self._buffer), capacity=self._capacity,
                            waiting_senders=_live(self._senders), waiting_receivers=_live(self._receivers),
                            closed=self._closed, total_sent=self._total_sent, max_buffered=self._max_buffered)

    def __aiter__(self) -> Channel[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except ChannelClosed:
            raise StopAsyncIteration from None

    async def _wait(self, waiters: deque[asyncio.Future[None]]) -> None:
        """Wait for one wake-up; on cancellation leave the queue, or pass on a wake-up already received."""
        fut = asyncio.get_running_loop().create_future()
        waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                _wake_one(waiters)
            else:
                fut.cancel()
                with suppress(ValueError):
                    waiters.remove(fut)
            raise
