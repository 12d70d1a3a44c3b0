"""Process knobs a run applies while it lasts, in one place: the event loop, the GIL time slice, the GC."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
from collections.abc import Iterator

from asyncbench.config import Loop, ProcessConfig
from asyncbench.errors import UserError


@contextlib.contextmanager
def gil_switch_interval(seconds: float) -> Iterator[None]:
    """Shorter GIL time slices for the run, restored afterwards.

    LoadGen's issue thread needs the GIL for every query while the loop thread completes
    batches; with Python's default 5 ms slice an issue call can wait a whole slice. Measured with
    the null engine at 65k / 75k Server QPS: p99 6.8 / 38 ms at 5 ms, 4.6 / 19 ms at 0.5 ms.
    """
    before = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """No cyclic garbage collection during the run; everything alive before it is frozen.

    Every LoadGen issue call allocates lists, so the collector ran constantly, and its full
    collections walked the whole heap (onnx, numpy, the model) while holding the GIL: pauses that
    landed in the Server tail. Reference counting still frees everything the run drops; what
    cycles it leaves are collected when the run ends.
    """
    gc.collect()
    gc.freeze()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        gc.unfreeze()
        gc.collect()


def loop_runner(kind: Loop) -> asyncio.Runner:
    """An asyncio.Runner on uvloop (default) or the standard loop."""
    if kind == Loop.UVLOOP:
        try:
            import uvloop
        except ImportError:
            raise UserError("uvloop is not installed: pip install uvloop, or pass --loop asyncio") from None
        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


@contextlib.contextmanager
def run_process(cfg: ProcessConfig) -> Iterator[asyncio.Runner]:
    """The loop a run drives, with the GIL slice and the quiet GC applied until it ends."""
    with loop_runner(cfg.loop) as runner, gil_switch_interval(cfg.gil_switch_us * 1e-6), quiet_gc():
        yield runner
