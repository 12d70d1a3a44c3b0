"""The real LoadGen driving the pipeline: every scenario, both engines, both event loops."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

from asyncbench.config import (
    BatchingConfig,
    EngineConfig,
    EngineKind,
    LoadGenConfig,
    Loop,
    ProcessConfig,
    RunConfig,
    Scenario,
)
from asyncbench.data.dataset import resolve_dataset
from asyncbench.engines.sizing import open_engine
from asyncbench.harness.run import new_log_dir, run_scenario
from asyncbench.paths import REPO_ROOT, BuildPaths

# Short runs sized by query count (LoadGen's early stopping needs enough queries, not seconds).
QUICK = {
    Scenario.SINGLE_STREAM: LoadGenConfig(min_duration_s=0.3, min_query_count=8),
    Scenario.MULTI_STREAM: LoadGenConfig(min_duration_s=0.3, min_query_count=3),
    Scenario.SERVER: LoadGenConfig(min_duration_s=0.5, min_query_count=20, target_qps=20.0),
    Scenario.OFFLINE: LoadGenConfig(min_duration_s=0.3, min_query_count=1, target_qps=50.0),
}


@pytest.mark.parametrize("loop", list(Loop))
@pytest.mark.parametrize("engine", [EngineKind.NULL, EngineKind.ONNXRUNTIME])
@pytest.mark.parametrize("scenario", list(QUICK))
def test_scenario_completes_through_loadgen(calibrated: BuildPaths, tmp_path: Path, scenario: Scenario,
                                            engine: EngineKind, loop: Loop) -> None:
    cfg = RunConfig(scenario, QUICK[scenario], BatchingConfig(max_batch_size=8),
                    EngineConfig(engine, null_spec="fixed_us=200,per_sample_us=5"), process=ProcessConfig(loop))
    eng = open_engine(cfg, calibrated)
    said: list[str] = []
    try:
        eng.warmup(eng.capabilities.buckets)
        result = run_scenario(cfg, eng, resolve_dataset(calibrated), calibrated.preprocessed,
                              new_log_dir(tmp_path, cfg.scenario), said.append)
    finally:
        eng.close()
    assert result.failure is None
    assert result.summary is not None and result.summary.scenario == scenario
    assert result.summary.result in ("VALID", "INVALID")
    assert sum(result.histogram.values()) >= 1
    assert all(size <= 8 for size in result.histogram)
    assert (result.log_dir / "mlperf_log_detail.txt").is_file()
    assert (result.log_dir / "asyncbench_events.jsonl").read_text().count('"event"') >= 2
    assert any("batch sizes:" in s for s in said)
    assert (tmp_path / "latest").resolve() == result.log_dir.resolve()


def test_null_server_at_5000_qps_is_valid(calibrated: BuildPaths, tmp_path: Path) -> None:
    done = run_cli("--engine", "null", "--scenario", "Server", "--target-qps", "5000", "--min-duration", "10",
                   "--build-dir", str(calibrated.root), "--log-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "result: VALID" in done.stdout


def test_accuracy_only_prints_the_accuracy_line(calibrated: BuildPaths, tmp_path: Path) -> None:
    done = run_cli("--scenario", "Offline", "--test-mode", "AccuracyOnly", "--build-dir", str(calibrated.root),
                   "--log-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "accuracy=100.000%, good=4, total=4" in done.stdout


def test_engine_failure_ends_the_run_with_one_line(calibrated: BuildPaths, tmp_path: Path) -> None:
    # An explicit target: no pilot runs before LoadGen, so batch 15 is the run's first (warm-up ran 0-14).
    done = run_cli("--engine", "null", "--null", "fail_after=15", "--scenario", "Offline", "--max-batch-size", "4",
                   "--target-qps", "50000", "--min-duration", "0.3", "--build-dir", str(calibrated.root),
                   "--log-dir", str(tmp_path))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert "error: run failed: engine failed" in done.stdout + done.stderr
    assert list(tmp_path.glob("*/mlperf_log_summary.txt"))  # LoadGen finished and wrote its logs
    # The one line is for the user; the event log keeps the failure's type and where it was raised.
    events = tmp_path / "latest" / "asyncbench_events.jsonl"
    run_end = [json.loads(line) for line in events.read_text().splitlines() if '"run_end"' in line][-1]
    assert run_end["failure_type"] == "EngineError" and "injected failure" in run_end["failure"]
    assert run_end["traceback"].startswith("Traceback") and "null.py" in run_end["traceback"]
    assert run_end["loadgen_errors"] == []


def test_sigterm_aborts_cleanly(calibrated: BuildPaths, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "asyncbench", "--engine", "null", "--scenario", "Server", "--target-qps", "200",
           "--min-duration", "3", "--build-dir", str(calibrated.root), "--log-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("*/mlperf_log_detail.txt")) and time.monotonic() < deadline:
        time.sleep(0.1)  # wait for LoadGen to start before interrupting
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "SIGTERM" in err and "Traceback" not in err
    assert "interrupted by SIGTERM" in out + err
    assert list(tmp_path.glob("*/mlperf_log_summary.txt"))


@pytest.mark.parametrize("args, needle", [
    (["--scenario", "Nope"], "unknown scenario"),
    (["--test-mode", "Fast"], "unknown test mode"),
    (["--target-qps", "-3"], "must be greater than 0"),
    (["--engine", "magic"], "unknown engine"),
    (["--max-batch-size", "0"], "at least 1"),
    (["--engine", "tensorrt", "--precision", "fp16"], "the tensorrt engine runs int8"),
    (["--user-conf", "/no/such/user.conf"], "does not exist"),
])
def test_bad_run_arguments_are_one_line(args: list[str], needle: str) -> None:
    done = run_cli(*args)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and needle in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("engine", ["torch", "tensorrt"])
def test_a_gpu_engine_without_a_gpu_is_one_line(engine: str) -> None:
    from asyncbench.cuda.api import device_count

    if device_count():
        pytest.skip("this machine has a GPU")
    done = run_cli("--engine", engine)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "GPU" in done.stderr + done.stdout and "Traceback" not in done.stderr
