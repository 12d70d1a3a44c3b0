"""TestSettings from mlperf.conf, user.conf and options, checked against what real LoadGen tests log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlperf_loadgen as lg
import pytest
from test_loadgen_logs import run_tiny_test

from asyncbench.config import Scenario, TestMode
from asyncbench.errors import ConfigError, UserError
from asyncbench.loadgen.logs import detail_errors, detail_values, parse_detail, parse_summary
from asyncbench.loadgen.settings import (
    LoadGenOptions,
    build_test_settings,
    builtin_settings,
    lg_mode,
    lg_scenario,
    make_log_settings,
    submission_shortfalls,
)

OFFICIAL_QSL_SEED = 2085463073848966840  # *.*.qsl_rng_seed in LoadGen 6.0's built-in mlperf.conf


def test_names_map_to_loadgen_enums() -> None:
    assert [s.value for s in Scenario] == ["SingleStream", "MultiStream", "Server", "Offline"]
    assert all(lg_scenario(s).name == s.value for s in Scenario)
    assert all(lg_mode(m).name == m.value for m in TestMode)


@pytest.mark.parametrize("scenario", list(Scenario))
def test_defaults_are_the_builtin_mlperf_conf(scenario: str) -> None:
    settings, notes = build_test_settings(LoadGenOptions(scenario=scenario))
    assert settings.scenario == lg_scenario(scenario) and settings.mode == lg.TestMode.PerformanceOnly
    assert settings.min_duration_ms == 600_000 and settings.qsl_rng_seed == OFFICIAL_QSL_SEED
    assert settings.server_num_issue_query_threads == 0
    assert notes == [] and submission_shortfalls(settings) == []


def test_builtin_minimums_per_scenario() -> None:
    """What LoadGen 6.0's mlperf.conf asks of a mobilenet run (it has no mobilenet entries: the `*` ones apply)."""
    server = builtin_settings("mobilenet", "Server")
    assert (server.min_query_count, server.server_target_latency_ns) == (100, 10_000_000)
    assert server.server_target_latency_percentile == pytest.approx(0.99)
    multi = builtin_settings("mobilenet", "MultiStream")
    assert (multi.min_query_count, multi.multi_stream_samples_per_query) == (662, 8)
    single = builtin_settings("mobilenet", "SingleStream")
    assert single.single_stream_target_latency_percentile == pytest.approx(0.90)
    assert builtin_settings("mobilenet", "Offline").performance_sample_count_override == 0  # the QSL decides


def test_options_override_and_short_runs_are_flagged() -> None:
    settings, notes = build_test_settings(
        LoadGenOptions(
            scenario="Server", target_qps=1234.5, min_duration_s=10, min_query_count=500, max_query_count=900,
            performance_sample_count=1024, server_target_latency_ms=15, qsl_rng_seed=7,
        )
    )
    assert settings.server_target_qps == 1234.5 and settings.server_target_latency_ns == 15_000_000
    assert (settings.min_duration_ms, settings.min_query_count, settings.max_query_count) == (10_000, 500, 900)
    assert settings.performance_sample_count_override == 1024 and settings.qsl_rng_seed == 7
    assert notes == [
        "qsl_rng_seed 7 replaces the official seed: not a submission run",
        "min_duration 10 s is shorter than the submission minimum 600 s: not a submission-length run",
    ]
    assert submission_shortfalls(settings) != []


def test_scenario_specific_options() -> None:
    offline, _ = build_test_settings(LoadGenOptions(scenario="Offline", target_qps=5000))
    assert offline.offline_expected_qps == 5000
    multi, notes = build_test_settings(
        LoadGenOptions(scenario="MultiStream", min_query_count=100, multistream_samples_per_query=4,
                       multistream_expected_latency_ms=2.5)
    )
    assert multi.multi_stream_samples_per_query == 4 and multi.multi_stream_expected_latency_ns == 2_500_000
    assert submission_shortfalls(multi) == ["min_query_count 100 is below the MultiStream submission minimum 662"]
    single, _ = build_test_settings(
        LoadGenOptions(scenario="SingleStream", mode="AccuracyOnly", single_stream_expected_latency_ms=0.5,
                       min_duration_s=1)
    )
    assert single.single_stream_expected_latency_ns == 500_000 and single.mode == lg.TestMode.AccuracyOnly


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"scenario": "offline"}, "unknown scenario 'offline': choose one of SingleStream, MultiStream"),
        ({"scenario": "Offline", "mode": "Perf"}, "unknown test mode 'Perf'"),
        ({"scenario": "SingleStream", "target_qps": 10}, "target_qps applies to the Server and Offline"),
        ({"scenario": "Offline", "target_qps": 10, "offline_expected_qps": 20}, "not both"),
        ({"scenario": "Offline", "min_duration_s": -1}, "min_duration_s must be 0 or more"),
        ({"scenario": "Server", "server_target_latency_ms": 0}, "server_target_latency_ms must be greater than 0"),
        ({"scenario": "Offline", "min_query_count": 0}, "min_query_count must be greater than 0"),
    ],
)
def test_bad_options_are_usage_errors(options: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        LoadGenOptions(**options)


def test_user_conf_takes_effect_in_a_real_run(tmp_path: Path) -> None:
    user_conf = tmp_path / "user.conf"
    user_conf.write_text(
        "# lowest precedence after mlperf.conf\n"
        "mobilenet.Offline.min_query_count = 123\n"
        "*.SingleStream.target_latency_percentile = 95\n"
        "*.Offline.target_qps = 100\n"
    )
    offline, _ = build_test_settings(LoadGenOptions(scenario="Offline", user_conf=user_conf, min_duration_s=0.2))
    run_tiny_test(offline, tmp_path / "offline")
    values = detail_values(parse_detail(tmp_path / "offline" / "mlperf_log_detail.txt"))
    assert values["requested_min_query_count"] == 123 and values["requested_offline_expected_qps"] == 100
    assert values["effective_samples_per_query"] == 123  # max(123, 1.1 * 0.2 s * 100/s)
    assert values["effective_qsl_rng_seed"] == OFFICIAL_QSL_SEED

    single, _ = build_test_settings(
        LoadGenOptions(scenario="SingleStream", user_conf=user_conf, min_duration_s=0.05, min_query_count=10)
    )
    run_tiny_test(single, tmp_path / "single")
    values = detail_values(parse_detail(tmp_path / "single" / "mlperf_log_detail.txt"))
    assert values["requested_single_stream_target_latency_percentile"] == pytest.approx(0.95)
    assert parse_summary(tmp_path / "single" / "mlperf_log_summary.txt").metric_name == "95.0th percentile latency (ns)"


def test_options_beat_user_conf_which_beats_mlperf_conf(tmp_path: Path) -> None:
    mlperf_conf = tmp_path / "mlperf.conf"
    mlperf_conf.write_text("*.Offline.min_duration = 1234\n*.Offline.min_query_count = 9\n*.Offline.target_qps = 3\n")
    user_conf = tmp_path / "user.conf"
    user_conf.write_text("mobilenet.Offline.min_query_count = 5\nmobilenet.Offline.target_qps = 4\n")
    settings, notes = build_test_settings(
        LoadGenOptions(scenario="Offline", mlperf_conf=mlperf_conf, user_conf=user_conf, target_qps=6)
    )
    assert (settings.min_duration_ms, settings.min_query_count, settings.offline_expected_qps) == (1234, 5, 6)
    assert settings.qsl_rng_seed == OFFICIAL_QSL_SEED  # files cannot set seeds: the built-in ones stay
    assert notes[0].startswith(f"mlperf.conf {mlperf_conf} is applied over LoadGen's built-in one")


def test_conf_file_errors_are_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    with pytest.raises(UserError, match=f"user.conf {missing} does not exist"):
        build_test_settings(LoadGenOptions(scenario="Offline", user_conf=missing))
    with pytest.raises(UserError, match="is not a file"):  # LoadGen itself would read a directory as empty
        build_test_settings(LoadGenOptions(scenario="Offline", user_conf=tmp_path))
    bad = tmp_path / "bad.conf"
    bad.write_text("mobilenet.Offline.min_query_count = many\n")
    with pytest.raises(UserError, match=r"LoadGen rejected user.conf .*bad.conf \(FromConfig returned -22\)") as info:
        build_test_settings(LoadGenOptions(scenario="Offline", user_conf=bad))
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="mlperf.conf .* does not exist"):
        build_test_settings(LoadGenOptions(scenario="Offline", mlperf_conf=missing))


RAW_FROMCONFIG = """
import json, sys
import mlperf_loadgen as lg
user_conf, model = sys.argv[1], "mobilenet"
seen = {}
for call in ("first", "second"):
    s = lg.TestSettings()
    rc = s.FromConfig(user_conf, model, "Offline", 1)
    seen[call] = [rc, s.min_duration_ms, s.min_query_count, s.qsl_rng_seed]
s = lg.TestSettings()
seen["builtin_ignores_path"] = [s.FromConfig("/no/such/file", model, "Offline", 0), s.min_duration_ms]
seen["missing"] = lg.TestSettings().FromConfig("/no/such/file", model, "Offline", 2)
seen["directory"] = lg.TestSettings().FromConfig("/", model, "Offline", 2)
print(json.dumps(seen))
"""


def test_raw_fromconfig_applies_builtin_conf_on_the_first_user_conf_only(tmp_path: Path) -> None:
    """LoadGen's own behaviour, in a fresh process (its counter is process-wide and cannot be reset)."""
    user_conf = tmp_path / "user.conf"
    user_conf.write_text("mobilenet.Offline.min_query_count = 123\n")
    done = subprocess.run(
        [sys.executable, "-c", RAW_FROMCONFIG, str(user_conf)], capture_output=True, text=True, timeout=60, check=True
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["first"] == [0, 600_000, 123, OFFICIAL_QSL_SEED]
    assert seen["second"] == [0, 10_000, 123, 0]  # struct defaults: mlperf.conf was not applied
    assert seen["builtin_ignores_path"] == [0, 600_000]
    assert seen["missing"] == -2 and seen["directory"] == 0


def test_repeated_user_conf_is_consistent_and_noted(tmp_path: Path) -> None:
    user_conf = tmp_path / "user.conf"
    user_conf.write_text("mobilenet.SingleStream.min_query_count = 10\n")
    options = LoadGenOptions(scenario="SingleStream", user_conf=user_conf, min_duration_s=0.05)
    first, _ = build_test_settings(options)
    second, notes = build_test_settings(options)
    for settings in (first, second):
        assert settings.qsl_rng_seed == OFFICIAL_QSL_SEED and settings.min_query_count == 10
    assert any("already loaded in this process" in note for note in notes)
    run_tiny_test(second, tmp_path / "run")
    errors = detail_errors(parse_detail(tmp_path / "run" / "mlperf_log_detail.txt"))
    assert any(e.startswith("error_invalid_config: Multiple conf files are used") for e in errors)


def test_log_settings(tmp_path: Path) -> None:
    outdir = tmp_path / "a" / "b"
    log_settings = make_log_settings(outdir, trace=True)
    assert outdir.is_dir() and log_settings.log_output.outdir == str(outdir)
    assert log_settings.enable_trace and not log_settings.log_output.copy_summary_to_stdout
    assert not make_log_settings(outdir).enable_trace
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot create LoadGen log directory"):
        make_log_settings(blocker / "logs")
