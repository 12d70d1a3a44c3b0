"""What the runtime needs from an inference engine, plus the helpers engines share.

Every engine runs the same model contract: an int8 ``(n, 224, 224, 4)`` batch (NHWC with a
zero fourth channel, values ``pixel - 128``) in, int32 ``(n,)`` top-1 ImageNet classes out.
The runtime batches and schedules from the engine's own latency measurements, so each engine
records how long its calls take, per batch size.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

SAMPLE_SHAPE: tuple[int, ...] = (224, 224, 4)
SAMPLE_DTYPE = np.dtype(np.int8)
RESULT_DTYPE = np.dtype(np.int32)


class EngineError(RuntimeError):
    """An engine failed while running a batch (not a caller mistake, not a bad model file)."""


@runtime_checkable
class Engine(Protocol):
    """An inference backend the runtime can submit batches to from worker threads."""

    name: str
    device: str  # "cpu", "cuda:0", ...
    max_batch_size: int
    sample_shape: tuple[int, ...]
    sample_dtype: np.dtype
    reads_input: bool  # False only for engines that ignore pixels (null): the host gather is skipped

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Top-1 classes (int32, shape ``(n,)``) of a C-contiguous ``(n, *sample_shape)`` batch.

        ``1 <= n <= max_batch_size``. Must release the GIL while computing so the event loop and
        other workers keep running.
        """
        ...

    def latency(self, batch_size: int) -> float | None:
        """Running median of recent ``infer`` seconds at this batch size; None before the first call."""
        ...

    def warmup(self, batch_sizes: Sequence[int]) -> dict[int, float]:
        """Run each batch size a few times so the first real query is not slow; returns latencies."""
        ...

    def close(self) -> None:
        """Release the engine's resources; it must not be used afterwards."""
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


def warmup_batch(batch_size: int, sample_shape: Sequence[int] = SAMPLE_SHAPE) -> np.ndarray:
    """A deterministic, non-zero int8 batch (zeros could hit fast paths real data never takes)."""
    count = int(np.prod(sample_shape))
    sample = (np.arange(count, dtype=np.int32) * 7919 % 251 - 125).astype(np.int8)
    sample[sample == 0] = 1
    batch = np.empty((batch_size, count), np.int8)
    batch[:] = sample  # one pattern per sample: building it per element made a 1024 batch take seconds
    return batch.reshape(batch_size, *sample_shape)


def run_warmup(engine: Engine, batch_sizes: Sequence[int], repeats: int = 5) -> dict[int, float]:
    """Shared ``Engine.warmup`` body: ``repeats`` infers per size, then the recorded medians."""
    sizes = sorted(set(batch_sizes))
    for size in sizes:
        if not 1 <= size <= engine.max_batch_size:
            raise ValueError(f"warm-up batch size {size} is outside 1..{engine.max_batch_size} for {engine.name}")
    result: dict[int, float] = {}
    largest = warmup_batch(sizes[-1], engine.sample_shape) if sizes else None
    for size in sizes:
        batch = largest[:size]  # a leading slice of a C-contiguous array is C-contiguous
        for _ in range(repeats):
            engine.infer(batch)
        seconds = engine.latency(size)
        if seconds is None:
            raise EngineError(f"{engine.name} recorded no latency for batch size {size} after warm-up")
        result[size] = seconds
    return result


def check_batch(batch: np.ndarray, max_batch_size: int, name: str) -> int:
    """Validate a batch against the engine contract (type, dtype, shape, size); returns its size."""
    if not isinstance(batch, np.ndarray):
        raise TypeError(f"batch must be a numpy array, got {type(batch).__name__}")
    if batch.dtype != SAMPLE_DTYPE:
        raise ValueError(f"batch must be int8, got {batch.dtype}")
    if batch.ndim != 4 or batch.shape[1:] != SAMPLE_SHAPE:
        raise ValueError(f"batch must have shape (n, {', '.join(map(str, SAMPLE_SHAPE))}), got {batch.shape}")
    n = batch.shape[0]
    if not 1 <= n <= max_batch_size:
        raise ValueError(f"batch size {n} is outside 1..{max_batch_size} for {name}")
    return n
