"""Telling the event loop that GPU work finished, without a thread per batch or a busy loop thread.

Two ways, measured side by side by benchmarks/cuda_completion.py:

- ``EventThread``: one thread per device synchronises on each recorded event in order (the
  GIL is released inside cuda-python while it waits) and wakes the loop with
  call_soon_threadsafe. Work on one device's compute stream finishes in order, so one FIFO suffices.
- ``HostFunc``: cudaLaunchHostFunc enqueues a Python callback after the stream's work; CUDA's
  own callback thread runs it, and it wakes the loop the same way.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import queue
import threading
from typing import Any, Protocol

from asyncbench.cuda.api import CudaError, call, runtime, set_device
from asyncbench.cuda.stream import Event, Stream


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():  # the awaiting task was cancelled (a timeout): nobody is listening
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class Notifier(Protocol):
    """Resolves a loop future once the work enqueued so far on a stream (up to ``event``) is done."""

    def after(self, stream: Stream, event: Event) -> asyncio.Future[None]:
        """Called on the loop thread right after ``event`` was recorded on ``stream``."""
        ...

    def close(self) -> None:
        """Stop; futures still pending are left to the caller's timeout."""
        ...


class EventThread:
    """A completion thread for one device: cudaEventSynchronize per batch, in FIFO order."""

    def __init__(self, device: int) -> None:
        self.device = device
        self._queue: queue.SimpleQueue[tuple[Event, asyncio.AbstractEventLoop, asyncio.Future[None]] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._run, name=f"cuda-complete-{device}", daemon=True)
        self._thread.start()

    def after(self, stream: Stream, event: Event) -> asyncio.Future[None]:
        """Queue ``event``; the returned future resolves (or fails with CudaError) once it has happened."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.put((event, loop, future))
        return future

    def _run(self) -> None:
        set_device(self.device)
        while (item := self._queue.get()) is not None:
            event, loop, future = item
            error: BaseException | None = None
            try:
                event.synchronize()
            except Exception as e:  # noqa: BLE001 - any failure goes to the awaiting task; the thread must live on
                error = e
            try:
                loop.call_soon_threadsafe(_settle, future, error)
            except RuntimeError:  # the loop closed (run over): nothing to wake
                pass

    def close(self) -> None:
        """Let the thread finish what is queued and exit."""
        self._queue.put(None)
        self._thread.join(timeout=5)


_HOST_FN_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class HostFunc:
    """cudaLaunchHostFunc after each batch; the callback (on CUDA's thread) wakes the loop."""

    def __init__(self) -> None:
        self._pending: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = {}
        self._tokens = itertools.count(1)
        self._callback = _HOST_FN_TYPE(self._fire)  # kept referenced: CUDA holds only the raw pointer
        address = ctypes.cast(self._callback, ctypes.c_void_p).value
        self._fn: Any = runtime().cudaHostFn_t(address)

    def after(self, stream: Stream, event: Event) -> asyncio.Future[None]:
        """Enqueue the callback on ``stream`` (the event is not needed: the stream orders it)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        token = next(self._tokens)
        self._pending[token] = (loop, future)
        try:
            call("cudaLaunchHostFunc", stream.raw, self._fn, token)
        except CudaError:
            del self._pending[token]
            raise
        return future

    def _fire(self, token: int | None) -> None:
        entry = self._pending.pop(token or 0, None)  # runs on CUDA's thread: no CUDA calls allowed here
        if entry is not None:
            loop, future = entry
            try:
                loop.call_soon_threadsafe(_settle, future, None)
            except RuntimeError:
                pass

    def close(self) -> None:
        """Nothing to stop: CUDA owns the callback thread."""
        self._pending.clear()
