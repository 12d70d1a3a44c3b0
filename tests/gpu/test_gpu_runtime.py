"""The GPU engine under the real LoadGen: every scenario, both loops, failures, and several GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest
from gpu_support import torch_or_skip

from asyncbench.config import RunConfig
from asyncbench.cuda.api import device_count
from asyncbench.data.dataset import resolve_dataset
from asyncbench.engines.factory import create_engine
from asyncbench.engines.gpu import GpuEngine
from asyncbench.paths import BuildPaths
from asyncbench.runtime.runner import batch_sizes_upto, new_log_dir, run_scenario

QUICK = {
    "SingleStream": {"min_duration_s": 0.5, "min_query_count": 64},
    "MultiStream": {"min_duration_s": 0.5, "min_query_count": 64},
    "Server": {"min_duration_s": 1.0, "min_query_count": 2000, "target_qps": 2000.0},
    # Offline is INVALID when it finishes before min_duration: expect more than the GPU does.
    "Offline": {"min_duration_s": 0.5, "min_query_count": 1, "target_qps": 200000.0},
}


@pytest.fixture(scope="module")
def engine(calibrated: BuildPaths) -> GpuEngine:
    torch_or_skip()
    eng = create_engine(RunConfig(engine="torch", torch_compile="none", max_batch_size=64), calibrated)
    eng.warmup(batch_sizes_upto(eng.max_batch_size))
    yield eng
    eng.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("scenario", list(QUICK))
def test_every_scenario_on_the_gpu(calibrated: BuildPaths, engine: GpuEngine, tmp_path: Path, scenario: str,
                                   loop: str) -> None:
    cfg = RunConfig(scenario=scenario, engine="torch", loop=loop, max_batch_size=64, **QUICK[scenario])
    said: list[str] = []
    result = run_scenario(cfg, engine, resolve_dataset(calibrated), calibrated.preprocessed,
                              new_log_dir(tmp_path, cfg.scenario), said.append)
    assert result.failure is None and result.exit_code == 0, said
    assert result.summary is not None, said
    if scenario in ("Server", "Offline"):
        assert result.summary.result == "VALID", said
    else:  # sub-second latency-bound runs: LoadGen may still ask for more queries; all must complete
        assert result.summary.result in ("VALID", "INVALID"), said
    sizes = set(result.histogram)
    assert sizes == {1} if scenario == "SingleStream" else sizes <= set(range(1, 65))
    if scenario == "MultiStream":
        assert sizes == {8}  # a query's 8 samples go to the GPU as one batch


def test_accuracy_run_on_the_gpu(calibrated: BuildPaths, engine: GpuEngine, tmp_path: Path) -> None:
    from asyncbench.data.dataset import read_map
    from asyncbench.loadgen.accuracy import compute_accuracy, load_accuracy_log

    cfg = RunConfig(scenario="Offline", engine="torch", test_mode="AccuracyOnly", max_batch_size=64)
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
        cfg = RunConfig(scenario="Server", engine="torch", max_batch_size=8, min_duration_s=1.0,
                        min_query_count=500, target_qps=500.0)
        result = run_scenario(cfg, engine, resolve_dataset(calibrated), calibrated.preprocessed,
                              new_log_dir(tmp_path, cfg.scenario),
                              lambda _: None)
    finally:
        for s, real in zip(slots, launches, strict=True):
            s.launch = real
    assert result.exit_code == 1 and "injected launch failure" in (result.failure or "")
    assert (result.log_dir / "mlperf_log_summary.txt").is_file()  # LoadGen finished: every sample completed


def test_two_gpus_share_an_offline_run(calibrated: BuildPaths, tmp_path: Path) -> None:
    torch_or_skip()
    if device_count() < 2:
        pytest.skip("needs two GPUs")
    cfg = RunConfig(scenario="Offline", engine="torch", torch_compile="none", max_batch_size=64, gpus=2,
                    min_duration_s=1.0, min_query_count=1, target_qps=400000.0)
    eng = create_engine(cfg, calibrated)
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
