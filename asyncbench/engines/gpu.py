"""The GPU engine frame: per-device workers, stream slots, pinned-arena copies, multi-GPU dispatch.

A backend (torch or TensorRT) only prepares the model for one device and enqueues it; this
module owns everything around it, as NVIDIA's LWIS does:

- the QSL arena lives in pinned host memory (or, with ``start_from_device``, is mirrored to
  every GPU), so a batch is one DMA per contiguous run of samples on a copy stream;
- each device has a pool of slots, each owning its input/output device buffers, a pinned
  top-1 buffer and two events; events chain copy -> execute -> top-1 copy back, so the copy of
  one batch overlaps the compute of the one before; the pool is the backpressure;
- a device has one or more inference streams (LWIS's ``gpu_inference_streams``) and copy
  streams; each slot belongs to one of each, with its own CUDA graphs, and a batch takes a free
  slot on the inference stream with the fewest batches in flight, so small batches can overlap
  on the SMs;
- completion reaches the event loop through a per-device notifier (no thread per batch);
- with several GPUs a batch goes to the device with the fewest batches (then samples) in flight.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from asyncbench.config import Completion
from asyncbench.contract import RESULT_DTYPE, SAMPLE_BYTES, SAMPLE_DTYPE, SAMPLE_SHAPE, check_batch
from asyncbench.cuda.api import set_device
from asyncbench.cuda.completion import EventThread, HostFunc, Notifier
from asyncbench.cuda.memory import DeviceBuffer, PinnedBuffer, RunCopier, copy, copy_async
from asyncbench.cuda.stream import Event, Stream
from asyncbench.data.qsl import SampleArena
from asyncbench.engines.base import (
    Capabilities,
    DeviceSpan,
    EngineError,
    ExecutionForm,
    LatencyRecorder,
    least_loaded,
    run_warmup,
)

# launch(bucket): enqueue one batch of `bucket` rows on the stream the launcher was bound to.
SUSTAINED_SECONDS = 0.05  # warm-up time per batch size spent measuring the sustained rate
Launch = Callable[[int], None]


class DeviceBackend(Protocol):
    """One model prepared for one GPU.

    Contract: the input is int8 NHW4 samples (``(n, 224, 224, 4)``, C-contiguous, values
    ``pixel - 128``) in device memory; the output is int32 top-1 ImageNet classes, one per row.
    """

    name: str  # "torch", "tensorrt"
    precision: str  # "fp16", "int8", ...
    device: int

    def buckets(self) -> tuple[int, ...]:
        """Ascending static batch sizes the backend runs; a batch of n runs at the smallest bucket >= n."""
        ...

    def bind(self, input_ptr: int, output_ptr: int, stream: Stream) -> Launch:
        """Prepare to run from/to these device buffers on ``stream`` (one CUDA graph per bucket).

        ``input_ptr`` holds ``max(buckets())`` samples, ``output_ptr`` as many int32. Rows past the
        real batch hold stale data; their results are ignored.
        """
        ...

    def close(self) -> None:
        """Release the backend's device resources."""
        ...


@dataclass
class _Slot:
    input: DeviceBuffer
    output: DeviceBuffer
    host: PinnedBuffer
    top1: np.ndarray  # pinned int32 view of `host`
    copied: Event
    done: Event
    launch: Launch
    lane: int  # index of its inference stream
    copy_lane: int  # index of its copy stream


class _DeviceTrace:
    """Timing events per slot (copy start/end, compute start/end) and the anchor onto the host clock.

    The anchor is an event recorded on an idle stream between two host clock reads: the closest of
    a few tries places every GPU stamp on ``time.monotonic_ns`` to within half its window. Each
    batch is placed from its copy-start event; its other stamps are offsets within the batch.
    """

    TRIES = 5

    def __init__(self, device: int, stream: Stream, slots: Sequence[_Slot]) -> None:
        self.events = {id(slot): tuple(Event(device, timing=True) for _ in range(4)) for slot in slots}
        best: tuple[int, int, Event] | None = None
        for _ in range(self.TRIES):
            event = Event(device, timing=True)
            before = time.monotonic_ns()
            event.record(stream)
            event.synchronize()
            after = time.monotonic_ns()
            if best is None or after - before < best[1] - best[0]:
                if best is not None:
                    best[2].close()
                best = (before, after, event)
            else:
                event.close()
        assert best is not None
        self.host_ns = (best[0] + best[1]) // 2
        self.uncertainty_ns = (best[1] - best[0]) // 2
        self.anchor = best[2]
        self.spans: list[DeviceSpan] = []

    def collect(self, device: int, batch: int, slot: _Slot, size: int, bucket: int) -> None:
        """Read the finished batch's four events into a span."""
        copy_start, copy_end, compute_start, compute_end = self.events[id(slot)]
        start = self.host_ns + round(copy_start.elapsed_ms(self.anchor) * 1e6)

        def at(event: Event) -> int:
            return start + round(event.elapsed_ms(copy_start) * 1e6)

        self.spans.append(DeviceSpan(device, batch, size, bucket, start, at(copy_end), at(compute_start),
                                     at(compute_end), slot.lane, slot.copy_lane))

    def close(self) -> None:
        for events in self.events.values():
            for event in events:
                event.close()
        self.anchor.close()


def make_notifier(kind: Completion, device: int) -> Notifier:
    """The completion mechanism by name (see asyncbench.cuda.completion for the two)."""
    if kind == Completion.HOSTFUNC:
        return HostFunc()
    return EventThread(device)


class DeviceWorker:
    """One GPU: copy streams, inference (compute) streams and a pool of stream slots spread over them."""

    def __init__(self, backend: DeviceBackend, slots: int, recorder: LatencyRecorder,
                 notifier: Completion = Completion.THREAD,
                 batch_copy: bool | None = None, inference_streams: int = 1, copy_streams: int = 1) -> None:
        if slots < 1:
            raise ValueError(f"a device needs at least one slot, got {slots}")
        if not 1 <= inference_streams <= slots or copy_streams < 1:
            raise ValueError(f"need 1 <= inference streams ({inference_streams}) <= slots ({slots}) "
                             f"and at least one copy stream ({copy_streams})")
        self.backend = backend
        self.device = backend.device
        self.buckets = tuple(sorted(backend.buckets()))
        self.max_batch_size = self.buckets[-1]
        self.copy_streams = [Stream(self.device) for _ in range(copy_streams)]
        self.compute_streams = [Stream(self.device) for _ in range(inference_streams)]
        self.copier = RunCopier(SAMPLE_BYTES, batch_copy)
        self._recorder = recorder
        self._lane_busy = [0] * inference_streams  # batches in flight per inference stream
        self._slots = [self._new_slot(i % inference_streams, i % copy_streams) for i in range(slots)]
        self._free = list(self._slots)
        # Slots whose batch failed or timed out after work was queued: the GPU may still write
        # them, so they come back only once their last event has completed.
        self._quarantine: list[_Slot] = []
        self.notifier = make_notifier(notifier, self.device)
        self.busy_batches = 0
        self.busy_samples = 0
        self.batches_done = 0
        self._source = 0  # base address of the arena rows the copies read (pinned host or a device mirror)
        self._mirror: DeviceBuffer | None = None
        self._staging: np.ndarray | None = None  # pinned rows for `infer` on host batches
        self._trace: _DeviceTrace | None = None  # CUDA-event stamps per batch (--timeline)

    @property
    def free_slots(self) -> int:
        """Slots not holding a batch right now (quarantined ones whose GPU work has finished included)."""
        self._reclaim()
        return len(self._free)

    def _reclaim(self) -> None:
        for slot in [s for s in self._quarantine if s.done.query()]:
            self._quarantine.remove(slot)
            self._free.append(slot)

    @property
    def compute_stream(self) -> Stream:
        """The first inference stream (timing, tracing anchor)."""
        return self.compute_streams[0]

    def _new_slot(self, lane: int, copy_lane: int) -> _Slot:
        rows = self.max_batch_size
        inp = DeviceBuffer(rows * SAMPLE_BYTES, self.device)
        out = DeviceBuffer(rows * RESULT_DTYPE.itemsize, self.device)
        host = PinnedBuffer(rows * RESULT_DTYPE.itemsize)
        launch = self.backend.bind(inp.ptr, out.ptr, self.compute_streams[lane])
        return _Slot(inp, out, host, host.array(RESULT_DTYPE, (rows,)), Event(self.device), Event(self.device), launch,
                     lane, copy_lane)

    def bucket_for(self, n: int) -> int:
        """The smallest prepared batch size that holds n samples."""
        i = bisect.bisect_left(self.buckets, n)
        if i == len(self.buckets):
            raise EngineError(f"batch of {n} is larger than the largest prepared batch {self.max_batch_size}")
        return self.buckets[i]

    def set_source(self, data: np.ndarray, on_device: bool) -> None:
        """Point copies at a freshly loaded arena; with ``on_device`` copy it to this GPU first."""
        if self._mirror is not None:
            self._mirror.close()
            self._mirror = None
        if on_device and data.nbytes:
            set_device(self.device)
            self._mirror = DeviceBuffer(data.nbytes, self.device)
            copy(self._mirror.ptr, data.ctypes.data, data.nbytes)
            self._source = self._mirror.ptr
        else:
            self._source = data.ctypes.data

    def _enqueue(self, slot: _Slot, source: int, rows: np.ndarray) -> int:
        """Copy rows in on the copy stream; compute waits for the copy; top-1 comes back after it.

        Returns the bucket launched.
        """
        n = len(rows)
        bucket = self.bucket_for(n)
        trace = None if self._trace is None else self._trace.events[id(slot)]
        copy_stream, compute = self.copy_streams[slot.copy_lane], self.compute_streams[slot.lane]
        set_device(self.device)  # one loop thread drives every device; the runtime API's device is per thread
        if trace is not None:
            trace[0].record(copy_stream)
        self.copier.copy(slot.input.ptr, source, rows, copy_stream)
        slot.copied.record(copy_stream)
        if trace is not None:
            trace[1].record(copy_stream)
        compute.wait(slot.copied)
        if trace is not None:
            trace[2].record(compute)
        slot.launch(bucket)
        copy_async(slot.host.ptr, slot.output.ptr, n * RESULT_DTYPE.itemsize, compute)
        if trace is not None:
            trace[3].record(compute)
        slot.done.record(compute)
        return bucket

    def _take(self, n: int) -> _Slot:
        """A free slot on the least loaded inference stream for a batch of ``n``, counted as busy."""
        self._reclaim()
        if not self._free:
            raise EngineError(f"cuda:{self.device} has no free slot: more batches in flight than slots")
        if not self._source:
            raise EngineError("no samples loaded: LoadGen's load_samples has not filled the arena")
        slot = min(self._free, key=lambda s: self._lane_busy[s.lane])
        self._free.remove(slot)
        self._lane_busy[slot.lane] += 1
        self.busy_batches += 1
        self.busy_samples += n
        return slot

    def _finished(self, slot: _Slot, n: int, bucket: int) -> np.ndarray:
        """The finished batch's top-1 (and its trace span)."""
        if self._trace is not None:
            self._trace.collect(self.device, self.batches_done, slot, n, bucket)
        self.batches_done += 1
        return slot.top1[:n].copy()

    def _give_back(self, slot: _Slot, n: int, finished: bool) -> None:
        self._lane_busy[slot.lane] -= 1
        self.busy_batches -= 1
        self.busy_samples -= n
        # A failure or a timeout may leave queued work writing this slot: quarantine it.
        (self._free if finished else self._quarantine).append(slot)

    async def run(self, rows: np.ndarray) -> np.ndarray:
        """Top-1 of the arena rows ``rows`` (batch order); awaits the GPU without blocking the loop."""
        n = len(rows)
        slot = self._take(n)
        finished = False
        try:
            bucket = self._enqueue(slot, self._source, rows)
            await self.notifier.after(self.compute_streams[slot.lane], slot.done)
            # No latency record here: under load it includes queueing behind other slots, and the
            # Server policy must size batches from the device's own speed (measured idle, in infer).
            top1 = self._finished(slot, n, bucket)
            finished = True
            return top1
        finally:
            self._give_back(slot, n, finished)

    def run_now(self, rows: np.ndarray, timeout_s: float | None) -> np.ndarray:
        """``run`` on the calling thread: polls the batch's event, so no thread wakes anyone.

        For latency-bound scenarios, where one query is outstanding at a time and a wake-up
        through the completion thread and the loop costs more than the GPU's batch.
        """
        n = len(rows)
        slot = self._take(n)
        finished = False
        try:
            bucket = self._enqueue(slot, self._source, rows)
            deadline = None if timeout_s is None else time.perf_counter() + timeout_s
            while not slot.done.query():
                if deadline is not None and time.perf_counter() > deadline:
                    raise EngineError(f"cuda:{self.device}: a batch of {n} did not finish within {timeout_s:g} s")
            top1 = self._finished(slot, n, bucket)
            finished = True
            return top1
        finally:
            self._give_back(slot, n, finished)

    def start_trace(self) -> None:
        """Time every later batch with CUDA events (the worker must be idle)."""
        self._reclaim()
        if len(self._free) != len(self._slots):
            raise EngineError(f"cuda:{self.device}: tracing starts only on an idle device")
        if self._trace is None:
            self._trace = _DeviceTrace(self.device, self.compute_stream, self._slots)

    def stop_trace(self) -> tuple[list[DeviceSpan], int]:
        """Stop timing; the spans and their placement uncertainty (ns)."""
        trace, self._trace = self._trace, None
        if trace is None:
            return [], 0
        if not self._quarantine:  # a hung batch may still record into its events
            trace.close()
        return trace.spans, trace.uncertainty_ns

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Blocking form for a host batch (warm-up, evaluation): staged through pinned rows."""
        n = check_batch(batch, self.max_batch_size, self.backend.name)
        if not self._free:
            raise EngineError(f"cuda:{self.device} is busy: infer() cannot run beside queued batches")
        if self._staging is None:
            self._staging = PinnedBuffer(self.max_batch_size * SAMPLE_BYTES).array(
                SAMPLE_DTYPE, (self.max_batch_size, *SAMPLE_SHAPE))
        np.copyto(self._staging[:n], batch)
        slot = self._free[0]
        start = time.perf_counter()
        self._enqueue(slot, self._staging.ctypes.data, np.arange(n))
        slot.done.synchronize()
        self._recorder.record(n, time.perf_counter() - start)
        return slot.top1[:n].copy()

    def time_sustained(self, n: int, batches: int) -> float:
        """Seconds per batch of ``n`` host rows with every slot busy: copy in, compute, top-1 back.

        Batches go round-robin over the slots (so over every inference and copy stream), each
        slot reused once its last batch is done: the rate the Server policy can count on.
        """
        self._reclaim()
        if len(self._free) != len(self._slots) or self._staging is None:
            raise EngineError(f"cuda:{self.device} needs an idle, warmed-up device for time_sustained()")
        slots, rows = list(self._slots), np.arange(n)
        source = self._staging.ctypes.data
        start = time.perf_counter()
        for i in range(batches):
            slot = slots[i % len(slots)]
            if i >= len(slots):
                slot.done.synchronize()
            self._enqueue(slot, source, rows)
        for slot in slots:
            slot.done.synchronize()
        return (time.perf_counter() - start) / batches

    def time_compute(self, bucket: int, repeats: int) -> float:
        """Seconds per batch of the engine alone: ``repeats`` back-to-back launches timed by CUDA events.

        No copies and no host round trip: the roofline the whole pipeline is compared against.
        """
        if not self._free:
            raise EngineError(f"cuda:{self.device} is busy: time_compute() needs an idle device")
        slot = self._free[0]
        set_device(self.device)
        slot.launch(bucket)  # warm
        return self._timed(self.compute_streams[slot.lane], repeats, lambda: slot.launch(bucket))[0]

    def time_copy(self, rows: np.ndarray, repeats: int) -> tuple[float, float]:
        """(GPU seconds, host CPU seconds) per copy of these arena rows into a slot, pinned source."""
        if not self._free or not self._source:
            raise EngineError(f"cuda:{self.device} needs an idle device and a loaded arena for time_copy()")
        slot = self._free[0]
        set_device(self.device)
        stream = self.copy_streams[slot.copy_lane]
        return self._timed(stream, repeats, lambda: self.copier.copy(slot.input.ptr, self._source, rows, stream))

    def _timed(self, stream: Stream, repeats: int, enqueue: Callable[[], object]) -> tuple[float, float]:
        """(GPU seconds by CUDA events, host CPU seconds) per call of ``enqueue``, run ``repeats`` times."""
        start, end = Event(self.device, timing=True), Event(self.device, timing=True)
        try:
            start.record(stream)
            cpu = time.process_time()
            for _ in range(repeats):
                enqueue()
            cpu = time.process_time() - cpu
            end.record(stream)
            end.synchronize()
            return end.elapsed_ms(start) / 1e3 / repeats, cpu / repeats
        finally:
            start.close()
            end.close()

    def close(self) -> None:
        """Wait for the device to go idle, then free everything this worker made.

        If a batch that timed out is still running (a hung GPU), nothing is waited for or freed:
        exiting beats hanging, and the process's exit releases the device.
        """
        self._reclaim()
        self.notifier.close()
        if self._quarantine:
            return
        self.stop_trace()
        for stream in self.compute_streams + self.copy_streams:
            stream.synchronize()
        for slot in self._slots:
            for thing in (slot.input, slot.output, slot.host, slot.copied, slot.done):
                thing.close()
        self._slots, self._free = [], []  # drops the launchers, and with them the captured graphs
        if self._mirror is not None:
            self._mirror.close()
        self.backend.close()
        for stream in self.compute_streams + self.copy_streams:
            stream.close()


class GpuEngine:
    """The Engine over one or more GPUs, of the DEVICE form: the runtime feeds it QSL indices, not host batches."""

    def __init__(self, backends: Sequence[DeviceBackend], slots_per_device: int = 3, *,
                 start_from_device: bool = False, notifier: Completion = Completion.THREAD,
                 batch_copy: bool | None = None, inference_streams: int = 1, copy_streams: int = 1) -> None:
        if not backends:
            raise ValueError("a GPU engine needs at least one device backend")
        self._latency = LatencyRecorder()
        self.workers: list[DeviceWorker] = []
        self.inference_streams, self.copy_streams = inference_streams, copy_streams
        try:
            for backend in backends:
                self.workers.append(DeviceWorker(backend, slots_per_device, self._latency, notifier, batch_copy,
                                                 inference_streams, copy_streams))
        except BaseException:
            self.close()
            raise
        first = backends[0]
        self.name = f"{first.name}-{first.precision}"
        self.device = ",".join(f"cuda:{w.device}" for w in self.workers)
        self.max_batch_size = min(w.max_batch_size for w in self.workers)
        buckets = tuple(b for b in self.workers[0].buckets if b <= self.max_batch_size)
        self.capabilities = Capabilities(ExecutionForm.DEVICE, slots_per_device * len(self.workers), slots_per_device,
                                         buckets)
        self.start_from_device = start_from_device
        self._arena: SampleArena | None = None
        self._sustained: dict[int, float] = {}

    def make_arena(self, folder: Path, names: Sequence[str]) -> SampleArena:
        """The QSL arena in pinned memory, bound to this engine's devices whenever LoadGen loads it."""
        self._arena = SampleArena(folder, names, allocate=pinned_rows, on_load=self._bind_arena)
        return self._arena

    def _bind_arena(self, data: np.ndarray) -> None:
        for worker in self.workers:
            worker.set_source(data, self.start_from_device)

    def _route(self, indices: Sequence[int]) -> tuple[DeviceWorker, np.ndarray, np.ndarray]:
        """The least-loaded device with a free slot, the rows in arena order, and that order."""
        if self._arena is None:
            raise EngineError("the GPU engine has no arena: make_arena was not called")
        rows = self._arena.slots(indices)
        order = np.argsort(rows, kind="stable")  # neighbouring rows merge into one copy
        worker = least_loaded(self.workers)
        if worker is None:
            raise EngineError("every device slot is busy: the pipeline sent more batches than slots")
        return worker, rows, order

    async def infer_indices(self, indices: Sequence[int]) -> np.ndarray:
        """Top-1 of these QSL samples, computed on the least-loaded device straight from the arena."""
        worker, rows, order = self._route(indices)
        top1 = np.empty(len(rows), RESULT_DTYPE)
        top1[order] = await worker.run(rows[order])
        return top1

    def infer_indices_now(self, indices: Sequence[int], timeout_s: float | None) -> np.ndarray:
        """``infer_indices`` on the calling thread, polling for the result (see DeviceWorker.run_now)."""
        worker, rows, order = self._route(indices)
        top1 = np.empty(len(rows), RESULT_DTYPE)
        top1[order] = worker.run_now(rows[order], timeout_s)
        return top1

    def trace_devices(self) -> None:
        """Time every later batch on every device with CUDA events (for the timeline)."""
        for worker in self.workers:
            worker.start_trace()

    def device_spans(self) -> tuple[list[DeviceSpan], int]:
        """Stop timing; every device's spans and the largest placement uncertainty (ns)."""
        spans: list[DeviceSpan] = []
        uncertainty = 0
        for worker in self.workers:
            found, error = worker.stop_trace()
            spans += found
            uncertainty = max(uncertainty, error)
        return spans, uncertainty

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Blocking top-1 of a host batch on the first device (evaluation and warm-up)."""
        return self.workers[0].infer(batch)

    def latency(self, batch_size: int) -> float | None:
        """Median copy-in to top-1-back seconds at this batch size."""
        return self._latency.median(batch_size)

    @property
    def concurrency(self) -> int:
        """Batches one device runs at once: its inference streams."""
        return self.inference_streams

    def sustained(self, batch_size: int) -> float | None:
        """Seconds per batch of this size with every slot of one device busy (measured in warm-up)."""
        return self._sustained.get(batch_size)

    def warmup(self, batch_sizes: Sequence[int]) -> dict[int, float]:
        """Every device runs every size a few times (each size's graph replays once at least); then
        the first device's sustained rate per size, with every slot busy."""
        result: dict[int, float] = {}
        for worker in self.workers:
            result = run_warmup(worker.infer, self.latency, batch_sizes, self.max_batch_size, self.name)
        worker = self.workers[0]
        for size in sorted(set(batch_sizes)):
            probe = worker.time_sustained(size, 2 * len(worker._slots))
            batches = max(4 * len(worker._slots), min(400, int(SUSTAINED_SECONDS / max(probe, 1e-6))))
            self._sustained[size] = worker.time_sustained(size, batches)
        return result

    def close(self) -> None:
        """Release every device's resources."""
        for worker in self.workers:
            worker.close()
        self.workers = []


def pinned_rows(count: int) -> np.ndarray:
    """``count`` uninitialised sample rows in pinned host memory (the QSL arena's storage)."""
    return PinnedBuffer(count * SAMPLE_BYTES).array(SAMPLE_DTYPE, (count, *SAMPLE_SHAPE))
