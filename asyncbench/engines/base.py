"""What the runtime needs from an inference engine, declared in full, plus the parts engines share.

Every engine runs the sample contract of asyncbench.contract: int8 ``(n, 224, 224, 4)`` in, int32
``(n,)`` top-1 classes out. An engine declares how it executes a batch in its ``Capabilities``
(``form``), and the runtime picks one adapter for that form when it builds the pipeline:

- ``BLOCKING``: ``infer`` computes with the GIL released; the runtime calls it on worker threads.
- ``LOOP``: ``infer_async`` is awaited on the event loop (a modelled device holds no thread).
- ``DEVICE``: ``infer_indices`` reads QSL samples straight from the arena the engine made
  (pinned host memory or a device mirror) and is awaited on the loop.

The runtime batches and schedules from the engine's own latency measurements, so every engine
records how long its calls take, per batch size.
"""

from __future__ import annotations

import abc
import enum
import statistics
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar, runtime_checkable

import numpy as np

from asyncbench.contract import SAMPLE_SHAPE
from asyncbench.data.qsl import SampleArena

WARMUP_REPEATS = 5  # infers per batch size during warm-up


class EngineError(RuntimeError):
    """An engine failed while running a batch (not a caller mistake, not a bad model file)."""


class ExecutionForm(enum.StrEnum):
    """How the runtime drives an engine's batches (see the module docstring)."""

    BLOCKING = "blocking"
    LOOP = "loop"
    DEVICE = "device"


@dataclass(frozen=True)
class Capabilities:
    """What an engine can take at once; the pipeline sizes itself from this record only."""

    form: ExecutionForm
    slots: int  # batches the engine holds at once: the pipeline never has more in flight
    slots_per_device: int  # of those, how many queue on one device (the Server policy's depth)
    buckets: tuple[int, ...]  # ascending batch sizes warm-up measures (a GPU's prepared shapes); the last is the max
    reads_input: bool = True  # False only for engines that ignore pixels (null): the host gather is skipped

    def __post_init__(self) -> None:
        if self.slots < 1 or self.slots_per_device < 1:
            raise ValueError(f"an engine needs at least one slot, got {self.slots} "
                             f"({self.slots_per_device} per device)")
        if not self.buckets or list(self.buckets) != sorted(set(self.buckets)) or self.buckets[0] < 1:
            raise ValueError(f"buckets must be ascending batch sizes >= 1, got {self.buckets}")

    @property
    def max_batch_size(self) -> int:
        """The largest batch the engine runs."""
        return self.buckets[-1]


@runtime_checkable
class Engine(Protocol):
    """Everything the runtime calls on every engine."""

    name: str
    device: str  # "cpu", "cuda:0", ...

    @property
    def capabilities(self) -> Capabilities:
        """Execution form, slots and batch sizes (fixed for the engine's life)."""
        ...

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Blocking top-1 classes (int32 ``(n,)``) of a C-contiguous contract batch; releases the GIL.

        Every engine has it: warm-up and evaluation use it, and the BLOCKING form runs on it.
        """
        ...

    def latency(self, batch_size: int) -> float | None:
        """Running median of recent idle ``infer`` seconds at this batch size; None before the first call."""
        ...

    def warmup(self, batch_sizes: Sequence[int]) -> dict[int, float]:
        """Run each batch size a few times so the first real query is not slow; returns latencies."""
        ...

    def make_arena(self, folder: Path, names: Sequence[str]) -> SampleArena:
        """The QSL arena this engine reads samples from (pinned and bound to the devices for a GPU engine)."""
        ...

    def close(self) -> None:
        """Release the engine's resources; it must not be used afterwards."""
        ...


@runtime_checkable
class LoopEngine(Engine, Protocol):
    """An engine of the LOOP form."""

    async def infer_async(self, batch: np.ndarray) -> np.ndarray:
        """``infer`` awaited on the event loop."""
        ...


@runtime_checkable
class FillingEngine(Protocol):
    """A LOOP engine that sends batches from memory of its own (shared memory its server maps): the
    pipeline gathers each batch straight into it, one copy of every batch fewer on the loop."""

    async def infer_fill(self, size: int, fill: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Top-1 of the ``size`` samples ``fill`` writes into the (max batch) buffer it is given and
        returns (trimmed to ``size``)."""
        ...


@runtime_checkable
class LoopBound(Protocol):
    """A LOOP engine holding what belongs to one event loop (gRPC channels), made and warmed per loop."""

    async def bind_loop(self) -> None:
        """On the loop that will run the batches, before the first: make and warm that loop's resources,
        so that the first queries of a test do not pay for connecting."""
        ...


@runtime_checkable
class DeviceEngine(Engine, Protocol):
    """An engine of the DEVICE form."""

    async def infer_indices(self, indices: Sequence[int]) -> np.ndarray:
        """Top-1 of these QSL samples, read from the arena ``make_arena`` returned."""
        ...

    def infer_indices_now(self, indices: Sequence[int], timeout_s: float | None) -> np.ndarray:
        """``infer_indices`` on the calling thread, waited for by polling (the inline path of latency-bound
        scenarios); raises EngineError once ``timeout_s`` has passed without a result."""
        ...


@dataclass(frozen=True)
class DeviceSpan:
    """One batch's work on a GPU from CUDA events (or on a modelled device), on the host's monotonic clock (ns)."""

    device: int
    batch: int  # the device's batch count
    size: int
    bucket: int
    copy_start: int
    copy_end: int
    compute_start: int  # after the copy-in, once the stream reached the batch
    compute_end: int  # top-1 copied back
    stream: int = 0  # the device's inference stream that ran it
    copy_stream: int = 0  # the device's copy stream that brought it in
    kind: str = "cuda"  # the device's name in the timeline ("null": the null engine's modelled devices)


@runtime_checkable
class DeviceTracer(Protocol):
    """An engine that can time every batch on its devices with CUDA events (for ``--timeline``)."""

    def trace_devices(self) -> None:
        """Start timing every batch (idle engine only); until ``device_spans``, which stops it."""
        ...

    def device_spans(self) -> tuple[list[DeviceSpan], int]:
        """Stop timing; the spans recorded, and the host-clock uncertainty of their placement (ns)."""
        ...


@dataclass(frozen=True)
class RequestSpan:
    """One batch's round trip to a remote server, on the host's monotonic clock (ns)."""

    server: int  # index into the engine's servers
    size: int
    sent: int
    received: int
    ok: bool


@runtime_checkable
class RemoteEngine(Protocol):
    """An engine whose batches run on servers (Triton): what each did during a run, for result.json and
    ``--timeline``."""

    def remote_begin(self, trace: bool) -> None:
        """Start counting a run (idle engine only); with ``trace``, keep every request's span."""
        ...

    def remote_end(self) -> tuple[dict[str, Any], list[RequestSpan]]:
        """Per server: what was sent and its round trip against the server's own statistics; the spans kept."""
        ...


@runtime_checkable
class Sustained(Protocol):
    """An engine that knows its throughput when kept busy, not only its idle latency.

    The Server policy sizes batches for the target rate from this: a GPU's batches overlap
    (copy beside compute, several inference streams), so its idle latency per batch understates
    what it sustains.
    """

    @property
    def concurrency(self) -> int:
        """Batches one device runs at once (a batch's wall time under load is this x ``sustained``)."""
        ...

    def sustained(self, batch_size: int) -> float | None:
        """Seconds per batch of this size with every slot busy (None: not measured)."""
        ...


class LatencyRecorder:
    """Recent call durations per batch size, so a median reflects the engine's current speed.

    Thread-safe: several workers may record into the same engine at once.
    """

    def __init__(self, window: int = 64) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self._window = window
        self._samples: dict[int, deque[float]] = {}
        self._lock = threading.Lock()

    def record(self, batch_size: int, seconds: float) -> None:
        """Add one observation; the oldest beyond the window is dropped."""
        with self._lock:
            samples = self._samples.get(batch_size)
            if samples is None:
                samples = self._samples[batch_size] = deque(maxlen=self._window)
            samples.append(seconds)

    def median(self, batch_size: int) -> float | None:
        """Median of the kept observations at this batch size, None if there are none."""
        with self._lock:
            samples = self._samples.get(batch_size)
            return statistics.median(samples) if samples else None


class Loaded(Protocol):
    """A device as the router sees it: its free slots and what it has in flight."""

    @property
    def free_slots(self) -> int: ...

    @property
    def busy_batches(self) -> int: ...

    @property
    def busy_samples(self) -> int: ...


_Device = TypeVar("_Device", bound=Loaded)


def least_loaded(devices: Sequence[_Device]) -> _Device | None:
    """The device for the next batch: one with a free slot and the fewest batches, then samples, in flight
    (the first on a tie, so one batch at a time stays on the first device); None when every slot is busy."""
    return min((d for d in devices if d.free_slots), key=lambda d: (d.busy_batches, d.busy_samples), default=None)


def batch_sizes_upto(limit: int) -> tuple[int, ...]:
    """Powers of two below ``limit``, then ``limit``: the sizes an engine prepares and warm-up measures."""
    sizes, b = [], 1
    while b < limit:
        sizes.append(b)
        b *= 2
    return (*sizes, limit)


def warmup_batch(batch_size: int, sample_shape: Sequence[int] = SAMPLE_SHAPE) -> np.ndarray:
    """A deterministic, non-zero int8 batch (zeros could hit fast paths real data never takes)."""
    count = int(np.prod(sample_shape))
    sample = (np.arange(count, dtype=np.int32) * 7919 % 251 - 125).astype(np.int8)
    sample[sample == 0] = 1
    batch = np.empty((batch_size, count), np.int8)
    batch[:] = sample  # one pattern per sample: building it per element made a 1024 batch take seconds
    return batch.reshape(batch_size, *sample_shape)


def run_warmup(infer: Callable[[np.ndarray], object], latency: Callable[[int], float | None],
               batch_sizes: Sequence[int], max_batch_size: int, name: str) -> dict[int, float]:
    """The one warm-up body: ``WARMUP_REPEATS`` calls of ``infer`` per size, then the recorded medians."""
    sizes = sorted(set(batch_sizes))
    for size in sizes:
        if not 1 <= size <= max_batch_size:
            raise ValueError(f"warm-up batch size {size} is outside 1..{max_batch_size} for {name}")
    result: dict[int, float] = {}
    if not sizes:
        return result
    largest = warmup_batch(sizes[-1])
    for size in sizes:
        batch = largest[:size]  # a leading slice of a C-contiguous array is C-contiguous
        for _ in range(WARMUP_REPEATS):
            infer(batch)
        seconds = latency(size)
        if seconds is None:
            raise EngineError(f"{name} recorded no latency for batch size {size} after warm-up")
        result[size] = seconds
    return result


class HostEngine(abc.ABC):
    """What the CPU engines share: a host arena, the latency record, warm-up and the context manager.

    A subclass sets ``name``, ``max_batch_size`` and ``capabilities``, implements ``infer``
    (recording each call in ``self._latency``) and ``close``.
    """

    name: str
    device: str = "cpu"
    max_batch_size: int
    capabilities: Capabilities

    def __init__(self) -> None:
        self._latency = LatencyRecorder()

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """See ``Engine.infer``."""

    @abc.abstractmethod
    def close(self) -> None:
        """See ``Engine.close``."""

    def latency(self, batch_size: int) -> float | None:
        """Median of the recent ``infer`` durations at this batch size (None before any)."""
        return self._latency.median(batch_size)

    def warmup(self, batch_sizes: Sequence[int]) -> dict[int, float]:
        """Run each size a few times so first-call allocations do not land on a real query."""
        return run_warmup(self.infer, self.latency, batch_sizes, self.max_batch_size, self.name)

    def make_arena(self, folder: Path, names: Sequence[str]) -> SampleArena:
        """A plain (pageable) arena: the CPU engines read batches gathered from it."""
        return SampleArena(folder, names)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
