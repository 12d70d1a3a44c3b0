"""Parsing LoadGen's summary and detail logs, written by real (tiny, sub-second) LoadGen tests."""

from __future__ import annotations

import time
from pathlib import Path

import mlperf_loadgen as lg
import numpy as np
import pytest

from asyncbench.errors import UserError
from asyncbench.loadgen.logs import RunSummary, detail_errors, detail_values, parse_detail, parse_summary
from asyncbench.loadgen.settings import LoadGenOptions, build_test_settings, make_log_settings

QSL_SIZE = 16


def run_tiny_test(settings: lg.TestSettings, outdir: Path, sample_s: float = 0.0) -> None:
    """One LoadGen test against a SUT that answers class 0 inline after ``sample_s`` per sample.

    The response buffer outlives every QuerySamplesComplete call; the callbacks cannot raise
    (an exception escaping one aborts the process).
    """
    response = np.zeros(1, np.int32)
    address = response.__array_interface__["data"][0]

    def issue(samples: list[lg.QuerySample]) -> None:
        if sample_s:
            time.sleep(sample_s * len(samples))
        lg.QuerySamplesComplete([lg.QuerySampleResponse(s.id, address, response.nbytes) for s in samples])

    sut = lg.ConstructSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(QSL_SIZE, QSL_SIZE, lambda indices: None, lambda indices: None)
    try:
        lg.StartTestWithLogSettings(sut, qsl, settings, make_log_settings(outdir))
    finally:
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)


def _run(tmp_path: Path, sample_s: float, **options: object) -> Path:
    settings, _ = build_test_settings(LoadGenOptions(**options))  # type: ignore[arg-type]
    run_tiny_test(settings, tmp_path, sample_s)
    return tmp_path


def test_single_stream_valid(tmp_path: Path) -> None:
    # 1 ms per sample, as expected: LoadGen generates enough queries for 0.2 s, and 100 beat early stopping's 64.
    out = _run(
        tmp_path, 0.001, scenario="SingleStream", min_duration_s=0.2, min_query_count=100,
        single_stream_expected_latency_ms=1.0,
    )
    summary = parse_summary(out / "mlperf_log_summary.txt")
    assert (summary.scenario, summary.mode, summary.result, summary.sut_name) == (
        "SingleStream", "PerformanceOnly", "VALID", "PySUT"
    )
    assert summary.valid and summary.reasons == [] and _unmet(summary) == []
    assert set(summary.constraints) == {"Min duration satisfied", "Min queries satisfied", "Early stopping satisfied"}
    assert summary.metric_name == "90.0th percentile latency (ns)"
    latency = summary.latency
    assert latency is not None and summary.metric_value == latency.percentiles_ns.get(90.0)
    pct = latency.percentiles_ns
    assert 1_000_000 <= latency.min_ns <= pct[50.0] <= pct[90.0] <= pct[95.0] <= pct[99.0] <= latency.max_ns
    assert latency.min_ns <= latency.mean_ns <= latency.max_ns
    assert set(latency.percentiles_ns) == {50.0, 90.0, 95.0, 97.0, 99.0, 99.9}
    assert set(summary.latency_ns) == {"min", "mean", "max", "p50", "p90", "p95", "p97", "p99", "p99.9"}
    assert summary.latency_ns["p90"] == latency.percentiles_ns.get(90.0)
    assert any(line.startswith("Processed at least 64 queries") for line in summary.early_stopping)
    assert summary.stats["QPS w/ loadgen overhead"] > 0
    assert summary.parameters["min_duration (ms)"] == "200" and summary.parameters["min_query_count"] == "100"

    records = parse_detail(out / "mlperf_log_detail.txt")
    values = detail_values(records)
    assert values["effective_scenario"] == "SingleStream" and values["result_validity"] == "VALID"
    assert values["result_90.00_percentile_latency_ns"] == latency.percentiles_ns.get(90.0)
    assert summary.errors == len(detail_errors(records))


def test_offline_valid(tmp_path: Path) -> None:
    # One query of max(16, 1.1 * 0.2 s * 1000/s) = 220 samples at 1 ms each outlasts min_duration.
    out = _run(tmp_path, 0.001, scenario="Offline", min_duration_s=0.2, min_query_count=16, target_qps=1000)
    summary = parse_summary(out / "mlperf_log_summary.txt")
    assert (summary.scenario, summary.result, summary.metric_name) == ("Offline", "VALID", "Samples per second")
    assert summary.metric_value is not None and 50 < summary.metric_value <= 1000
    assert summary.early_stopping == []  # LoadGen prints no early-stopping verdict for Offline
    latency = summary.latency
    assert latency is not None and latency.min_ns == latency.max_ns >= 220_000_000  # a single query
    values = detail_values(parse_detail(out / "mlperf_log_detail.txt"))
    assert values["effective_samples_per_query"] == 220
    assert values["result_samples_per_second"] == pytest.approx(summary.metric_value, rel=1e-3)


def test_invalid_run_gives_loadgen_reasons(tmp_path: Path) -> None:
    # An instant SUT uses up the queries generated for 0.2 s long before 0.2 s pass.
    out = _run(
        tmp_path, 0.0, scenario="SingleStream", min_duration_s=0.2, min_query_count=10,
        single_stream_expected_latency_ms=1.0,
    )
    summary = parse_summary(out / "mlperf_log_summary.txt")
    assert summary.result == "INVALID" and not summary.valid
    assert _unmet(summary) == ["Min duration satisfied"]
    assert summary.reasons == ["Decrease the expected latency so the loadgen pre-generates more queries."]
    errors = detail_errors(parse_detail(out / "mlperf_log_detail.txt"))
    assert any(e.startswith("error_runtime: Ending early: Ran out of generated queries") for e in errors)
    assert summary.errors == len(errors) >= 1


def test_accuracy_summary_holds_only_counts(tmp_path: Path) -> None:
    out = _run(tmp_path, 0.0, scenario="Offline", mode="AccuracyOnly")
    summary = parse_summary(out / "mlperf_log_summary.txt")
    assert (summary.scenario, summary.mode, summary.result, summary.metric_name) == (None, None, None, None)
    assert summary.warnings >= 0 and summary.errors >= 0
    assert detail_values(parse_detail(out / "mlperf_log_detail.txt"))["effective_test_mode"] == "AccuracyOnly"


SUMMARY = """================================================
MLPerf Results Summary
================================================
SUT name : harness
Scenario : Server
Mode     : PerformanceOnly
Completed samples per second    : 1.23457e+06
Result is : INVALID
  Performance constraints satisfied : NO
  Min duration satisfied : Yes
  Min queries satisfied : NO
  Early stopping satisfied: NO
Recommendations:
 * Reduce target QPS to improve latency.
 * The test exited early, before enough queries were issued.
   See the detailed log for why this may have occurred.
Early Stopping Result:
 * Run unsuccessful.
 * Would need to run at least 401 more queries,
 with the run being successful if every additional
 query were under latency.

================================================
Additional Stats
================================================
Scheduled samples per second : 1250000.50
Min latency (ns)                : 10
Max latency (ns)                : 90
Mean latency (ns)               : 40
50.00 percentile latency (ns)   : 30
99.00 percentile latency (ns)   : 80

================================================
Test Parameters Used
================================================
target_latency (ns): 10000000

2 warnings encountered. See detailed log.

No errors encountered during test.
"""


def test_server_summary_layout(tmp_path: Path) -> None:
    path = tmp_path / "mlperf_log_summary.txt"
    path.write_text(SUMMARY)
    summary = parse_summary(path)
    assert (summary.metric_name, summary.metric_value) == ("Completed samples per second", 1.23457e06)
    assert _unmet(summary) == [
        "Performance constraints satisfied", "Min queries satisfied", "Early stopping satisfied"
    ]
    assert summary.reasons == [
        "Reduce target QPS to improve latency.",
        "The test exited early, before enough queries were issued. "
        "See the detailed log for why this may have occurred.",
    ]
    assert summary.early_stopping[-1] == (
        "Would need to run at least 401 more queries, with the run being successful if every additional query "
        "were under latency."
    )
    assert summary.stats["Scheduled samples per second"] == 1250000.5
    assert summary.latency is not None and (
        summary.latency.percentiles_ns.get(50.0), summary.latency.percentiles_ns.get(90.0)) == (30, None)
    assert summary.parameters == {"target_latency (ns)": "10000000"}
    assert parse_summary(path).latency_ns == {"min": 10, "mean": 40, "max": 90, "p50": 30, "p99": 80}
    assert (summary.warnings, summary.errors) == (2, 0)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "not a LoadGen summary"),
        ("hello\nworld\n", "not a LoadGen summary"),
        (SUMMARY.split("Mode")[0], "not a complete LoadGen summary"),
        (SUMMARY.split("Result is")[0], "not a complete LoadGen summary"),
    ],
)
def test_garbled_summary_is_one_line_error(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "mlperf_log_summary.txt"
    path.write_text(text)
    with pytest.raises(UserError, match=needle) as info:
        parse_summary(path)
    assert "\n" not in str(info.value)


def test_missing_logs_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        parse_summary(tmp_path / "mlperf_log_summary.txt")
    with pytest.raises(UserError, match="does not exist"):
        parse_detail(tmp_path / "mlperf_log_detail.txt")
    with pytest.raises(UserError, match="is a directory"):
        parse_summary(tmp_path)


def _record(key: str, value: object, error: bool = False) -> str:
    return (
        f':::MLLOG {{"key": "{key}", "value": {value}, "time_ms": 1.5, "namespace": "mlperf::logging", '
        f'"event_type": "POINT_IN_TIME", "metadata": {{"is_error": {str(error).lower()}, "is_warning": false}}}}'
    )


def test_detail_tolerates_a_truncated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "mlperf_log_detail.txt"
    complete = [_record("effective_min_query_count", 7), _record("error_runtime", '"boom"', error=True)]
    path.write_text("\n".join([*complete, _record("result_validity", '"VALID"')[:60]]))
    records = parse_detail(path)
    assert [r["key"] for r in records] == ["effective_min_query_count", "error_runtime"]
    assert detail_values(records)["effective_min_query_count"] == 7
    assert detail_errors(records) == ["error_runtime: boom"]


def test_detail_rejects_a_bad_line_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "mlperf_log_detail.txt"
    path.write_text("\n".join([_record("a", 1), ":::MLLOG {not json", _record("b", 2)]))
    with pytest.raises(UserError, match="line 2 is not a valid :::MLLOG record"):
        parse_detail(path)
    path.write_text("just text\n")
    with pytest.raises(UserError, match="holds no :::MLLOG records"):
        parse_detail(path)


def _unmet(summary: RunSummary) -> list[str]:
    """The constraints LoadGen marked NO, e.g. ``["Min duration satisfied"]``."""
    return [name for name, met in summary.constraints.items() if not met]


def test_an_invalid_result_is_given_loadgens_reasons(tmp_path: Path) -> None:
    from asyncbench.harness.report import invalid_reasons

    # A real MultiStream summary of 100 queries: early stopping fails, and LoadGen recommends nothing.
    path = tmp_path / "mlperf_log_summary.txt"
    path.write_text(SUMMARY.replace("Scenario : Server", "Scenario : MultiStream").replace(
        "  Performance constraints satisfied : NO\n", "").replace("  Min queries satisfied : NO\n", "").replace(
        """Recommendations:
 * Reduce target QPS to improve latency.
 * The test exited early, before enough queries were issued.
   See the detailed log for why this may have occurred.
Early Stopping Result:
 * Run unsuccessful.
 * Would need to run at least 401 more queries,
 with the run being successful if every additional
 query were under latency.""", """Recommendations:
Early Stopping Result:
 * Only processed 100 queries.
 * Need to process at least 662 queries for early stopping."""))
    assert invalid_reasons(parse_summary(path)) == [
        "Early stopping satisfied: NO", "Only processed 100 queries.",
        "Need to process at least 662 queries for early stopping."]
    path.write_text(SUMMARY)
    assert invalid_reasons(parse_summary(path))[:3] == [
        "Performance constraints satisfied: NO", "Min queries satisfied: NO", "Early stopping satisfied: NO"]
    assert invalid_reasons(parse_summary(path))[-2] == "Reduce target QPS to improve latency."
