"""CUDA streams and events (cuda-python), owned objects with explicit close()."""

from __future__ import annotations

from typing import Any

from asyncbench.cuda.api import call, runtime, set_device


class Stream:
    """A non-blocking stream on one device (never synchronises with the legacy default stream)."""

    def __init__(self, device: int, priority: int = 0) -> None:
        rt = runtime()
        set_device(device)
        self.device = device
        self._stream: Any = call("cudaStreamCreateWithPriority", rt.cudaStreamNonBlocking, priority)
        self.handle = int(self._stream)

    @property
    def raw(self) -> Any:
        """The cuda-python ``cudaStream_t`` (for calls that take one)."""
        return self._stream

    def wait(self, event: Event) -> None:
        """Make later work on this stream wait for ``event`` (no host blocking)."""
        call("cudaStreamWaitEvent", self._stream, event.raw, 0)

    def synchronize(self) -> None:
        """Block the calling thread (GIL released) until all work on the stream is done."""
        call("cudaStreamSynchronize", self._stream)

    def close(self) -> None:
        """Destroy the stream (pending work still completes)."""
        if self._stream is not None:
            call("cudaStreamDestroy", self._stream)
            self._stream = None


class Event:
    """A CUDA event without timing (cheapest to record), or with timing for measurements."""

    def __init__(self, device: int, timing: bool = False) -> None:
        rt = runtime()
        set_device(device)
        self.device = device
        flags = rt.cudaEventDefault if timing else rt.cudaEventDisableTiming
        self._event: Any = call("cudaEventCreateWithFlags", flags)

    @property
    def raw(self) -> Any:
        """The cuda-python ``cudaEvent_t``."""
        return self._event

    def record(self, stream: Stream) -> None:
        """Capture the work enqueued on ``stream`` so far."""
        call("cudaEventRecord", self._event, stream.raw)

    def synchronize(self) -> None:
        """Block the calling thread (GIL released inside cuda-python) until the event has happened."""
        call("cudaEventSynchronize", self._event)

    def query(self) -> bool:
        """True when the recorded work is done; never blocks."""
        rt = runtime()
        (err,) = rt.cudaEventQuery(self._event)
        if err == rt.cudaError_t.cudaErrorNotReady:
            return False
        if err != rt.cudaError_t.cudaSuccess:
            call("cudaEventQuery", self._event)  # raises with CUDA's description
        return True

    def elapsed_ms(self, start: Event) -> float:
        """Milliseconds from ``start`` to this event (both created with timing=True)."""
        return float(call("cudaEventElapsedTime", start.raw, self._event))

    def close(self) -> None:
        """Destroy the event."""
        if self._event is not None:
            call("cudaEventDestroy", self._event)
            self._event = None
