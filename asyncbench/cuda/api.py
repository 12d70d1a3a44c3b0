"""cuda-python's runtime API behind one checked entry point.

Every cuda-python call returns ``(err, *values)``; ``call`` raises CudaError naming the call and
the driver's own error text, so a failure never passes silently as a wrong answer later. The
module imports cuda-python lazily: a CPU-only install can import asyncbench without it working.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from types import ModuleType
from typing import Any


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and CUDA's error."""


@functools.cache
def runtime() -> ModuleType:
    """The cuda-python runtime module (``cuda.bindings.runtime``).

    cuda-python 12.9.1 or newer: earlier bindings hold the GIL while a call blocks, so waiting on
    an event would stall the event loop and LoadGen's issue thread.
    """
    try:
        from cuda.bindings import runtime as rt
    except ImportError:
        raise CudaError("cuda-python >= 12.9.1 is not installed: pip install 'cuda-python>=12.9.1'") from None
    return rt


def _describe(err: Any) -> str:
    rt = runtime()
    name_err, name = rt.cudaGetErrorName(err)
    text_err, text = rt.cudaGetErrorString(err)
    name = name.decode() if isinstance(name, bytes) else str(name)
    text = text.decode() if isinstance(text, bytes) else str(text)
    return f"{name}: {text}" if name_err == rt.cudaError_t.cudaSuccess else f"error {int(err)}"


def call(name: str, *args: Any) -> Any:
    """Run ``cudart.<name>(*args)``; raise CudaError unless it returned cudaSuccess.

    Returns None, the single value, or the tuple of values the call produces.
    """
    rt = runtime()
    result = getattr(rt, name)(*args)
    err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if err != rt.cudaError_t.cudaSuccess:
        raise CudaError(f"{name} failed: {_describe(err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def device_count() -> int:
    """CUDA devices visible to this process (CUDA_VISIBLE_DEVICES applies).

    0 when the machine has no GPU or no NVIDIA driver; any other failure (a driver older than
    the bindings, say) raises CudaError, so a broken install is reported rather than taken for
    a machine without a GPU.
    """
    try:
        rt = runtime()
    except CudaError:
        return 0
    err, count = rt.cudaGetDeviceCount()
    if err == rt.cudaError_t.cudaSuccess:
        return int(count)
    if err == rt.cudaError_t.cudaErrorNoDevice:
        return 0
    if err == rt.cudaError_t.cudaErrorInsufficientDriver:
        _, driver = rt.cudaDriverGetVersion()
        if not driver:  # no NVIDIA driver at all: a CPU machine
            return 0
        raise CudaError(f"the NVIDIA driver supports CUDA {driver // 1000}.{driver % 1000 // 10}, older than these "
                        f"cuda-python bindings need: pip install 'cuda-python=={driver // 1000}.*'")
    raise CudaError(f"cudaGetDeviceCount failed: {_describe(err)}")


def set_device(device: int) -> None:
    """Make ``device`` current for the calling thread (the runtime API's context is per thread)."""
    call("cudaSetDevice", device)


def device_name(device: int) -> str:
    """The GPU's marketing name plus compute capability, e.g. ``NVIDIA H200 (sm_90)``."""
    props = call("cudaGetDeviceProperties", device)
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return f"{name.rstrip(chr(0))} (sm_{props.major}{props.minor})"


@contextlib.contextmanager
def profiler_range() -> Iterator[None]:
    """cudaProfilerStart / cudaProfilerStop around the block: `nsys profile --capture-range=cudaProfilerApi`
    then records only the LoadGen test, not preparation, compilation or warm-up."""
    call("cudaProfilerStart")
    try:
        yield
    finally:
        call("cudaProfilerStop")
