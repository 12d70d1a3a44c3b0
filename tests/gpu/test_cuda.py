"""asyncbench.cuda on a real GPU: checked calls, pinned/device memory, run copies, graphs, notifiers."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from asyncbench.config import Completion
from asyncbench.cuda.api import CudaError, call, device_name
from asyncbench.cuda.graphs import CapturedGraph
from asyncbench.cuda.memory import DeviceBuffer, PinnedBuffer, RunCopier, contiguous_runs, copy, copy_async
from asyncbench.cuda.stream import Event, Stream
from asyncbench.engines.gpu import make_notifier

RECORD = 4096


def test_a_failed_call_names_the_call_and_cuda_error() -> None:
    with pytest.raises(CudaError, match=r"cudaMalloc failed: cudaErrorMemoryAllocation"):
        call("cudaMalloc", 1 << 62)


def test_device_name_names_the_gpu() -> None:
    assert "sm_" in device_name(0)


def test_pinned_and_device_round_trip() -> None:
    rng = np.random.default_rng(1)
    src, back = PinnedBuffer(1 << 20), PinnedBuffer(1 << 20)
    dev = DeviceBuffer(1 << 20, 0)
    stream = Stream(0)
    a, b = src.array(np.uint8, (1 << 20,)), back.array(np.uint8, (1 << 20,))
    a[:] = rng.integers(0, 256, a.size, dtype=np.uint8)
    b[:] = 0xAB  # poisoned: every byte must be overwritten
    copy_async(dev.ptr, src.ptr, a.nbytes, stream)
    copy_async(back.ptr, dev.ptr, a.nbytes, stream)
    stream.synchronize()
    assert np.array_equal(a, b)
    for thing in (src, back, dev, stream):
        thing.close()


@pytest.mark.parametrize("batch_api", [False, True])
def test_run_copier_copies_rows_in_batch_order(batch_api: bool) -> None:
    rng = np.random.default_rng(2)
    rows = 64
    arena = PinnedBuffer(rows * RECORD)
    data = arena.array(np.uint8, (rows, RECORD))
    data[:] = rng.integers(0, 256, data.shape, dtype=np.uint8)
    dev = DeviceBuffer(48 * RECORD, 0)
    out = np.empty((48, RECORD), np.uint8)
    stream = Stream(0)
    copier = RunCopier(RECORD, batch_api=batch_api)
    order = np.concatenate([np.arange(10, 20), rng.integers(0, rows, 30), [5, 5, 6, 7], np.arange(60, 64)])
    calls = copier.copy(dev.ptr, arena.ptr, order, stream)
    stream.synchronize()
    copy(out.ctypes.data, dev.ptr, out.nbytes)
    assert np.array_equal(out, data[order])
    runs = len(contiguous_runs(order)[0])
    assert runs < len(order)  # the runs 10..19, 5..7 and 60..63 merge
    assert calls == (1 if batch_api else runs)
    for thing in (arena, dev, stream):
        thing.close()


def test_captured_graph_replays_its_copy() -> None:
    stream = Stream(0)
    src, dst = DeviceBuffer(RECORD, 0), DeviceBuffer(RECORD, 0)
    host = np.arange(RECORD, dtype=np.uint8)
    copy(src.ptr, host.ctypes.data, RECORD)
    graph = CapturedGraph(stream, lambda: copy_async(dst.ptr, src.ptr, RECORD, stream))
    out = np.zeros(RECORD, np.uint8)
    copy(out.ctypes.data, dst.ptr, RECORD)
    assert not out.any()  # capture records, it does not run
    graph.launch()
    stream.synchronize()
    copy(out.ctypes.data, dst.ptr, RECORD)
    assert np.array_equal(out, host)
    graph.close()


@pytest.mark.parametrize("kind", list(Completion))
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_notifiers_resolve_in_order_after_the_work(kind: Completion, loop: str) -> None:
    big = 256 << 20
    dev = DeviceBuffer(big, 0)
    stream = Stream(0)
    notifier = make_notifier(kind, 0)
    events = [Event(0) for _ in range(8)]

    async def main() -> list[int]:
        order: list[int] = []
        futures = []
        for i, event in enumerate(events):
            call("cudaMemsetAsync", dev.ptr, i, big, stream.raw)  # real work before each notification
            event.record(stream)
            fut = notifier.after(stream, event)
            fut.add_done_callback(lambda _f, i=i: order.append(i))
            futures.append(fut)
        await asyncio.wait_for(asyncio.gather(*futures), 30)
        assert all(e.query() for e in events)
        return order

    if loop == "uvloop":
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    else:
        runner = asyncio.Runner()
    with runner:
        assert runner.run(main()) == list(range(8))
    notifier.close()
    for thing in (*events, stream, dev):
        thing.close()
