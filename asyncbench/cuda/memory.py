"""Pinned host memory, device memory and the copies between them (cuda-python).

Pinned (page-locked) host memory is what lets cudaMemcpyAsync run as a DMA that overlaps
compute; pageable memory would be staged through a driver buffer synchronously.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from asyncbench.cuda.api import call, runtime, set_device
from asyncbench.cuda.stream import Stream


class _View:
    """Array-interface holder: numpy keeps it (and so the owning buffer) alive as a view's base."""

    def __init__(self, owner: object, interface: dict[str, Any], key: str) -> None:
        self.owner = owner
        setattr(self, key, interface)


def _interface(ptr: int, dtype: np.dtype, shape: Sequence[int], nbytes: int, what: str) -> dict[str, Any]:
    count = int(np.prod(shape)) if len(shape) else 1
    if count * dtype.itemsize > nbytes:
        raise ValueError(f"a {dtype} array of shape {tuple(shape)} does not fit in {nbytes} {what} bytes")
    return {"shape": tuple(int(s) for s in shape), "typestr": dtype.str, "data": (ptr, False), "version": 3}


def _free_host(ptr: int) -> None:
    call("cudaFreeHost", ptr)


class PinnedBuffer:
    """Page-locked host memory, usable from every device (portable), with numpy views.

    Freed by close(), or when the buffer and every view of it are gone (an arena dropped on
    unload_samples releases its pages without anyone calling close).
    """

    def __init__(self, nbytes: int) -> None:
        rt = runtime()
        self.nbytes = max(1, int(nbytes))
        self.ptr: int = int(call("cudaHostAlloc", self.nbytes, rt.cudaHostAllocPortable))
        self._free = weakref.finalize(self, _free_host, self.ptr)

    def array(self, dtype: np.dtype | type, shape: Sequence[int]) -> np.ndarray:
        """A numpy view of the buffer's start; the view keeps this object referenced."""
        iface = _interface(self.ptr, np.dtype(dtype), shape, self.nbytes, "pinned")
        return np.asarray(_View(self, iface, "__array_interface__"))

    def close(self) -> None:
        """Free the memory now (views must not be used afterwards)."""
        self._free()
        self.ptr = 0


def device_array(ptr: int, dtype: np.dtype | type, shape: Sequence[int], owner: object = None) -> object:
    """An object with ``__cuda_array_interface__`` (v3) over device memory, for torch/cupy to wrap.

    ``owner`` is kept referenced by the object, so a wrapping tensor keeps the memory's owner alive.
    """
    dtype = np.dtype(dtype)
    count = int(np.prod(shape)) if len(shape) else 1
    iface = _interface(ptr, dtype, shape, count * dtype.itemsize, "device")
    iface["stream"] = None  # the caller orders work with its own streams and events
    return _View(owner, iface, "__cuda_array_interface__")


class DeviceBuffer:
    """Device memory on one GPU (a plain cudaMalloc)."""

    def __init__(self, nbytes: int, device: int) -> None:
        set_device(device)
        self.device = device
        self.nbytes = max(1, int(nbytes))
        self.ptr: int = int(call("cudaMalloc", self.nbytes))

    def close(self) -> None:
        """Free the memory."""
        if self.ptr:
            set_device(self.device)
            call("cudaFree", self.ptr)
            self.ptr = 0


def copy_async(dst: int, src: int, nbytes: int, stream: Stream) -> None:
    """One asynchronous copy in any direction (unified addressing tells the driver which)."""
    call("cudaMemcpyAsync", dst, src, nbytes, runtime().cudaMemcpyKind.cudaMemcpyDefault, stream.raw)


def copy(dst: int, src: int, nbytes: int) -> None:
    """A synchronous copy in any direction (set-up and tests, never the hot path)."""
    call("cudaMemcpy", dst, src, nbytes, runtime().cudaMemcpyKind.cudaMemcpyDefault)


def contiguous_runs(slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start slot, destination row, length) of each run of consecutive slots in a batch's order.

    A batch whose samples sit next to each other in the arena is copied with one call per run
    instead of one per sample.
    """
    slots = np.asarray(slots, dtype=np.int64)
    if slots.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    breaks = np.flatnonzero(np.diff(slots) != 1) + 1
    starts_at = np.concatenate(([0], breaks))
    lengths = np.diff(np.concatenate((starts_at, [slots.size])))
    return slots[starts_at], starts_at, lengths


class RunCopier:
    """Copies a batch's runs of fixed-size records from an arena into a slot buffer on a stream.

    Uses cudaMemcpyBatchAsync (one driver call for every run; CUDA 12.8+) when the runtime has
    it and the batch has several runs, else one cudaMemcpyAsync per run. ``batch_api`` forces
    one form, for measuring them side by side.
    """

    def __init__(self, record_bytes: int, batch_api: bool | None = None) -> None:
        rt = runtime()
        self.record_bytes = record_bytes
        # The bindings may carry the call while the driver is older than CUDA 12.8, which has it.
        has_batch = hasattr(rt, "cudaMemcpyBatchAsync") and call("cudaDriverGetVersion") >= 12080
        self.batch_api = has_batch if batch_api is None else (batch_api and has_batch)
        if batch_api and not has_batch:
            raise ValueError("cudaMemcpyBatchAsync needs CUDA 12.8 or newer in both cuda-python and the driver")
        if self.batch_api:
            attrs = rt.cudaMemcpyAttributes()
            attrs.srcAccessOrder = rt.cudaMemcpySrcAccessOrder.cudaMemcpySrcAccessOrderStream
            self._attrs = [attrs]

    def copy(self, dst_base: int, src_base: int, slots: np.ndarray, stream: Stream) -> int:
        """Enqueue the copies of ``slots`` (arena rows, batch order) to rows 0.. of ``dst_base``; returns calls made."""
        starts, rows, lengths = contiguous_runs(slots)
        size = self.record_bytes
        srcs = (src_base + starts * size).tolist()
        dsts = (dst_base + rows * size).tolist()
        sizes = (lengths * size).tolist()
        if self.batch_api and len(srcs) > 1:
            call("cudaMemcpyBatchAsync", dsts, srcs, sizes, len(srcs), self._attrs, [0], 1, stream.raw)
            return 1
        kind = runtime().cudaMemcpyKind.cudaMemcpyDefault
        for d, s, n in zip(dsts, srcs, sizes, strict=True):
            call("cudaMemcpyAsync", d, s, n, kind, stream.raw)
        return len(srcs)
