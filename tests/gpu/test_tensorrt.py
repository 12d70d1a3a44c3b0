"""TensorRTBackend on a real GPU: the engine cache is reused, and top-1 matches onnxruntime's INT8 engine."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from asyncbench.cuda.api import call, device_count, runtime
from asyncbench.cuda.memory import DeviceBuffer
from asyncbench.cuda.stream import Stream
from asyncbench.data.dataset import VAL_LAYOUT, read_map, resolve_dataset
from asyncbench.engines.onnxruntime_engine import OnnxRuntimeEngine
from asyncbench.engines.tensorrt_engine import TensorRTBackend
from asyncbench.model.calibrate import ensure_signed_int8_model
from asyncbench.paths import BuildPaths

pytest.importorskip("tensorrt")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(device_count() == 0, reason="needs an NVIDIA GPU")]

BUCKETS = (1, 8)
SAMPLE_BYTES = 224 * 224 * 4


@pytest.fixture(scope="module")
def first_build(calibrated: BuildPaths, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """A fresh engine cache holding the engine built once for BUCKETS, and how long that took."""
    cache = tmp_path_factory.mktemp("engines")
    said: list[str] = []
    start = time.perf_counter()
    TensorRTBackend(ensure_signed_int8_model(calibrated), 0, BUCKETS, cache, log=said.append).close()
    seconds = time.perf_counter() - start
    assert any(line.startswith("tensorrt: built") for line in said), said
    return cache, seconds


def test_cached_engine_is_reused(calibrated: BuildPaths, first_build: tuple[Path, float]) -> None:
    cache, first = first_build
    files = sorted(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".engine"
    before = (files[0].stat().st_mtime_ns, files[0].read_bytes())
    said: list[str] = []
    start = time.perf_counter()
    backend = TensorRTBackend(ensure_signed_int8_model(calibrated), 0, BUCKETS, cache, log=said.append)
    second = time.perf_counter() - start
    try:
        assert backend.engine_path == files[0]
        assert backend.buckets() == BUCKETS and (backend.name, backend.precision) == ("tensorrt", "int8")
    finally:
        backend.close()
    assert sorted(cache.iterdir()) == files
    assert (files[0].stat().st_mtime_ns, files[0].read_bytes()) == before
    assert any("cached engine" in line for line in said) and not any("built" in line for line in said), said
    assert second < first / 2, f"loading took {second:.1f} s, building {first:.1f} s"


def _copy(dst: int, src: int, nbytes: int, direction: str) -> None:
    kind = getattr(runtime().cudaMemcpyKind, f"cudaMemcpy{direction}")
    call("cudaMemcpy", dst, src, nbytes, kind)


def test_top1_matches_onnxruntime(calibrated: BuildPaths, first_build: tuple[Path, float]) -> None:
    dataset = resolve_dataset(calibrated)
    folder = dataset.preprocessed_dir(calibrated.preprocessed, VAL_LAYOUT)
    x = np.stack([np.load(folder / f"{e.name}.npy") for e in read_map(dataset.val_map)])[:100]
    with OnnxRuntimeEngine(ensure_signed_int8_model(calibrated), max_batch_size=len(x)) as cpu:
        expected = cpu.infer(x)
    rows = max(BUCKETS)
    backend = TensorRTBackend(ensure_signed_int8_model(calibrated), 0, BUCKETS, first_build[0], log=lambda _: None)
    stream = Stream(0)
    inputs, outputs = DeviceBuffer(rows * SAMPLE_BYTES, 0), DeviceBuffer(rows * 4, 0)
    got, want = [], []
    # Every sample through bucket 8 (the last batch of 4 leaves stale rows behind it), then a few alone.
    plan = [(np.arange(i, min(i + rows, len(x))), rows) for i in range(0, len(x), rows)]
    plan += [(np.array([i]), 1) for i in range(rows)]
    try:
        launch = backend.bind(inputs.ptr, outputs.ptr, stream)
        for index, bucket in plan:
            batch = np.ascontiguousarray(x[index])
            _copy(inputs.ptr, batch.ctypes.data, batch.nbytes, "HostToDevice")
            launch(bucket)
            stream.synchronize()
            top1 = np.empty(rows, np.int32)
            _copy(top1.ctypes.data, outputs.ptr, top1.nbytes, "DeviceToHost")
            got.append(top1[:len(index)])
            want.append(expected[index])
    finally:
        backend.close()
        inputs.close()
        outputs.close()
        stream.close()
    got_all, want_all = np.concatenate(got), np.concatenate(want)
    assert len(got_all) == len(x) + rows
    assert got_all.min() >= 0 and got_all.max() <= 999
    agreement = float(np.mean(got_all == want_all))
    assert agreement >= 0.97, f"TensorRT/onnxruntime INT8 top-1 agreement {agreement:.2%}"
