"""Several inference and copy streams per GPU: same top-1 under concurrency, real LoadGen runs, timeline tracks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from gpu_support import torch_or_skip

from asyncbench.config import (
    BatchingConfig,
    EngineConfig,
    EngineKind,
    GpuConfig,
    LoadGenConfig,
    RunConfig,
    Scenario,
    TorchCompile,
)
from asyncbench.data.dataset import VAL_LAYOUT, read_map, resolve_dataset
from asyncbench.engines.gpu import GpuEngine
from asyncbench.engines.sizing import open_engine
from asyncbench.harness.run import new_log_dir, run_scenario
from asyncbench.paths import BuildPaths

TORCH = EngineConfig(EngineKind.TORCH, torch_compile=TorchCompile.NONE)
UP_TO_64 = BatchingConfig(max_batch_size=64)
STREAMS = GpuConfig(inference_streams=3, copy_streams=2)


@pytest.fixture(scope="module")
def engine(calibrated: BuildPaths) -> GpuEngine:
    torch_or_skip()
    eng = open_engine(RunConfig(batching=UP_TO_64, engine=TORCH, gpu=STREAMS), calibrated)
    assert isinstance(eng, GpuEngine)
    eng.warmup(eng.capabilities.buckets)
    yield eng
    eng.close()


def _loaded_arena(engine: GpuEngine, calibrated: BuildPaths) -> int:
    dataset = resolve_dataset(calibrated)
    names = [e.name for e in read_map(dataset.val_map)]
    arena = engine.make_arena(dataset.preprocessed_dir(calibrated.preprocessed, VAL_LAYOUT), names)
    arena.load(range(len(names)))
    return len(names)


def test_slots_spread_over_the_streams(engine: GpuEngine) -> None:
    worker = engine.workers[0]
    assert len(worker.compute_streams) == 3 and len(worker.copy_streams) == 2
    assert engine.capabilities.slots_per_device == 5  # one per stream, one copying in, one coming back
    assert sorted(s.lane for s in worker._slots) == [0, 0, 1, 1, 2]


def test_concurrent_batches_on_every_stream_give_the_serial_top1(engine: GpuEngine, calibrated: BuildPaths) -> None:
    """Batches replaying at once on three streams must not share activation memory (one graph pool per stream)."""
    total = _loaded_arena(engine, calibrated)
    rng = np.random.default_rng(7)
    batches = [rng.integers(0, total, int(rng.integers(1, 65))).tolist() for _ in range(60)]
    serial = [engine.infer_indices_now(b, 10.0) for b in batches]

    async def concurrent() -> list[np.ndarray]:
        slots = engine.capabilities.slots_per_device
        gate = asyncio.Semaphore(slots)  # the pipeline never has more batches in flight than slots

        async def one(b: list[int]) -> np.ndarray:
            async with gate:
                return await engine.infer_indices(b)
        return await asyncio.gather(*(one(b) for b in batches))

    together = asyncio.run(concurrent())
    for b, s, t in zip(batches, serial, together, strict=True):
        assert np.array_equal(s, t), b
    worker = engine.workers[0]
    assert worker.busy_batches == 0 and worker._lane_busy == [0, 0, 0]


@pytest.mark.parametrize("scenario", [Scenario.SERVER, Scenario.SINGLE_STREAM])
def test_loadgen_runs_with_three_streams_and_a_track_each(calibrated: BuildPaths, engine: GpuEngine, tmp_path: Path,
                                                         scenario: Scenario) -> None:
    loadgen = (LoadGenConfig(min_duration_s=1.0, min_query_count=4000, target_qps=4000.0)
               if scenario is Scenario.SERVER else LoadGenConfig(min_duration_s=0.5, min_query_count=64))
    cfg = RunConfig(scenario, loadgen, UP_TO_64, TORCH, STREAMS)
    trace = tmp_path / "timeline.json"
    said: list[str] = []
    result = run_scenario(cfg, engine, resolve_dataset(calibrated), calibrated.preprocessed,
                          new_log_dir(tmp_path, cfg.scenario), said.append, timeline_path=trace)
    assert result.failure is None, said
    assert result.summary is not None and result.summary.result in ("VALID", "INVALID"), said
    if scenario is Scenario.SERVER:
        assert result.summary.result == "VALID", said
    assert result.record["samples"]["issued"] == result.record["samples"]["completed"]
    document = json.loads(trace.read_text())
    names = [e["args"]["name"] for e in document["traceEvents"] if e.get("name") == "thread_name"]
    computes = {e["tid"] for e in document["traceEvents"] if str(e.get("name")).startswith("compute")}
    assert document["otherData"]["device_batches"] == sum(result.histogram.values())
    assert any(n.startswith("cuda:0 inference stream") for n in names)
    if scenario is Scenario.SERVER:  # under load, the least loaded stream spreads batches over all three
        assert len(computes) == 3, names
