"""The GPU engine under the real LoadGen: every scenario, both loops, failures, and several GPUs."""

from __future__ import annotations

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
    Loop,
    ProcessConfig,
    RunConfig,
    Scenario,
    TestMode,
    TorchCompile,
)
from asyncbench.cuda.api import device_count
from asyncbench.data.dataset import resolve_dataset
from asyncbench.engines.gpu import GpuEngine
from asyncbench.engines.sizing import open_engine
from asyncbench.harness.run import new_log_dir, run_scenario
from asyncbench.paths import BuildPaths

QUICK = {
    Scenario.SINGLE_STREAM: LoadGenConfig(min_duration_s=0.5, min_query_count=64),
    Scenario.MULTI_STREAM: LoadGenConfig(min_duration_s=0.5, min_query_count=64),
    Scenario.SERVER: LoadGenConfig(min_duration_s=1.0, min_query_count=2000, target_qps=2000.0),
    # Offline is INVALID when it finishes before min_duration: expect more than the GPU does.
    Scenario.OFFLINE: LoadGenConfig(min_duration_s=0.5, min_query_count=1, target_qps=200000.0),
}
TORCH = EngineConfig(EngineKind.TORCH, torch_compile=TorchCompile.NONE)
UP_TO_64 = BatchingConfig(max_batch_size=64)


@pytest.fixture(scope="module")
def engine(calibrated: BuildPaths) -> GpuEngine:
    torch_or_skip()
    eng = open_engine(RunConfig(batching=UP_TO_64, engine=TORCH), calibrated)
    assert isinstance(eng, GpuEngine)
    eng.warmup(eng.capabilities.buckets)
    yield eng
    eng.close()


@pytest.mark.parametrize("loop", list(Loop))
@pytest.mark.parametrize("scenario", list(QUICK))
def test_every_scenario_on_the_gpu(calibrated: BuildPaths, engine: GpuEngine, tmp_path: Path, scenario: Scenario,
                                   loop: Loop) -> None:
    cfg = RunConfig(scenario, QUICK[scenario], UP_TO_64, TORCH, process=ProcessConfig(loop))
    said: list[str] = []
    result = run_scenario(cfg, engine, resolve_dataset(calibrated), calibrated.preprocessed,
                              new_log_dir(tmp_path, cfg.scenario), said.append)
    assert result.failure is None, said
    assert result.summary is not None, said
    if scenario in (Scenario.SERVER, Scenario.OFFLINE):
        assert result.summary.result == "VALID", said
    else:  # sub-second latency-bound runs: LoadGen may still ask for more queries; all must complete
        assert result.summary.result in ("VALID", "INVALID"), said
    sizes = set(result.histogram)
    assert sizes == {1} if scenario == "SingleStream" else sizes <= set(range(1, 65))
    assert result.record["batching"]["inline"] is (scenario in (Scenario.SINGLE_STREAM, Scenario.MULTI_STREAM))
    if scenario == "MultiStream":
        assert sizes == {8}  # a query's 8 samples go to the GPU as one batch


def test_accuracy_run_on_the_gpu(calibrated: BuildPaths, engine: GpuEngine, tmp_path: Path) -> None:
    from asyncbench.data.dataset import read_map
    from asyncbench.loadgen.accuracy import compute_accuracy, load_accuracy_log

    cfg = RunConfig(Scenario.OFFLINE, LoadGenConfig(test_mode=TestMode.ACCURACY_ONLY), UP_TO_64, TORCH)
    dataset = resolve_dataset(calibrated)
    result = run_scenario(cfg, engine, dataset, calibrated.preprocessed,
                              new_log_dir(tmp_path, cfg.scenario), lambda _: None)
    assert result.failure is None
    acc = compute_accuracy(load_accuracy_log(result.log_dir / "mlperf_log_accuracy.json"),
                           [e.label for e in read_map(dataset.val_map)], source="test")
    assert acc.line().startswith("accuracy=100.000%, good=4, total=4")


def test_a_failing_launch_completes_every_sample(calibrated: BuildPaths, engine: GpuEngine, tmp_path: Path) -> None:
    worker = engine.workers[0]
    slots = list(worker._free)
    launches = [s.launch for s in slots]
    count = {"n": 0}

    def failing(real):  # the real launch, except that the 20th batch raises as a CUDA error would
        def launch(bucket: int) -> None:
            count["n"] += 1
            if count["n"] == 20:
                raise RuntimeError("injected launch failure")
            real(bucket)
        return launch

    for s in slots:
        s.launch = failing(s.launch)
    try:
        cfg = RunConfig(Scenario.SERVER, LoadGenConfig(min_duration_s=1.0, min_query_count=500, target_qps=500.0),
                        BatchingConfig(max_batch_size=8), TORCH)
        result = run_scenario(cfg, engine, resolve_dataset(calibrated), calibrated.preprocessed,
                              new_log_dir(tmp_path, cfg.scenario),
                              lambda _: None)
    finally:
        for s, real in zip(slots, launches, strict=True):
            s.launch = real
    assert result.failure is not None and "injected launch failure" in str(result.failure)
    assert isinstance(result.failure.__cause__, RuntimeError)
    assert (result.log_dir / "mlperf_log_summary.txt").is_file()  # LoadGen finished: every sample completed


def test_two_gpus_share_an_offline_run(calibrated: BuildPaths, tmp_path: Path) -> None:
    torch_or_skip()
    if device_count() < 2:
        pytest.skip("needs two GPUs")
    cfg = RunConfig(Scenario.OFFLINE, LoadGenConfig(min_duration_s=1.0, min_query_count=1, target_qps=400000.0),
                    UP_TO_64, TORCH, GpuConfig(count=2))
    eng = open_engine(cfg, calibrated)
    assert isinstance(eng, GpuEngine)
    try:
        assert len(eng.workers) == 2 and eng.device == "cuda:0,cuda:1"
        eng.warmup([1, 64])
        result = run_scenario(cfg, eng, resolve_dataset(calibrated), calibrated.preprocessed,
                              new_log_dir(tmp_path, cfg.scenario),
                              lambda _: None)
        batches = [w.batches_done for w in eng.workers]
    finally:
        eng.close()
    assert result.failure is None and result.summary.result == "VALID"
    assert min(batches) > 0.3 * sum(batches), batches  # least-loaded dispatch used both


@pytest.mark.parametrize("scenario", [Scenario.SERVER, Scenario.SINGLE_STREAM])
def test_the_timeline_has_every_batch_from_the_gpus_own_events(calibrated: BuildPaths, engine: GpuEngine,
                                                                tmp_path: Path, scenario: Scenario) -> None:
    import json

    trace = tmp_path / "timeline.json"
    cfg = RunConfig(scenario, QUICK[scenario], UP_TO_64, TORCH)
    result = run_scenario(cfg, engine, resolve_dataset(calibrated), calibrated.preprocessed,
                          new_log_dir(tmp_path, cfg.scenario), lambda _: None, timeline_path=trace)
    assert result.failure is None
    document = json.loads(trace.read_text())
    batches = sum(result.histogram.values())
    assert document["otherData"]["batches"] == document["otherData"]["device_batches"] == batches
    assert document["otherData"]["device_clock_uncertainty_us"] < 100
    events = document["traceEvents"]
    host = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if str(e.get("name")).startswith("execute"))
    device = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if str(e.get("name")).startswith("compute"))
    copies = [e for e in events if str(e.get("name")).startswith("copy in")]
    assert len(device) == len(copies) == batches
    slack_us = document["otherData"]["device_clock_uncertainty_us"] + 50
    # The GPU's work lies inside the host's view of each batch (enqueue to result seen), within the clock slack.
    for (h0, h1), (d0, d1) in zip(host, device, strict=True):
        assert h0 - slack_us <= d0 <= d1 <= h1 + slack_us, ((h0, h1), (d0, d1))
    assert all(not w._quarantine and w._trace is None for w in engine.workers)


def test_inline_blocking_form_matches_the_awaited_form(calibrated: BuildPaths, engine: GpuEngine) -> None:
    import asyncio

    from asyncbench.data.dataset import VAL_LAYOUT, read_map

    dataset = resolve_dataset(calibrated)
    names = [e.name for e in read_map(dataset.val_map)]
    arena = engine.make_arena(dataset.preprocessed_dir(calibrated.preprocessed, VAL_LAYOUT), names)
    arena.load(range(len(names)))
    for indices in ([3], [5, 1, 7, 2, 0, 9, 4, 8], list(range(40))):
        now = engine.infer_indices_now(indices, 10.0)
        awaited = asyncio.run(engine.infer_indices(indices))
        assert np.array_equal(now, awaited)
