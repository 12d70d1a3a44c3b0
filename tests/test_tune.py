"""`asyncbench tune`, result.json, `report` and the exit codes.

The search logic is checked against scripted trials (deterministic and flaky); the command end to
end against the null engine, whose capacity is known: one modelled device at ``per_sample_us`` per sample.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
from conftest import run_cli

from asyncbench.config import BatchingConfig, EngineConfig, EngineKind, LoadGenConfig, RunConfig, Scenario
from asyncbench.engines.null import NullEngine
from asyncbench.errors import ConfigError
from asyncbench.harness.plan import plan_run
from asyncbench.harness.tune import (
    TRIAL_COLUMNS,
    ServerSearch,
    Setting,
    Trial,
    apply_tuned,
    best_of_grid,
    delay_grid,
    grid_settings,
    parse_grid,
    record_tuned,
    system_file,
    this_system,
    trial_config,
    tuning_identity,
    with_tuned,
    write_outputs,
)


def _scripted(capacity: float, flaky: dict[float, int] | None = None, script: dict[float, list[bool]] | None = None):
    """A RunTrial that is VALID at or below ``capacity``; ``flaky[qps]`` makes that many runs there INVALID;
    ``script[qps]`` gives the verdicts of the first runs at that rate, in order, whatever the capacity."""
    flaky = dict(flaky or {})
    script = {qps: list(verdicts) for qps, verdicts in (script or {}).items()}
    log: list[Trial] = []

    def run(phase: str, setting: Setting) -> Trial:
        qps = setting.target_qps or 0.0
        if script.get(qps):
            valid = script[qps].pop(0)
        else:
            valid = qps <= capacity
            if flaky.get(qps, 0) > 0 and valid:
                flaky[qps] -= 1
                valid = False
        trial = Trial(len(log) + 1, phase, setting, "VALID" if valid else "INVALID", 1.0 if valid else 50.0, {})
        log.append(trial)
        return trial

    return run, log


def test_server_search_doubles_bisects_and_confirms() -> None:
    run, log = _scripted(20_000)
    best = ServerSearch(run, precision=0.02, repeats=3).find(Setting(), 5_000)
    assert 0.98 * 20_000 <= best <= 20_000
    at_best = [t for t in log if t.setting.target_qps == best]
    assert len(at_best) == 3 and all(t.valid for t in at_best)
    assert [t.setting.target_qps for t in log[:4]] == [5_000, 10_000, 20_000, 40_000]  # doubling first


def test_a_repeat_that_fails_moves_the_bound_below() -> None:
    run, log = _scripted(20_000)
    first = ServerSearch(run).find(Setting(), 5_000)
    run, log = _scripted(20_000, flaky={first: 1})  # the same search, but its best fails one repeat
    best = ServerSearch(run).find(Setting(), 5_000)
    assert best < first and best >= 0.95 * 20_000
    assert all(t.valid for t in log if t.setting.target_qps == best)


def test_a_search_that_cannot_beat_another_rate_gives_up_instead_of_searching_down() -> None:
    run, log = _scripted(10_000)
    # A second setting, probed VALID at 11,000 by a fluke, must beat 10,500: it searches only the interval above
    # that (bisection to the precision, then a recheck) and stops (a full search from half the bound cost a noisy
    # tune 40 trials).
    assert ServerSearch(run).find(Setting(), 12_000, lo=11_000, beat=10_500) == 0.0
    assert all((t.setting.target_qps or 0) > 10_500 for t in log) and len(log) <= 10


def test_a_rate_known_valid_before_the_search_stays_its_floor_after_a_failed_repeat() -> None:
    # 18,253.3 was VALID in a probe run outside this search; the third run of 18,983.4 fails. The search goes on
    # between the two instead of forgetting the probe, halving the bound and giving up below the rate to beat.
    run, log = _scripted(18_900, script={19_713.6: [False], 18_983.4: [True, True, False], 19_348.5: [False, False]})
    best = ServerSearch(run).find(Setting(), 19_713.6, lo=18_253.3, growth=1.08, beat=17_895.4)
    assert 18_253.3 < best <= 18_900 and all((t.setting.target_qps or 0) > 18_000 for t in log)


def test_a_second_search_whose_probe_fails_a_repeat_searches_between_the_rate_to_beat_and_it() -> None:
    # The probe's 19,363.5 fails its repeat and nothing VALID lies below it in this search: the rates between the
    # first search's 18,983.8 and it are still worth a look (a search that gave up there left a tune 16 QPS short).
    run, log = _scripted(19_300, script={19_363.5: [False], 19_557.2: [False, False]})
    best = ServerSearch(run).find(Setting(), 19_557.2, lo=19_363.5, growth=1.08, beat=18_983.8)
    assert 18_983.8 < best <= 19_300 and all((t.setting.target_qps or 0) > 18_983.8 for t in log)


def test_nothing_valid_reports_zero() -> None:
    run, _ = _scripted(0.5)
    assert ServerSearch(run).find(Setting(), 100) == 0.0


def test_the_search_stops_at_the_memory_ceiling_instead_of_failing() -> None:
    run, log = _scripted(1e9)  # an engine faster than any rate LoadGen's memory allows (the null engine)
    search = ServerSearch(run, repeats=3, ceiling=12_345.67)
    assert search.find(Setting(), 50_000) == 12_345.6
    assert max(t.setting.target_qps or 0 for t in log) == 12_345.6 and len(log) == 3
    run, log = _scripted(10_000)  # an engine slower than the ceiling: an ordinary search below it
    assert 9_800 <= ServerSearch(run, ceiling=12_345.67).find(Setting(), 5_000) <= 10_000


def test_tune_refuses_a_p99_target_below_the_engines_latency_and_names_its_sources(calibrated,
                                                                                   tmp_path: Path) -> None:
    common = ("tune", "--scenario", "Server", "--engine", "null", "--build-dir", str(calibrated.root),
              "--tune-dir", str(tmp_path))
    done = run_cli(*common, "--null", "fixed_us=2000", "--p99-ms", "0.5")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: the p99 target 0.5 ms is below the null engine's measured batch-1 "
                                  "latency 2.") and "raise --p99-ms" in done.stderr
    assert "tuning Server" not in done.stdout  # said before any trial
    with pytest.raises(ConfigError, match="target QPS from the trial's rate would make LoadGen generate"):
        plan_run(trial_config(RunConfig(Scenario.SERVER), Setting(1e12), 2.0), 104, None, {})


def test_grid_parsing_and_choice() -> None:
    assert parse_grid(["max_batch=32,64", "delay_us=0,500"]) == {"max_batch": (32, 64), "delay_us": (0, 500)}
    for bad in (["batch=1"], ["max_batch=0"], ["delay_us=a"], ["max_batch"]):
        with pytest.raises(ConfigError):
            parse_grid(bad)
    trials = [Trial(1, "grid", Setting(1, 8, 0), "VALID", 2.0, {}),
              Trial(2, "grid", Setting(1, 16, 0), "VALID", 1.5, {}),
              Trial(3, "grid", Setting(1, 32, 0), "INVALID", 0.5, {})]
    assert best_of_grid(trials) is trials[1]


def test_tuned_settings_are_picked_up_for_the_same_system_and_engine(tmp_path: Path) -> None:
    engine = NullEngine()
    path = system_file(tmp_path, this_system(engine))
    plain = tuning_identity(RunConfig(Scenario.SERVER), engine, None)
    record_tuned(path, this_system(engine), plain, "Server",
                 {"target_qps": 1234.0, "max_batch_size": 16, "max_queue_delay_us": 250, "tuned_at": "then",
                  "trial_duration_s": 10.0})
    cfg, note = with_tuned(RunConfig(Scenario.SERVER), engine, tmp_path, None, plain, 10.0)
    assert (cfg.loadgen.target_qps, cfg.batching.max_batch_size, cfg.batching.max_queue_delay_us) == (1234.0, 16, 250)
    assert note is not None and "1234" in note and str(path) in note
    assert plan_run(cfg, 104, None, {}).sources["target_qps"] == f"tuned, {path.name}"  # not "command line"
    mine = RunConfig(Scenario.SERVER, LoadGenConfig(target_qps=99.0), BatchingConfig(max_batch_size=4))
    kept, _, _ = apply_tuned(mine, {"target_qps": 1234.0, "max_batch_size": 16})
    assert (kept.loadgen.target_qps, kept.batching.max_batch_size) == (99.0, 4)  # the command line wins
    untouched, note = with_tuned(RunConfig(Scenario.OFFLINE), engine, tmp_path, None, plain, 10.0)
    assert untouched == RunConfig(Scenario.OFFLINE) and note is None


def test_tuned_settings_stay_with_their_engine_configuration_and_trial_length(tmp_path: Path) -> None:
    engine = NullEngine()
    path = system_file(tmp_path, this_system(engine))
    slow = RunConfig(Scenario.SERVER, batching=BatchingConfig(max_batch_size=16),
                     engine=EngineConfig(kind=EngineKind.NULL, null_spec="fixed_us=2000,per_sample_us=100"))
    record_tuned(path, this_system(engine), tuning_identity(slow, engine, None), "Server",
                 {"target_qps": 900.0, "max_batch_size": 16, "max_queue_delay_us": 0, "trial_duration_s": 2.0})
    plain = RunConfig(Scenario.SERVER, engine=EngineConfig(kind=EngineKind.NULL))
    cfg, note = with_tuned(plain, engine, tmp_path, None, tuning_identity(plain, engine, None), 2.0)
    assert cfg == plain and note is None  # the slow model's tune is not a plain null engine's
    other_weights = tuning_identity(slow, engine, "0123456789abcdef")
    assert with_tuned(slow, engine, tmp_path, None, other_weights, 2.0) == (slow, None)
    cfg, note = with_tuned(slow, engine, tmp_path, None, tuning_identity(slow, engine, None), 10.0)
    assert cfg.loadgen.target_qps is None and cfg.batching.max_queue_delay_us == 0  # batching applies
    assert note is not None and "target QPS 900 is not applied: it was VALID in 2 s trials and this run lasts 10 s" \
        in note
    cfg, _ = with_tuned(slow, engine, tmp_path, None, tuning_identity(slow, engine, None), 2.0)
    assert cfg.loadgen.target_qps == 900.0


def test_a_tune_outside_the_build_says_runs_need_config_to_use_it(tmp_path: Path) -> None:
    engine = NullEngine()
    best = Trial(3, "search", Setting(500.0), "VALID", 2.0, {"max_batch_size": 8, "max_queue_delay_us": 100,
                                                               "log_dir": "x"})
    cfg = RunConfig(Scenario.SERVER)
    identity = tuning_identity(cfg, engine, None)
    for root, said in ((tmp_path / "build" / "tune", "later runs on "), (tmp_path / "elsewhere", "later runs read ")):
        out = root / "one"
        out.mkdir(parents=True)
        last = write_outputs(out, cfg, engine, best, [best], root, identity, 2.0, tmp_path / "build" / "tune")[-1]
        assert last.startswith(said), last
    assert last.endswith(f"not this file: pass --config {system_file(tmp_path / 'elsewhere', this_system(engine))} "
                         f"to use it")


def test_tune_finds_the_null_engines_capacity(calibrated, tmp_path: Path) -> None:
    capacity = 1 / 50e-6  # one modelled device at 50 us per sample
    start = time.monotonic()
    done = run_cli("tune", "--scenario", "Server", "--engine", "null", "--null", "per_sample_us=50",
                   "--trial-duration", "2", "--build-dir", str(calibrated.root), "--tune-dir", str(tmp_path))
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stdout + done.stderr
    assert seconds < 120, seconds
    (folder,) = [p for p in tmp_path.iterdir() if p.name.endswith("_Server")]
    tuned = json.loads((folder / "tuned.json").read_text())
    best = tuned["best"]["target_qps"]
    assert abs(best - capacity) <= 0.05 * capacity, (best, done.stdout)
    with (folder / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == TRIAL_COLUMNS
    assert sum(r["validity"] == "VALID" and float(r["target_qps"]) == best for r in rows) >= 3
    assert sum(r["phase"] == "delay" for r in rows) == 2  # half and twice the derived delay, just above the rate
    assert "mobilenet.Server.target_qps" in (folder / "best.user.conf").read_text()
    record = json.loads((Path(rows[0]["log_dir"]) / "result.json").read_text())
    for key in ("schema_version", "asyncbench", "config", "engine", "batching", "loadgen_effective", "result",
                "metric", "latency_ns", "samples", "batch_sizes", "stage_seconds", "harness_latency", "environment"):
        assert key in record, key
    assert set(record["latency_ns"]) >= {"p50", "p90", "p95", "p99", "p99.9"}
    assert record["harness_latency"]["samples"] == record["samples"]["completed"]
    (per_system,) = (tmp_path / "systems").glob("*.json")
    assert f"not this file: pass --config {per_system} to use it" in done.stdout  # --tune-dir is not where runs read
    report = run_cli("report", str(folder), "--csv", str(tmp_path / "runs.csv"))
    assert report.returncode == 0 and report.stdout.count("\n") == len(rows) + 1  # header + one line per trial
    assert (tmp_path / "runs.csv").read_text().startswith("run,scenario")


def test_strict_exit_codes_and_json_on_stdout(calibrated, tmp_path: Path) -> None:
    common = ("--engine", "null", "--build-dir", str(calibrated.root), "--log-dir", str(tmp_path), "--strict")
    overloaded = run_cli("--scenario", "Server", "--null", "per_sample_us=1000", "--target-qps", "4000",
                         "--min-duration", "0.5", "--json", "-", *common)
    assert overloaded.returncode == 3, overloaded.stderr
    record = json.loads(next(line for line in overloaded.stdout.splitlines() if line.startswith("{")))
    assert record["result"]["validity"] == "INVALID" and record["result"]["reasons"]
    accuracy = run_cli("--scenario", "Offline", "--test-mode", "AccuracyOnly", *common)
    assert accuracy.returncode == 4  # the null engine answers class 0: 0% is below the target
    assert "accuracy=0.000%" in accuracy.stdout


def test_multistream_tune_picks_the_lowest_p99(calibrated, tmp_path: Path) -> None:
    done = run_cli("tune", "--scenario", "MultiStream", "--engine", "null", "--null", "fixed_us=300,per_sample_us=20",
                   "--grid", "max_batch=8,4", "--repeats", "2", "--trial-duration", "0.5",
                   "--build-dir", str(calibrated.root), "--tune-dir", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    (folder,) = [p for p in tmp_path.iterdir() if p.name.endswith("_MultiStream")]
    with (folder / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    grid = [r for r in rows if r["phase"] == "grid"]
    assert {int(r["max_batch_size"]) for r in grid} == {8, 4} and len(rows) == 3  # the grid, then one repeat
    valid = {int(r["max_batch_size"]): float(r["p99_ms"]) for r in grid if r["validity"] == "VALID"}
    tuned = json.loads((folder / "tuned.json").read_text())
    assert tuned["best"]["max_batch_size"] == min(valid, key=valid.get)  # the lowest VALID p99 wins
    assert "mobilenet.MultiStream.target_latency" in (folder / "best.user.conf").read_text()
    assert done.stdout.count("trial ") >= 3  # one progress line per trial


def test_one_unlucky_invalid_run_does_not_cap_the_search() -> None:
    run, log = _scripted(20_000, flaky={15_000.0: 1})  # the first run at 15k misses its p99 by bad luck
    best = ServerSearch(run).find(Setting(), 7_500)
    assert best >= 0.98 * 20_000
    assert [t.valid for t in log if t.setting.target_qps == 15_000.0][:2] == [False, True]


def test_trials_of_an_sut_too_fast_to_stop_quickly_are_shortened_not_invalid() -> None:
    from asyncbench.harness.plan import ABORT_QUERIES, plan_run
    from asyncbench.loadgen.sut import QueryCycle

    base = RunConfig(Scenario.MULTI_STREAM)
    cfg = trial_config(base, Setting(max_batch_size=8), 10.0)
    null_through_the_loop = QueryCycle(45e-6, 100e-6)
    plan = plan_run(cfg, 104, None, {}, cycle=null_through_the_loop)
    duration = plan.options.min_duration_s
    cap = ABORT_QUERIES[Scenario.MULTI_STREAM]
    assert duration is not None and duration * 1.5 / null_through_the_loop.fast_s <= cap
    assert plan.options.min_query_count == 662  # what LoadGen's early stopping needs, whatever the seconds
    slow = plan_run(cfg, 104, None, {}, cycle=QueryCycle(0.02, 0.025))
    assert slow.options.min_duration_s == 10.0  # a trial's length where the SUT allows it


def _trial_at(qps: float, delay_us: int | None, valid: bool = True) -> Trial:
    return Trial(1, "search", Setting(qps, None, None), "VALID" if valid else "INVALID", 5.0,
                 {"max_queue_delay_us": delay_us})


def test_without_a_grid_server_tune_tries_half_and_twice_the_derived_delay() -> None:
    trials = [_trial_at(2000.0, 900, valid=False), _trial_at(2033.0, 1967), _trial_at(2300.0, 1700, valid=False)]
    assert delay_grid(trials, 2033.0) == {"delay_us": (983, 3934)}
    assert delay_grid([_trial_at(500.0, 0)], 500.0) == {"delay_us": (500, 2000)}  # the policy derived no wait
    assert grid_settings(delay_grid(trials, 2033.0), 2033.0) == [Setting(2033.0, None, 983),
                                                                  Setting(2033.0, None, 3934)]


def test_an_overturned_bound_gives_way_to_the_next_invalid_rate_not_to_doubling() -> None:
    """A VALID repeat at the bound drops only that bound: the INVALID rates above it still hold,
    so the search does not double past rates it has already seen fail."""
    run, log = _scripted(21_000, flaky={20_625.0: 1})  # 40k ... 21.25k fail, then 20,625 misses once
    best = ServerSearch(run).find(Setting(), 5_000)
    assert 0.98 * 21_000 <= best <= 21_000
    rates = [t.setting.target_qps or 0.0 for t in log]
    overturned = next(i for i, t in enumerate(log) if t.setting.target_qps == 20_625.0 and t.valid)
    assert max(rates[overturned:]) <= 21_250, rates  # at most a recheck of the next INVALID rate
