"""An ``Engine`` that computes nothing: it waits out a latency model and answers class 0.

It lets the runtime and the LoadGen glue be measured and tested without a model: the wait is
``fixed_s + per_sample_s * n`` and blocks with the GIL released, like a real engine's compute.
Failures and stalls can be injected at a chosen batch to exercise the runtime's error paths, and
the two faults the compliance audits exist to catch can be planted: answers that change from run
to run (TEST01) and a cache of recent samples (TEST04).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from asyncbench.contract import RESULT_DTYPE, SAMPLE_DTYPE, SAMPLE_SHAPE, check_batch
from asyncbench.engines.base import (
    Capabilities,
    DeviceSpan,
    EngineError,
    ExecutionForm,
    HostEngine,
    batch_sizes_upto,
    least_loaded,
)
from asyncbench.errors import ConfigError


class NullEngine(HostEngine):
    """Sleeps ``fixed_s + per_sample_s * n`` per batch of ``n`` and returns ``n`` zeros (class 0).

    Batches are counted from 0 across every ``infer`` call that passes validation, warm-up
    included. The batch numbered ``fail_after_batches`` raises EngineError (only that one);
    the batch numbered ``stall_after_batches`` waits ``stall_s`` instead of the model, or until
    ``close()``, which makes it raise EngineError.

    Its form is LOOP by default: one modelled device, ``slots`` batches queued on it, waited for
    on the event loop's timers, so harness-overhead figures measure the harness without the GIL
    hand-offs a worker thread adds (the GPU engines complete on events the same way); its
    capacity is one batch per modelled batch time. ``form=BLOCKING`` runs ``slots`` batches side
    by side on worker threads, like a CPU engine. ``form=DEVICE`` takes QSL indices like a GPU
    engine (the same modelled device), including the blocking ``infer_indices_now`` of the
    inline path.
    It never looks at pixels, so the pipeline skips the host gather.

    ``devices`` (DEVICE form): that many modelled devices, each with ``slots`` slots and its own
    queue; a batch goes to the least-loaded one by the GPU engine's own rule (``least_loaded``), so
    the multi-GPU routing, balance and the host side's share run on a CPU.

    Planted faults for the audits: ``drift`` answers each batch's number (mod 1000) instead of 0,
    so the same sample gets different bytes in two runs; ``cache_samples`` (DEVICE form) keeps the
    last that many QSL indices and charges ``per_sample_s`` only for samples not among them, the
    response cache TEST04's repeated sample exposes.
    """

    name = "null"

    def __init__(
        self,
        max_batch_size: int = 1024,
        slots: int = 2,
        form: ExecutionForm = ExecutionForm.LOOP,
        fixed_s: float = 0.0,
        per_sample_s: float = 0.0,
        fail_after_batches: int | None = None,
        stall_after_batches: int | None = None,
        stall_s: float = 3600.0,
        drift: bool = False,
        cache_samples: int = 0,
        devices: int = 1,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        for label, seconds in (("fixed_s", fixed_s), ("per_sample_s", per_sample_s), ("stall_s", stall_s)):
            if not (math.isfinite(seconds) and seconds >= 0):
                raise ValueError(f"{label} must be a finite number of seconds >= 0, got {seconds}")
        if cache_samples and form is not ExecutionForm.DEVICE:
            raise ConfigError("null engine spec: cache needs form=device (only that form sees the QSL indices)")
        if devices < 1 or (devices > 1 and form is not ExecutionForm.DEVICE):
            raise ConfigError(f"null engine spec: devices={devices} needs form=device and at least 1 (the modelled "
                              f"GPUs take QSL indices as the GPU engine does)")
        for label, count in (("fail_after_batches", fail_after_batches), ("stall_after_batches", stall_after_batches)):
            if count is not None and count < 0:
                raise ValueError(f"{label} must be at least 0, got {count}")
        super().__init__()
        self.max_batch_size = max_batch_size
        self.capabilities = Capabilities(form, slots * devices, slots, batch_sizes_upto(max_batch_size),
                                         reads_input=False)
        self.devices = [ModelledDevice(i, slots) for i in range(devices)]
        self._spans: list[DeviceSpan] | None = None  # with --timeline: each batch on its modelled device
        self._clock_offset_ns = 0  # monotonic minus perf_counter, taken when tracing starts
        self.fixed_s = fixed_s
        self.per_sample_s = per_sample_s
        self.fail_after_batches = fail_after_batches
        self.stall_after_batches = stall_after_batches
        self.stall_s = stall_s
        self._closed = threading.Event()
        self._count_lock = threading.Lock()
        self._batches = 0
        self.drift = drift
        self.cache_samples = cache_samples
        self._cache: OrderedDict[int, None] = OrderedDict()  # recent QSL indices, oldest first

    def expected_latency(self, n: int) -> float:
        """Seconds the model says a batch of ``n`` takes (what ``infer`` waits, stalls aside)."""
        return self.fixed_s + self.per_sample_s * n

    @property
    def concurrency(self) -> int:
        """Batches run at once: BLOCKING's slots side by side, else one per modelled device."""
        return self.capabilities.slots if self.capabilities.form is ExecutionForm.BLOCKING else len(self.devices)

    def sustained(self, batch_size: int) -> float | None:
        """Seconds per batch when kept busy: the modelled devices side by side, or BLOCKING's slots."""
        return self.expected_latency(batch_size) / self.concurrency

    def _begin(self, batch: np.ndarray, charged: int | None = None) -> tuple[int, int, float]:
        """Validate, count the batch, apply an injected failure; returns (index, n, seconds to wait).

        ``charged``: the samples the model charges for (fewer than ``n`` when the planted cache hit).
        """
        n = check_batch(batch, self.max_batch_size, self.name)
        if self._closed.is_set():
            raise EngineError(f"{self.name} is closed")
        with self._count_lock:
            index = self._batches
            self._batches += 1
        if index == self.fail_after_batches:
            raise EngineError(f"injected failure on batch {index} (a batch of {n}) of {self.name}")
        wait = self.stall_s if index == self.stall_after_batches else self.expected_latency(n if charged is None
                                                                                            else charged)
        return index, n, wait

    def _answer(self, index: int, n: int) -> np.ndarray:
        """Class 0 for every sample, or with ``drift`` the batch's number (mod 1000)."""
        return np.full(n, index % 1000 if self.drift else 0, RESULT_DTYPE)

    def _uncached(self, indices: Sequence[int]) -> int | None:
        """With the planted cache: how many of ``indices`` it misses (then it remembers them); else None."""
        if not self.cache_samples:
            return None
        missed = 0
        with self._count_lock:
            for i in indices:
                if i in self._cache:
                    self._cache.move_to_end(i)
                    continue
                missed += 1
                self._cache[i] = None
                if len(self._cache) > self.cache_samples:
                    self._cache.popitem(last=False)
        return missed

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Zeros for ``batch`` after the modelled wait; the wait releases the GIL."""
        index, n, wait = self._begin(batch)
        start = time.perf_counter()
        # Event.wait blocks in C with the GIL released, and close() can cut it short.
        if wait > 0 and self._closed.wait(wait):
            raise EngineError(f"{self.name} was closed while batch {index} (a batch of {n}) was running")
        self._latency.record(n, time.perf_counter() - start)
        return self._answer(index, n)

    async def infer_async(self, batch: np.ndarray, charged: int | None = None) -> np.ndarray:
        """The same model as one device that runs its queued batches in turn, awaited on the loop's timers.

        Like a GPU stream, the device runs queued batches back to back in device time: a batch
        starts when the previous one ends, not when the loop noticed that (uvloop's timers round
        to 1 ms). With ``slots`` >= 2 batches queued, the modelled capacity is exactly one batch
        per ``fixed_s + per_sample_s * n``.
        """
        return await self._on_device(self.devices[0], batch, charged)

    async def _on_device(self, device: ModelledDevice, batch: np.ndarray, charged: int | None) -> np.ndarray:
        index, n, wait = self._begin(batch, charged)
        start = time.perf_counter()
        with self._count_lock:
            begins = max(start, device.free_at)
            finish = begins + wait
            device.free_at = finish
            device.start(n)
            if self._spans is not None:
                at = int(begins * 1e9) + self._clock_offset_ns
                self._spans.append(DeviceSpan(device.index, device.batches, n, n, at, at, at,
                                              int(finish * 1e9) + self._clock_offset_ns, kind="null"))
        try:
            if finish > start:
                await asyncio.sleep(finish - start)  # a stall is cut short by the pipeline's timeout (cancellation)
        finally:
            device.end(n)
        # No latency record: under load it includes the queue; batching is sized from the idle ``infer`` time.
        return self._answer(index, n)

    async def infer_indices(self, indices: Sequence[int]) -> np.ndarray:
        """DEVICE form: the least-loaded modelled device runs these samples (the pixels are never read)."""
        return await self._on_device(self._route(), self._placeholder(len(indices)), self._uncached(indices))

    def _route(self) -> ModelledDevice:
        device = least_loaded(self.devices)
        if device is None:
            raise EngineError("every device slot is busy: the pipeline sent more batches than slots")
        return device

    def infer_indices_now(self, indices: Sequence[int], timeout_s: float | None) -> np.ndarray:
        """DEVICE form, inline path: the modelled wait on the calling thread, failing past ``timeout_s``."""
        index, n, wait = self._begin(self._placeholder(len(indices)), self._uncached(indices))
        device = self._route()
        device.start(n)
        try:
            if timeout_s is not None and wait > timeout_s:
                self._closed.wait(timeout_s)
                raise EngineError(f"{self.name}: batch {index} (a batch of {n}) did not finish within "
                                  f"{timeout_s:g} s")
            if wait > 0 and self._closed.wait(wait):
                raise EngineError(f"{self.name} was closed while batch {index} (a batch of {n}) was running")
        finally:
            device.end(n)
        return self._answer(index, n)

    def trace_devices(self) -> None:
        """Keep every later batch's span on its modelled device (the timeline's device tracks)."""
        self._clock_offset_ns = time.monotonic_ns() - time.perf_counter_ns()
        self._spans = []

    def device_spans(self) -> tuple[list[DeviceSpan], int]:
        """Stop keeping spans; those kept, placed exactly (the model's own clock is the host's)."""
        spans, self._spans = self._spans or [], None
        return spans, 0

    @staticmethod
    def _placeholder(n: int) -> np.ndarray:
        """A batch of ``n`` samples for the checks ``_begin`` makes: one zero sample broadcast (never read)."""
        return np.broadcast_to(np.zeros(SAMPLE_SHAPE, SAMPLE_DTYPE), (n, *SAMPLE_SHAPE))

    def close(self) -> None:
        """Release any call stalled or waiting; later ``infer`` calls raise EngineError."""
        self._closed.set()


@dataclass
class ModelledDevice:
    """One of the null engine's modelled devices: its slots, what it has in flight, when its queue drains,
    and what it ran (the balance a multi-GPU run shows)."""

    index: int
    slots: int
    busy_batches: int = 0
    busy_samples: int = 0
    free_at: float = 0.0  # perf_counter seconds when its queued work ends
    batches: int = 0
    samples: int = 0

    @property
    def free_slots(self) -> int:
        return self.slots - self.busy_batches

    def start(self, n: int) -> None:
        self.busy_batches += 1
        self.busy_samples += n
        self.batches += 1
        self.samples += n

    def end(self, n: int) -> None:
        self.busy_batches -= 1
        self.busy_samples -= n


# spec key -> (NullEngine argument, factor from the key's unit, integer?, smallest value)
_SPEC_KEYS: dict[str, tuple[str, float, bool, int]] = {
    "fixed_us": ("fixed_s", 1e-6, False, 0),
    "per_sample_us": ("per_sample_s", 1e-6, False, 0),
    "stall_s": ("stall_s", 1.0, False, 0),
    "fail_after": ("fail_after_batches", 1, True, 0),
    "stall_after": ("stall_after_batches", 1, True, 0),
    "drift": ("drift", 1, True, 0),
    "cache": ("cache_samples", 1, True, 0),
    "devices": ("devices", 1, True, 1),
}


def parse_null_spec(text: str) -> dict[str, Any]:
    """``NullEngine`` keyword arguments from a command-line value like ``fixed_us=50,per_sample_us=2``.

    Times are given in the unit their key names (microseconds, or seconds for ``stall_s``) so a
    command line stays readable; ``form=`` picks the execution form (loop, blocking or device);
    an empty value means the defaults.
    """
    valid = ", ".join([*_SPEC_KEYS, "form"])
    result: dict[str, Any] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, raw = (s.strip() for s in item.partition("="))
        if not sep:
            raise ConfigError(f"null engine spec item {item!r} is not key=value (valid keys: {valid})")
        if key == "form":
            if "form" in result:
                raise ConfigError("null engine spec: form is given twice")
            try:
                result["form"] = ExecutionForm(raw.lower())
            except ValueError:
                raise ConfigError(f"null engine spec: form must be {', '.join(ExecutionForm)}, got {raw!r}") from None
            continue
        if key not in _SPEC_KEYS:
            raise ConfigError(f"null engine spec: unknown key {key!r} (valid keys: {valid})")
        argument, factor, integer, minimum = _SPEC_KEYS[key]
        if argument in result:
            raise ConfigError(f"null engine spec: {key} is given twice")
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < minimum:
            kind = "an integer" if integer else "a number"
            raise ConfigError(f"null engine spec: {key} must be {kind} >= {minimum}, got {raw!r}")
        result[argument] = value * factor
    return result
