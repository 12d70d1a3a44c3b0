"""The fault catalogue in docs/faults.md ("What a run does when something goes wrong"): one test per row.

Each runs the CLI as a user would (a subprocess), so what is checked is what a user sees: the
lines, the exit status and what is left in the log folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from asyncbench.config import LoadGenConfig, RunConfig, Scenario
from asyncbench.data.manifest import MANIFEST, read_manifest
from asyncbench.data.qsl import SampleArena
from asyncbench.errors import ConfigError, UserError
from asyncbench.harness.plan import ABORT_QUERIES, loadgen_bytes, plan_run
from asyncbench.harness.run import FAILED_MARKER, read_results
from asyncbench.loadgen.logs import detail_values, parse_detail, parse_summary
from asyncbench.loadgen.settings import read_conf
from asyncbench.paths import REPO_ROOT, BuildPaths

US = 1e-6
# An Offline run that is VALID on any machine: the modelled engine (one device at 50k samples/s) is slower than
# the expected QPS, so LoadGen's single query lasts longer than the minimum duration.
OFFLINE_VALID = ("--engine", "null", "--null", "per_sample_us=20", "--scenario", "Offline", "--target-qps", "200000",
                 "--min-duration", "0.5")


def _cli(build: BuildPaths, logs: Path, *args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--build-dir", str(build.root), "--log-dir", str(logs), cwd=cwd)


def _detail(logs: Path) -> dict[str, object]:
    (folder,) = [p for p in logs.iterdir() if p.is_dir() and not p.is_symlink()]
    return detail_values(parse_detail(folder / "mlperf_log_detail.txt"))


def _one_error_line(done: subprocess.CompletedProcess[str], needle: str) -> None:
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


# -- settings ------------------------------------------------------------------------------------------------------

def test_user_conf_values_are_the_effective_ones(calibrated: BuildPaths, tmp_path: Path) -> None:
    conf = tmp_path / "user.conf"
    conf.write_text("*.Server.target_qps = 3000\nmobilenet.Server.min_duration = 1500\n"
                    "mobilenet.Server.performance_sample_count_override = 64\n")
    done = _cli(calibrated, tmp_path / "logs", "--engine", "null", "--scenario", "Server", "--user-conf", str(conf))
    assert done.returncode == 0, done.stderr
    values = _detail(tmp_path / "logs")
    assert (values["effective_target_qps"], values["effective_min_duration_ms"]) == (3000, 1500)
    assert values["effective_performance_sample_count"] == 64
    assert "target_qps 3000 (user.conf)" in done.stdout and "min_duration_ms 1500" in done.stdout
    # Only an explicit command-line option beats user.conf.
    done = _cli(calibrated, tmp_path / "logs2", "--engine", "null", "--scenario", "Server", "--user-conf", str(conf),
                "--target-qps", "2000")
    assert _detail(tmp_path / "logs2")["effective_target_qps"] == 2000
    assert "target_qps 2000 (command line)" in done.stdout


def test_misspelled_user_conf_keys_are_named_and_strict_refuses_them(calibrated: BuildPaths, tmp_path: Path) -> None:
    conf = tmp_path / "user.conf"
    conf.write_text("*.Server.target_qsp = 3000\nmobilenet.Sever.min_duration = 1500\nresnet50.Server.target_qps = 9\n")
    problems = read_conf(conf).problems("mobilenet")
    assert any("target_qsp (unknown key; did you mean target_qps?)" in p for p in problems)
    assert any("unknown scenario 'Sever'" in p for p in problems)
    assert any("for model 'resnet50'" in p for p in problems)
    done = _cli(calibrated, tmp_path / "logs", "--engine", "null", "--scenario", "Server", "--target-qps", "500",
                "--min-duration", "0.5", "--user-conf", str(conf))
    assert done.returncode == 0 and "user.conf keys LoadGen ignores: *.Server.target_qsp" in done.stdout
    done = _cli(calibrated, tmp_path / "logs", "--engine", "null", "--user-conf", str(conf), "--strict")
    assert done.returncode == 2
    _one_error_line(done, "LoadGen would ignore *.Server.target_qsp")


def test_a_user_conf_value_that_is_not_a_number_is_a_usage_error(tmp_path: Path) -> None:
    conf = tmp_path / "user.conf"
    conf.write_text("mobilenet.Server.target_qps = fast\n")
    done = run_cli("--engine", "null", "--user-conf", str(conf), "--log-dir", str(tmp_path / "logs"))
    assert done.returncode == 2
    _one_error_line(done, "line 1: mobilenet.Server.target_qps = 'fast' is not a finite number")


def test_a_stray_audit_config_is_named_and_ignored(calibrated: BuildPaths, tmp_path: Path) -> None:
    (tmp_path / "audit.config").write_text("*.Server.target_qps = 1\n*.*.mode = 1\n")
    args = ("--engine", "null", "--scenario", "Server", "--target-qps", "500", "--min-duration", "0.5")
    done = _cli(calibrated, tmp_path / "logs", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "./audit.config is present and was ignored" in done.stdout
    values = _detail(tmp_path / "logs")
    assert values["effective_target_qps"] == 500 and values["effective_test_mode"] == "PerformanceOnly"
    # Asked for, it is applied, and the report shows what LoadGen really ran.
    applied = tmp_path / "speed.config"
    applied.write_text("*.Server.target_qps = 400\n")
    done = _cli(calibrated, tmp_path / "logs2", *args, "--audit-config", str(applied), cwd=tmp_path)
    assert _detail(tmp_path / "logs2")["effective_target_qps"] == 400
    assert "LoadGen ran with target_qps 400, not the 500.0 asked for" in done.stdout


@pytest.mark.parametrize("args, needle", [
    (["--target-qps", "inf"], "'inf' is not a finite number"),
    (["--target-qps", "nan"], "'nan' is not a finite number"),
    (["--scenario", "Server", "--target-qps", "1e12"], "would make LoadGen generate"),
    (["--performance-sample-count", "1000000"], "more than the 104 samples of this dataset"),
    (["--max-batch-size", "100000"], "--max-batch-size 100000 is more than the 104 samples LoadGen loads"),
])
def test_impossible_numbers_are_refused_before_work(calibrated: BuildPaths, tmp_path: Path, args: list[str],
                                                    needle: str) -> None:
    done = _cli(calibrated, tmp_path / "logs", "--engine", "null", *args)
    assert done.returncode == 2
    _one_error_line(done, needle)


# -- memory --------------------------------------------------------------------------------------------------------

def test_derived_values_keep_loadgens_queries_bounded() -> None:
    fast = {1: 2 * US, 8: 3 * US}  # a null engine's warm-up: microseconds
    for scenario in ("SingleStream", "MultiStream"):
        plan = plan_run(RunConfig(Scenario(scenario)), 104, None, fast)
        key = "single_stream" if scenario == "SingleStream" else "multistream"
        expected_s = getattr(plan.options, f"{key}_expected_latency_ms") / 1e3
        duration = plan.options.min_duration_s
        assert duration is not None and 2 * duration / expected_s <= ABORT_QUERIES[scenario] * 1.001  # generated
        assert "bounded" in plan.sources[f"{key}_expected_latency_ms"]
    server = plan_run(RunConfig(Scenario.SERVER, LoadGenConfig(memory_mb=100)), 104, 5e6, fast)
    assert server.sources["target_qps"] == "memory bound"
    assert loadgen_bytes(Scenario.SERVER, server.options.target_qps * 10) <= 100e6 * 1.001
    with pytest.raises(ConfigError, match="more than the .* GB of memory available"):
        plan_run(RunConfig(Scenario.OFFLINE, LoadGenConfig(target_qps=1e9)), 104, None, fast, available=8 << 30)


# The peak resident memory of the CLI process itself (VmHWM: ru_maxrss would carry the parent's over exec).
PEAK_RSS = """
import runpy, sys
sys.argv[0] = "asyncbench"
try:
    runpy.run_module("asyncbench", run_name="__main__")
finally:
    print("VmHWM_kB", next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
"""


@pytest.mark.parametrize("scenario", ["SingleStream", "MultiStream", "Server", "Offline"])
def test_default_null_runs_stay_under_2_gb(calibrated: BuildPaths, tmp_path: Path, scenario: str) -> None:
    cmd = [sys.executable, "-c", PEAK_RSS, "--engine", "null", "--scenario", scenario,
           "--build-dir", str(calibrated.root), "--log-dir", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert "Traceback" not in done.stderr, done.stderr
    peak_kb = int(done.stdout.rsplit("VmHWM_kB", 1)[1].split()[0])
    assert peak_kb < 2_000_000, f"{scenario}: {peak_kb / 1e6:.2f} GB"


# -- stopping ------------------------------------------------------------------------------------------------------

def _signal_when(cmd: list[str], started: Callable[[], bool], sig: int, after_s: float,
                 again_after_s: float | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    """Start ``cmd``, wait until ``started()``, then ``after_s``, and signal it (twice with ``again_after_s``)."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not started() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(after_s)
    sent = time.monotonic()
    proc.send_signal(sig)
    if again_after_s is not None:
        time.sleep(again_after_s)
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), time.monotonic() - sent


def _interrupt(build: BuildPaths, logs: Path, sig: int, after_s: float, *args: str,
               second: bool = False, again_after_s: float = 0.2) -> tuple[subprocess.CompletedProcess[str], float]:
    cmd = [sys.executable, "-m", "asyncbench", *args, "--build-dir", str(build.root), "--log-dir", str(logs)]
    return _signal_when(cmd, lambda: bool(list(logs.glob("*/mlperf_log_detail.txt"))), sig, after_s,
                        again_after_s if second else None)


@pytest.mark.parametrize("scenario, sig", [("Server", signal.SIGINT), ("SingleStream", signal.SIGTERM),
                                           ("MultiStream", signal.SIGINT), ("Offline", signal.SIGTERM)])
def test_a_signal_ends_the_run_within_2_s_with_logs_and_no_valid(calibrated: BuildPaths, tmp_path: Path,
                                                                  scenario: str, sig: int) -> None:
    args = ["--engine", "null", "--scenario", scenario, "--min-duration", "20"]
    if scenario == "Server":
        args += ["--target-qps", "5000"]
    if scenario == "Offline":
        args += ["--null", "fixed_us=20000", "--max-batch-size", "64"]
    done, took = _interrupt(calibrated, tmp_path, sig, 3.0, *args)
    assert took < 2.0, f"{scenario} took {took:.2f} s after the signal"
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"interrupted by {signal.Signals(sig).name}" in done.stdout
    assert "result: FAILED" in done.stdout and "result: VALID" not in done.stdout
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.is_symlink()]
    assert (folder / "mlperf_log_summary.txt").is_file() and (folder / FAILED_MARKER).is_file()
    events = [json.loads(line) for line in (folder / "asyncbench_events.jsonl").read_text().splitlines()]
    done_event = next(e for e in events if e["event"] == "pipeline_done")
    assert done_event["issued"] == done_event["completed"]  # every sample completed exactly once


def test_a_second_signal_exits_at_once(calibrated: BuildPaths, tmp_path: Path) -> None:
    done, took = _interrupt(calibrated, tmp_path, signal.SIGINT, 1.0, "--engine", "null", "--scenario", "Server",
                            "--target-qps", "1000", "--min-duration", "20", second=True)
    assert done.returncode == 130 and took < 2.0
    assert "SIGINT again: exiting now" in done.stderr


def test_one_sigterm_delivered_twice_at_once_is_one_request(calibrated: BuildPaths, tmp_path: Path) -> None:
    """GNU timeout signals the child and then its process group: the same SIGTERM arrives twice."""
    done, _ = _interrupt(calibrated, tmp_path, signal.SIGTERM, 1.0, "--engine", "null", "--scenario", "Server",
                         "--target-qps", "1000", "--min-duration", "20", second=True, again_after_s=0.0)
    assert done.returncode == 1 and "SIGTERM again" not in done.stderr, done.stderr
    assert "interrupted by SIGTERM" in done.stdout and "result: FAILED" in done.stdout
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.is_symlink()]
    assert (folder / "mlperf_log_summary.txt").is_file() and (folder / "result.json").is_file()


def test_a_signal_ends_a_tune_not_just_its_trial(calibrated: BuildPaths, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "asyncbench", "tune", "--scenario", "Server", "--engine", "null", "--null",
           "per_sample_us=50", "--trial-duration", "5", "--build-dir", str(calibrated.root),
           "--tune-dir", str(tmp_path)]
    done, took = _signal_when(cmd, lambda: bool(list(tmp_path.glob("*/trials/*/mlperf_log_detail.txt"))),
                              signal.SIGTERM, 0.5)
    assert took < 5.0
    assert done.returncode == 130 and "error: interrupted" in done.stderr and "Traceback" not in done.stderr
    (trials,) = list(tmp_path.glob("*/trials.csv"))
    assert len(trials.read_text().splitlines()) == 2  # the header and the interrupted trial, nothing after it


def test_a_signal_during_warm_up_is_one_line_and_marks_the_folder(calibrated: BuildPaths, tmp_path: Path) -> None:
    # A null engine whose warm-up batches take 0.5 s each: the signal lands in warm-up.
    cmd = [sys.executable, "-m", "asyncbench", "--engine", "null", "--null", "fixed_us=500000", "--max-batch-size",
           "4", "--scenario", "Offline", "--build-dir", str(calibrated.root), "--log-dir", str(tmp_path)]
    done, _ = _signal_when(cmd, lambda: (tmp_path / "latest").exists(), signal.SIGTERM, 1.5)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "before LoadGen started" in errors[0], done.stderr
    marker = (tmp_path / "latest" / FAILED_MARKER).read_text()
    assert "interrupted during" in marker and "nothing was measured" in marker


def test_a_target_below_one_qps_is_one_line(calibrated: BuildPaths, tmp_path: Path) -> None:
    for qps in ("0.02", "1e-9"):
        done = _cli(calibrated, tmp_path, "--engine", "null", "--scenario", "Server", "--target-qps", qps)
        assert done.returncode == 2 and "QPS is below 1" in done.stderr and "Traceback" not in done.stderr


def test_sigkill_leaves_the_build_usable(calibrated: BuildPaths, tmp_path: Path) -> None:
    done, _ = _interrupt(calibrated, tmp_path / "killed", signal.SIGKILL, 0.5, "--engine", "null", "--scenario",
                         "Server", "--target-qps", "1000", "--min-duration", "20")
    assert done.returncode == -signal.SIGKILL
    again = _cli(calibrated, tmp_path / "after", *OFFLINE_VALID)
    assert again.returncode == 0 and "result: VALID" in again.stdout


# -- failures ------------------------------------------------------------------------------------------------------

def test_failed_samples_make_the_run_failed_not_valid(calibrated: BuildPaths, tmp_path: Path) -> None:
    done = _cli(calibrated, tmp_path, "--engine", "null", "--null", "fixed_us=100,fail_after=200", "--scenario",
                "Server", "--target-qps", "2000", "--min-duration", "20")
    assert done.returncode == 1
    _one_error_line(done, "run failed: engine failed: EngineError: injected failure on batch 200")
    assert "result: FAILED" in done.stdout and "result: VALID" not in done.stdout
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.is_symlink()]
    assert "samples were completed as failed" in (folder / FAILED_MARKER).read_text()
    assert parse_summary(folder / "mlperf_log_summary.txt").result == "INVALID"  # LoadGen stopped early


@pytest.mark.parametrize("spec, needle", [
    ("fail_after=50", "warm-up: the null engine failed at batch size 1024: EngineError: injected failure"),
    ("stall_after=50", "warm-up: the null engine stalled: batch size 1024"),
])
def test_warmup_faults_are_one_line_with_events_logged(calibrated: BuildPaths, tmp_path: Path, spec: str,
                                                       needle: str) -> None:
    start = time.monotonic()
    done = _cli(calibrated, tmp_path, "--engine", "null", "--null", spec, "--engine-timeout", "1")
    assert done.returncode == 1 and time.monotonic() - start < 60
    _one_error_line(done, needle)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.is_symlink()]
    events = (folder / "asyncbench_events.jsonl").read_text()
    assert '"warmup_start"' in events and ('"warmup_failed"' in events or '"warmup_stalled"' in events)


def test_an_engine_failing_in_the_pilot_is_one_line_before_loadgen(calibrated: BuildPaths, tmp_path: Path) -> None:
    # Warm-up runs batches 0-4 at batch size 1; the pilot's queries come next.
    done = _cli(calibrated, tmp_path, "--engine", "null", "--null", "fail_after=10", "--scenario", "SingleStream",
                "--max-batch-size", "1")
    assert done.returncode == 1
    _one_error_line(done, "pilot before LoadGen: engine failed: EngineError: injected failure on batch 10")
    assert not list(tmp_path.glob("*/mlperf_log_detail.txt"))


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_an_unwritable_log_dir_fails_before_any_work(calibrated: BuildPaths, tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_text("x")
    logs = tmp_path / "file" / "logs" if where == "under_a_file" else Path("/proc/asyncbench-logs")
    done = _cli(calibrated, logs, "--engine", "null")
    assert done.returncode == 1
    _one_error_line(done, "cannot write the log folder")
    assert "prepare:" not in done.stdout and "preprocess:" not in done.stdout


def test_a_damaged_sample_is_rewritten_by_the_run(calibrated: BuildPaths, tmp_path: Path) -> None:
    folder = next(calibrated.preprocessed.glob("embedded/MobileNet/int8_nhwc4"))
    victim = folder / "aibench_007.jpg.npy"
    original = victim.read_bytes()
    damaged = bytearray(original)
    damaged[-1000] ^= 0x55
    victim.write_bytes(bytes(damaged))
    done = _cli(calibrated, tmp_path, "--engine", "null", "--min-duration", "0.3")
    assert done.returncode == 0 and "1 damaged since they were made (checksum mismatch) and rewritten" in done.stdout
    assert victim.read_bytes() == original


def test_the_arena_refuses_a_damaged_sample_naming_the_repair(tmp_path: Path) -> None:
    from asyncbench.data.manifest import crc32_file, write_manifest

    sample = np.ones((224, 224, 4), np.int8)
    np.save(tmp_path / "a.npy", sample)
    write_manifest(tmp_path, {"a.npy": crc32_file(tmp_path / "a.npy")})
    assert (tmp_path / MANIFEST).is_file() and read_manifest(tmp_path)
    with open(tmp_path / "a.npy", "r+b") as f:
        f.seek(-10, os.SEEK_END)
        f.write(b"\x7f" * 10)
    arena = SampleArena(tmp_path, ["a"])
    with pytest.raises(UserError, match=r"does not match the checksum recorded .*preprocess_data.py .*--val_only"):
        arena.load([0])


def test_a_full_disk_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    (tmp_path / "mlperf_log_summary.txt").write_text("")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10 << 30, 10 << 30, 0))
    with pytest.raises(UserError, match="the disk is full"):
        read_results(tmp_path)


def test_concurrent_runs_on_one_build_are_safe(calibrated: BuildPaths, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "asyncbench", *OFFLINE_VALID, "--build-dir", str(calibrated.root)]
    procs = [subprocess.Popen([*cmd, "--log-dir", str(tmp_path / str(i))], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all("result: VALID" in out for out, _ in outs)


def test_overload_at_twice_capacity_finishes_invalid_and_bounded(calibrated: BuildPaths, tmp_path: Path) -> None:
    # The modelled engine does 1000 samples/s at most (1 ms per sample); ask for 2000.
    done = _cli(calibrated, tmp_path, "--engine", "null", "--null", "per_sample_us=1000", "--scenario", "Server",
                "--target-qps", "2000", "--min-duration", "3")
    assert done.returncode == 0, done.stderr
    assert "result: INVALID" in done.stdout


def test_a_run_names_its_dataset_and_leaves_no_empty_trace(calibrated: BuildPaths, tmp_path: Path) -> None:
    done = _cli(calibrated, tmp_path / "logs", *OFFLINE_VALID)
    assert done.returncode == 0, done.stderr
    assert "\ndataset embedded: 104 samples (" in done.stdout
    (folder,) = [p for p in (tmp_path / "logs").iterdir() if p.is_dir() and not p.is_symlink()]
    assert (folder / "mlperf_log_summary.txt").is_file() and not (folder / "mlperf_log_trace.json").exists()
