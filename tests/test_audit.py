"""The compliance audits: each passes on a correct SUT and fails on the fault it exists to catch.

The null engine's planted faults stand in for a broken SUT: ``drift`` answers differently from run
to run (TEST01 must fail), ``cache`` serves recently seen samples for free (TEST04 must fail). The
onnxruntime engine runs TEST01 for real: its performance-mode responses must be byte-identical to
its accuracy-mode ones.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from asyncbench.cli import main
from asyncbench.config import Scenario
from asyncbench.errors import ConfigError
from asyncbench.harness.audit import (
    AUDITS,
    Verdict,
    audit_config_text,
    audit_named,
    threshold,
    verify_accuracy,
    verify_performance,
)
from asyncbench.harness.commands import EXIT_AUDIT_FAIL, EXIT_FAILED
from asyncbench.paths import BuildPaths

NULL = "form=device,per_sample_us=20"
SHORT = ("--min-duration", "0.5", "--no-progress")


def _log(path: Path, records: list[tuple[int, int]]) -> Path:
    """An accuracy log of (qsl_idx, int32 top-1) records."""
    path.write_text(json.dumps([{"seq_id": n, "qsl_idx": idx, "data": int(value).to_bytes(4, "little").hex()}
                                for n, (idx, value) in enumerate(records)]))
    return path


def _detail(folder: Path, **values: object) -> Path:
    """A run folder whose detail log holds these ``key: value`` records."""
    folder.mkdir()
    (folder / "mlperf_log_detail.txt").write_text("".join(
        f':::MLLOG {json.dumps({"key": k, "value": v})}\n' for k, v in values.items()))
    return folder


def test_names_and_files() -> None:
    assert audit_named("test04-b").name == "TEST04-B"
    with pytest.raises(ConfigError, match="modified images"):
        audit_named("TEST03")
    with pytest.raises(ConfigError, match="choose one of TEST01, TEST04, TEST04-A, TEST04-B, TEST05"):
        audit_named("TEST99")
    text = audit_config_text(AUDITS["TEST01"])
    assert "*.*.mode = 2\n" in text and "*.*.accuracy_log_sampling_target = 4096\n" in text
    assert "accuracy_log_probability" not in text  # LoadGen 6.0 ignores it in an audit file
    assert "*.*.performance_issue_same_index = 3" in audit_config_text(AUDITS["TEST04"])
    assert "rng_seed =" not in audit_config_text(AUDITS["TEST05"])  # seeds go through TestSettings
    assert AUDITS["TEST05"].seeds == (195, 235, 634)


def test_thresholds_follow_the_verification_scripts() -> None:
    assert threshold(Scenario.OFFLINE, 1.0) == 0.10
    assert threshold(Scenario.SINGLE_STREAM, 200_000) == 0.20
    assert threshold(Scenario.SINGLE_STREAM, 200_001) == 0.10
    assert threshold(Scenario.MULTI_STREAM, 1_600_000) == 0.20


def test_accuracy_verdicts(tmp_path: Path) -> None:
    reference = _log(tmp_path / "acc.json", [(0, 5), (1, 7), (2, 9), (1, 7)])
    same = verify_accuracy(reference, _log(tmp_path / "same.json", [(1, 7), (2, 9), (1, 7)]), labels=[5, 7, 1])
    assert same.passed and same.text.endswith("TEST PASS\n")
    assert "num_perf_log_qsl_idx_match = 3" in same.lines and "num_acc_log_duplicate_keys = 1" in same.lines
    assert any("accuracy run 50.000%, audit run 50.000%" in line for line in same.lines)
    differs = verify_accuracy(reference, _log(tmp_path / "differs.json", [(1, 7), (2, 8)]))
    assert not differs.passed and "num_perf_log_data_mismatch = 1" in differs.lines
    nothing = verify_accuracy(reference, _log(tmp_path / "other.json", [(3, 1)]))
    assert not nothing.passed and "num_missing_qsl_idxs = 1" in nothing.lines
    empty = tmp_path / "empty.json"
    empty.write_text("[\n]\n")
    assert not verify_accuracy(reference, empty).passed


@pytest.mark.parametrize(("name", "got", "passed"), [
    ("TEST05", 1080.0, True), ("TEST05", 1120.0, False), ("TEST05", 880.0, False),
    ("TEST04", 1090.0, True), ("TEST04", 700.0, True), ("TEST04", 1150.0, False)])
def test_performance_rules_on_throughput(tmp_path: Path, name: str, got: float, passed: bool) -> None:
    ref = _detail(tmp_path / "ref", result_validity="VALID", result_samples_per_second=1000.0)
    test = _detail(tmp_path / "test", result_validity="VALID", result_samples_per_second=got)
    assert verify_performance(AUDITS[name], Scenario.OFFLINE, ref, test).passed is passed


def test_performance_rules_on_latency_and_validity(tmp_path: Path) -> None:
    ref = _detail(tmp_path / "ref", result_validity="VALID", early_stopping_latency_ss=1_000_000)
    faster = _detail(tmp_path / "fast", result_validity="VALID", early_stopping_latency_ss=800_000)
    invalid = _detail(tmp_path / "invalid", result_validity="INVALID", early_stopping_latency_ss=1_000_000)
    verdict = verify_performance(AUDITS["TEST04"], Scenario.SINGLE_STREAM, ref, faster)
    assert not verdict.passed and any("1.250x" in line for line in verdict.lines)
    assert not verify_performance(AUDITS["TEST05"], Scenario.SINGLE_STREAM, ref, invalid).passed
    assert verify_performance(AUDITS["TEST04-B"], Scenario.SINGLE_STREAM, ref, invalid).passed  # v0.5: unchecked


def test_server_target_latency_must_match(tmp_path: Path) -> None:
    ref = _detail(tmp_path / "ref", result_validity="VALID", result_completed_samples_per_sec=100.0,
                  effective_target_latency_ns=10_000_000)
    test = _detail(tmp_path / "test", result_validity="VALID", result_completed_samples_per_sec=100.0,
                   effective_target_latency_ns=15_000_000)
    assert not verify_performance(AUDITS["TEST05"], Scenario.SERVER, ref, test).passed


def test_verdict_text_ends_in_the_verdict() -> None:
    assert Verdict(("a",), False).text == "a\nTEST FAIL\n"


# --- end to end, through the command line -------------------------------------------------------------------


def _cli(build: BuildPaths, tmp: Path, *args: str) -> int:
    return main([*args, "--build-dir", str(build.root), "--log-dir", str(tmp / "logs"), *SHORT])


def _run_dir(folder: Path) -> Path:
    (run,) = [p for p in folder.iterdir() if not p.is_symlink() and (p / "result.json").is_file()]
    return run


@pytest.fixture(scope="module")
def null_refs(calibrated: BuildPaths, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Offline performance and accuracy runs of the null engine's device form, and the log root."""
    tmp = tmp_path_factory.mktemp("audit_refs")
    for mode in ("PerformanceOnly", "AccuracyOnly"):  # twice the device's rate: a query that outlasts 0.5 s
        assert _cli(calibrated, tmp, "run", "--engine", "null", "--null", NULL, "--test-mode", mode,
                    "--target-qps", "100000") == 0
    performance, accuracy = sorted(p for p in (tmp / "logs").iterdir() if not p.is_symlink())
    return performance, accuracy, tmp


def _audit(build: BuildPaths, tmp: Path, test: str, *args: str) -> tuple[int, Path]:
    audits = tmp / f"audits_{test}_{len(list(tmp.iterdir()))}"
    code = _cli(build, tmp, "audit", test, "--audit-dir", str(audits), *args)
    (folder,) = list(audits.iterdir()) if audits.is_dir() else [audits]
    return code, folder


@pytest.mark.parametrize("test", ["TEST01", "TEST04", "TEST05"])
def test_audit_passes_on_a_correct_sut(calibrated: BuildPaths, null_refs: tuple[Path, Path, Path],
                                       test: str) -> None:
    code, folder = _audit(calibrated, null_refs[2], test, "--engine", "null", "--null", NULL)
    assert code == 0
    verdict = (folder / "verify_performance.txt").read_text()
    assert verdict.endswith("TEST PASS\n") and "LoadGen applied the audit" in verdict
    assert (folder / "audit.config").read_text() == audit_config_text(AUDITS[test])
    assert (folder / "performance" / "run_1" / "mlperf_log_detail.txt").is_file()
    record = json.loads((_run_dir(folder) / "result.json").read_text())
    assert record["audit"]["name"] == test and record["audit"]["passed"]["performance"]
    if test == "TEST01":
        assert (folder / "verify_accuracy.txt").read_text().endswith("TEST PASS\n")
        assert (folder / "accuracy" / "mlperf_log_accuracy.json").is_file()
    if test == "TEST05":
        effective = record["loadgen_effective"]
        assert (effective["qsl_rng_seed"], effective["sample_index_rng_seed"], effective["schedule_rng_seed"]) == (
            195, 235, 634)


def test_test01_fails_when_responses_change_between_runs(calibrated: BuildPaths,
                                                          null_refs: tuple[Path, Path, Path]) -> None:
    performance, accuracy, tmp = null_refs
    code, folder = _audit(calibrated, tmp, "TEST01", "--engine", "null", "--null", f"{NULL},drift=1",
                          "--reference", str(performance), "--reference", str(accuracy))
    assert code == EXIT_AUDIT_FAIL
    verdict = (folder / "verify_accuracy.txt").read_text()
    assert verdict.endswith("TEST FAIL\n") and "num_perf_log_data_mismatch = 0" not in verdict


def test_test04_fails_on_a_caching_sut(calibrated: BuildPaths, null_refs: tuple[Path, Path, Path]) -> None:
    performance, _, tmp = null_refs
    code, folder = _audit(calibrated, tmp, "TEST04", "--engine", "null", "--null", f"{NULL},cache=8",
                          "--reference", str(performance))
    assert code == EXIT_AUDIT_FAIL
    assert "(a cache?)" in (folder / "verify_performance.txt").read_text()


def test_audit_without_a_reference_is_one_line(calibrated: BuildPaths, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = _cli(calibrated, tmp_path, "audit", "TEST05", "--engine", "null", "--scenario", "Server",
                "--audit-dir", str(tmp_path / "audits"))
    err = capsys.readouterr().err.strip()
    assert code == EXIT_FAILED and len(err.splitlines()) == 1
    assert "needs a VALID performance run of Server" in err and "--reference RUN_DIR" in err
    assert not (tmp_path / "audits").exists()


def test_onnxruntime_responses_are_the_same_in_both_modes(calibrated: BuildPaths, tmp_path: Path) -> None:
    """TEST01 with the real model: the logged performance-mode bytes equal the accuracy run's."""
    for mode in ("PerformanceOnly", "AccuracyOnly"):  # a query that outlasts 0.5 s on any CPU
        assert _cli(calibrated, tmp_path, "run", "--engine", "onnxruntime", "--test-mode", mode,
                    "--target-qps", "400") == 0
    code, folder = _audit(calibrated, tmp_path, "TEST01", "--engine", "onnxruntime")
    # The bytes must match; the ±10% performance band is not asserted here: two 1-2 s runs of a CPU engine on a
    # shared 2-core machine can differ by more than that (the null engine's tests above assert that verdict).
    assert code in (0, EXIT_AUDIT_FAIL)
    assert (folder / "verify_accuracy.txt").read_text().endswith("TEST PASS\n")
    accuracy_run = sorted(p for p in (tmp_path / "logs").iterdir() if not p.is_symlink())[1]
    assert re.fullmatch(r"accuracy=\d+\.\d{3}%, good=\d+, total=\d+\n", (accuracy_run / "accuracy.txt").read_text())
    reference = {r["qsl_idx"]: r["data"] for r in json.loads((accuracy_run / "mlperf_log_accuracy.json").read_text())}
    logged = json.loads((folder / "accuracy" / "mlperf_log_accuracy.json").read_text())
    assert logged and all(r["data"] == reference[r["qsl_idx"]] for r in logged)
    assert all(len(bytes.fromhex(r["data"])) == 4 for r in logged)  # one int32 top-1 per sample


# --- the submission folder ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def submission(calibrated: BuildPaths, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A v0.5 folder made by `asyncbench submission` from nothing (it runs the runs and the audits it needs)."""
    tmp = tmp_path_factory.mktemp("submission")
    (tmp / "v05").mkdir()
    code = _cli(calibrated, tmp, "submission", "--system", "cpu-null", "--out", str(tmp / "v05" / "out"), "--engine",
                "null", "--null", NULL, "--target-qps", "100000", "--audit-dir", str(tmp / "audits"))
    assert code == EXIT_FAILED  # made, and its own check names the null engine's accuracy and the 104 samples
    return tmp / "v05" / "out"


def test_a_v61_folder_from_the_same_runs(calibrated: BuildPaths, submission: Path, tmp_path: Path) -> None:
    """v6.1 takes the runs made for v0.5 and runs only the audit it lacks (TEST04); its check names what a quick
    run on 104 photos cannot meet."""
    from asyncbench.harness.submission import check

    tmp = submission.parent.parent
    out = tmp_path / "v61"
    code = _cli(calibrated, tmp, "submission", "--layout", "v6.1", "--division", "open", "--system", "cpu-null",
                "--out", str(out), "--engine", "null", "--null", NULL, "--target-qps", "100000", "--audit-dir",
                str(tmp / "audits"))
    assert code == EXIT_FAILED
    offline = out / "open" / "asyncbench" / "results" / "cpu-null" / "mobilenet" / "Offline"
    assert {"measurements.json", "user.conf", "mlperf.conf", "README.md", "accuracy", "performance", "TEST01",
            "TEST04"} <= {p.name for p in offline.iterdir()}
    assert (out / "open" / "asyncbench" / "src").is_dir()
    assert (offline / "TEST04" / "verify_performance.txt").read_text().endswith("TEST PASS\n")
    description = json.loads((out / "open" / "asyncbench" / "systems" / "cpu-null.json").read_text())
    assert description["system_type"] == "datacenter" and description["accelerators_per_node"] == "0"
    layout, problems, results = check(out)
    assert (layout, results) == ("v6.1", 1)
    assert sorted(p.split(": ", 1)[1].split(" ", 1)[0] for p in problems) == [
        "accuracy_sample_count", "min_duration", "performance_sample_count"]


def test_submission_holds_every_file_of_the_v05_layout(submission: Path) -> None:
    base = submission / "closed" / "asyncbench"
    offline = base / "results" / "cpu-null" / "mobilenet" / "Offline"
    assert sorted(p.name for p in (offline / "accuracy").iterdir()) == [
        "accuracy.txt", "mlperf_log_accuracy.json", "mlperf_log_detail.txt", "mlperf_log_summary.txt"]
    assert (offline / "performance" / "run_1" / "mlperf_log_summary.txt").is_file()
    measure = base / "measurements" / "cpu-null" / "mobilenet" / "Offline"
    assert {"mlperf.conf", "user.conf", "README.md", "cpu-null_asyncbench_Offline.json"} <= {
        p.name for p in measure.iterdir()}
    assert "*.*.qsl_rng_seed" in (measure / "mlperf.conf").read_text()  # LoadGen's built-in file
    assert "python -m asyncbench run --scenario Offline --engine null" in (measure / "README.md").read_text()
    assert "--rng-seeds v0.5" in (measure / "README.md").read_text()  # v0.5's official seeds
    run = json.loads((offline / "performance" / "run_1" / "mlperf_log_detail.txt").read_text().split(
        '"key": "effective_qsl_rng_seed", "value": ')[1].split(",")[0])
    assert run == 3133965575612453542
    for name in ("TEST01", "TEST04-A", "TEST04-B", "TEST05"):
        verdict = base / "audit" / "cpu-null" / "mobilenet" / "Offline" / name / "verify_performance.txt"
        assert verdict.read_text().endswith("TEST PASS\n")
    description = json.loads((base / "systems" / "cpu-null.json").read_text())
    assert description["division"] == "closed" and description["submitter"] == "asyncbench"
    accuracy = (offline / "accuracy" / "accuracy.txt").read_text().splitlines()
    assert re.fullmatch(r"accuracy=\d+\.\d{3}%, good=\d+, total=\d+", accuracy[0])
    assert re.fullmatch(r"hash=[0-9a-f]{64}", accuracy[-1])


def test_the_check_names_each_broken_rule(submission: Path, tmp_path: Path) -> None:
    from asyncbench.harness.submission import check_v05

    problems, results = check_v05(submission)
    assert results == 1
    assert sorted(p.split(": ", 1)[1].split(" ", 2)[0] for p in problems) == ["accuracy", "performance_sample_count"]
    broken = tmp_path / "broken"
    shutil.copytree(submission, broken)
    base = broken / "closed" / "asyncbench"
    offline = base / "results" / "cpu-null" / "mobilenet" / "Offline"
    (base / "measurements" / "cpu-null" / "mobilenet" / "Offline" / "user.conf").unlink()
    summary = offline / "performance" / "run_1" / "mlperf_log_summary.txt"
    summary.write_text(summary.read_text().replace("Result is : VALID", "Result is : INVALID"))
    system = base / "systems" / "cpu-null.json"
    system.write_text(json.dumps({**json.loads(system.read_text()), "gpu_count": 1}))
    accuracy = offline / "accuracy" / "accuracy.txt"
    accuracy.write_text(accuracy.read_text().splitlines()[0] + "\n")  # a log cut short without its hash line
    log = offline / "accuracy" / "mlperf_log_accuracy.json"
    log.write_text(log.read_text()[:60])
    found = "\n".join(check_v05(broken)[0])
    assert "lacks user.conf" in found
    assert "the run is INVALID, not VALID" in found
    assert "has an unknown key gpu_count" in found
    assert "truncated before TEST01?" in found


def test_submission_refusals_are_one_line(calibrated: BuildPaths, submission: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cases = [(("--system", "x", "--out", str(submission)), "already exists"),
             (("--system", "x", "--out", str(tmp_path / "o"), "--collect", "--engine", "null"), "drop --collect"),
             (("--system", "x", "--out", str(tmp_path / "o"), "--layout", "v9.9"), "choose one of v0.5, v6.1"),
             (("--out", str(tmp_path / "o")), "needs --system NAME")]
    for args, expected in cases:
        assert _cli(calibrated, tmp_path, "submission", *args) in (EXIT_FAILED, 2)
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
