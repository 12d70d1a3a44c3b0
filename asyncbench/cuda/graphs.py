"""CUDA graphs captured from a stream: one launch replays a whole engine enqueue."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from asyncbench.cuda.api import CudaError, call, runtime
from asyncbench.cuda.stream import Stream


class CapturedGraph:
    """The work ``enqueue`` puts on ``stream``, captured once and replayed with ``launch``.

    Capture uses the thread-local mode so other threads' unrelated CUDA calls (a completion
    thread synchronising events) do not invalidate it.
    """

    def __init__(self, stream: Stream, enqueue: Callable[[], None]) -> None:
        rt = runtime()
        self.stream = stream
        call("cudaStreamBeginCapture", stream.raw, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
        try:
            enqueue()
        except BaseException:
            # End the capture (or the stream stays unusable); its own error must not hide the cause.
            with contextlib.suppress(CudaError):
                leftover = call("cudaStreamEndCapture", stream.raw)
                if leftover is not None:
                    call("cudaGraphDestroy", leftover)
            raise
        graph = call("cudaStreamEndCapture", stream.raw)
        try:
            self._exec: Any = call("cudaGraphInstantiate", graph, 0)
        finally:
            call("cudaGraphDestroy", graph)

    def launch(self) -> None:
        """Replay the captured work on the stream it was captured from."""
        call("cudaGraphLaunch", self._exec, self.stream.raw)

    def close(self) -> None:
        """Free the executable graph."""
        if self._exec is not None:
            call("cudaGraphExecDestroy", self._exec)
            self._exec = None
