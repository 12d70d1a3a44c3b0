"""What one run tells LoadGen: the settings' precedence, their sources, and the bounds that keep a run safe.

Precedence, lowest first: LoadGen's built-in mlperf.conf, ``--mlperf-conf``, the values this harness
derives (quick-run durations, the engine's measured peak as the target, its measured latencies as
the expected ones, the performance sample count from the dataset), ``--user-conf``, and then the
options given on the command line. A derived value is only used where neither user.conf nor the
command line sets that key.

Two bounds apply on top, because LoadGen generates every query of a test before it issues the first:

* memory: LoadGen's peak resident memory grows with the queries it generates (``loadgen_bytes``,
  measured with ``benchmarks/loadgen_memory.py``). Derived values are bounded so they fit in
  ``--loadgen-memory-mb``; an explicit value that cannot fit in the memory available is refused.
* stopping: LoadGen has no call to end a test early. After Ctrl-C, SingleStream and MultiStream
  end when LoadGen runs out of generated queries: it issues every one that is left (each completed at
  once, 2-5 us apiece at LoadGen's own floor, 5-11 us measured in a run on 2 cores), so a quick run
  generates at most ``ABORT_QUERIES`` of them. A quick run whose default duration would need more
  (an SUT faster than about duration / ABORT_QUERIES per query, such as the null engine) is made
  shorter instead; an explicit duration that needs more is kept, and the run is said to end early.
  Server ends when more than ``server_max_async_queries`` are outstanding, so that limit is set to
  about one second of queries (far above what a run that can meet its latency target ever holds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from asyncbench.config import RunConfig, Scenario, TestMode
from asyncbench.contract import SAMPLE_BYTES as SAMPLE_INPUT_BYTES
from asyncbench.errors import ConfigError
from asyncbench.loadgen.settings import LoadGenOptions, builtin_settings, read_conf
from asyncbench.loadgen.sut import QueryCycle

MODEL = "mobilenet"
MULTISTREAM_SAMPLES = 8  # mlperf.conf's samples per MultiStream query
SERVER_DEFAULT_TARGET_LATENCY_NS = 10_000_000

# LoadGen 6.0 peak resident bytes per generated query and per sample in it, and per Offline sample
# (benchmarks/loadgen_memory.py on x86-64 Linux: 1M SingleStream queries 0.43 GB, 1M MultiStream 0.74 GB,
# 5M Offline samples 2.4 GB).
QUERY_BYTES = 360
SAMPLE_BYTES = 45
OFFLINE_SAMPLE_BYTES = 470
# Offline's derived expected QPS overestimates what the pipeline sustained before the run: LoadGen
# sizes its one query from it, and a query the SUT finishes before min_duration is INVALID (seen: GPU
# peak measured 41,165, achieved 48,711; on the shared 2-core CPU the same pipeline did 121-134/s and
# then 278/s a minute later), while extra samples only make the run longer.
OFFLINE_OVERESTIMATE = 2.0
# Server's derived target: this share of what the pipeline sustained under the Server policy (a
# backlog of work), leaving the queueing headroom a p99 bound needs.
SERVER_LOAD = 0.35
OFFLINE_SLACK = 1.1  # LoadGen's Offline query holds 1.1 x duration x expected QPS samples
DEFAULT_MEMORY_BUDGET_MB = 1024

# Generated queries a quick run may leave for LoadGen to issue after an abort. The drain measured in a
# SingleStream run on 2 cores: 357k queries in 1.7 s (4.8 us each) and then 0.3 s for LoadGen to process
# their latencies; MultiStream 6-11 us per query. These bounds keep a stop under 1 s there, and under
# 2 s on a CPU twice as slow.
ABORT_QUERIES = {"SingleStream": 150_000, "MultiStream": 80_000}
# A shortened quick run asks for at most 1 / QUERY_MARGIN of the generated queries, so a stretch up to
# that much faster than the measured (fast-end) cycle still ends naturally instead of running out.
QUERY_MARGIN = 1.5
LONG_RUN_S = 600.0  # a run estimated longer than this is announced with its length
BATCH_BUFFERS = 4  # batches of the largest size held at once: slots being gathered and run, plus warm-up's
SERVER_HOLD_S = 1.0  # Server: seconds of queries LoadGen may have outstanding before it stops issuing


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def loadgen_bytes(scenario: str, queries: float, samples_per_query: float = 1) -> float:
    """LoadGen's peak memory for a test that generates ``queries`` (Offline: samples) of that many samples."""
    if scenario == "Offline":
        return queries * OFFLINE_SAMPLE_BYTES
    return queries * (QUERY_BYTES + SAMPLE_BYTES * samples_per_query)


def loadgen_fits_qps(memory_mb: float, duration_s: float) -> float:
    """The highest Server rate whose queries for ``duration_s`` fit in ``memory_mb`` of LoadGen memory."""
    return memory_mb * 1e6 / loadgen_bytes("Server", 1) / max(duration_s, 1e-3)


@dataclass
class RunPlan:
    """The options for LoadGen, where each came from, and the notes to print."""

    options: LoadGenOptions
    sources: dict[str, str] = field(default_factory=dict)  # setting -> "command line", "user.conf", ...
    values: dict[str, float] = field(default_factory=dict)  # setting -> the value from that source
    notes: list[str] = field(default_factory=list)
    conf_problems: list[str] = field(default_factory=list)
    target_latency_ns: int = SERVER_DEFAULT_TARGET_LATENCY_NS  # Server's p99 bound, for the batching policy
    duration_s: float = 0.0  # the minimum duration LoadGen runs for, from whichever source set it

    def describe(self) -> str:
        """One line: every setting the harness decided, with its source."""
        parts = [f"{key} {value:g} ({source})" if (value := self.values.get(key)) is not None else f"{key} ({source})"
                 for key, source in self.sources.items()]
        return "settings: " + (", ".join(parts) if parts else "LoadGen's own")


def _mlperf_conf_value(cfg: RunConfig, key: str) -> float | None:
    """``key`` for this scenario from ``--mlperf-conf`` (None without one, or where it does not set it)."""
    if cfg.loadgen.mlperf_conf is None:
        return None
    return read_conf(cfg.loadgen.mlperf_conf, "mlperf.conf").number(MODEL, cfg.scenario, key)


def _conf_duration_s(cfg: RunConfig) -> float:
    """The minimum duration from ``--mlperf-conf``, else LoadGen's built-in mlperf.conf (a submission-length run)."""
    mine = _mlperf_conf_value(cfg, "min_duration")
    if mine is not None:
        return mine / 1000
    return builtin_settings(MODEL, cfg.scenario).min_duration_ms / 1000


def max_target_qps(scenario: str, duration_s: float, memory_mb: float) -> float:
    """The highest Server target / Offline expected QPS whose queries fit in ``memory_mb`` of LoadGen memory."""
    per_second = OFFLINE_SLACK if scenario == "Offline" else 1.0  # queries (Offline: samples) per QPS-second
    return memory_mb * 1e6 / loadgen_bytes(scenario, per_second) / max(duration_s, 1e-3)


def plan_run(cfg: RunConfig, total: int, peak_qps: float | None, latency_s: dict[int, float | None], *,
             available: int | None = None, cycle: QueryCycle | None = None,
             capacity_qps: float | None = None) -> RunPlan:
    """Resolve every value LoadGen gets for ``cfg``; ``latency_s`` maps batch size to measured seconds.

    ``cycle``: the pipeline's measured seconds per SingleStream / MultiStream query; ``capacity_qps``:
    the samples/s the whole pipeline sustained under this scenario's batching (Server, Offline). The
    engine's own latency and batched peak are used without them.
    """
    lgc = cfg.loadgen
    conf = read_conf(lgc.user_conf) if lgc.user_conf is not None else None
    scenario = cfg.scenario
    quick = not lgc.submission_length and lgc.test_mode != TestMode.SUBMISSION_RUN
    plan = RunPlan(LoadGenOptions(scenario=scenario, mode=lgc.test_mode))
    if conf is not None:
        plan.conf_problems = conf.problems(MODEL)
        if plan.conf_problems and lgc.strict:
            raise ConfigError(f"user.conf {lgc.user_conf}: LoadGen would ignore {'; '.join(plan.conf_problems)} "
                              f"(--strict)")
        if (mode := conf.lookup(MODEL, scenario, "mode")) is not None:
            plan.notes.append(f"user.conf sets mode = {mode}: the run uses --test-mode {lgc.test_mode}")

    def from_conf(key: str, scenario_key: str | None = None) -> float | None:
        return None if conf is None else conf.number(MODEL, scenario_key or scenario, key)

    values = plan.values

    def choose(name: str, explicit: float | None, conf_value: float | None, derived: float | None,
               derived_source: str, scale: float = 1.0) -> None:
        """Command line, then user.conf (left to LoadGen: it reads the file), then the derived value."""
        if explicit is not None:
            values[name], plan.sources[name] = explicit, lgc.source_of(name)
        elif conf_value is not None:
            values[name], plan.sources[name] = conf_value * scale, "user.conf"
        elif derived is not None:
            values[name], plan.sources[name] = derived, derived_source

    quick_duration = lgc.quick_duration_s or cfg.preset.quick_min_duration_s
    choose("min_duration_s", lgc.min_duration_s, from_conf("min_duration"),
           quick_duration if quick else None, "quick-run default", 1e-3)
    if "min_duration_s" in values:
        duration = values["min_duration_s"]
    else:
        duration, plan.sources["min_duration_s"] = _conf_duration_s(cfg), "mlperf.conf"
    plan.duration_s = duration
    choose("min_query_count", lgc.min_query_count, from_conf("min_query_count"),
           cfg.preset.quick_min_query_count if quick else None, "quick-run default")
    choose("performance_sample_count", lgc.performance_sample_count, from_conf("performance_sample_count_override"),
           min(total, 1024), "dataset size")

    memory_budget_mb = lgc.memory_mb
    budget = memory_budget_mb * 1e6
    available = available_memory_bytes() if available is None else available
    min_queries = values.get("min_query_count") or 0

    if scenario in ("Server", "Offline"):
        load = OFFLINE_OVERESTIMATE if scenario == "Offline" else SERVER_LOAD
        derived_target = derived_source = None
        if capacity_qps:
            derived_target = round(capacity_qps * load, 1)
            derived_source = f"pipeline's measured {capacity_qps:.0f}/s x {load:g}"
        elif peak_qps:
            derived_target = round(min(peak_qps, 500_000.0) * load, 1)
            derived_source = f"engine's measured peak x {load:g}"
        choose("target_qps", lgc.target_qps, from_conf("target_qps", scenario), derived_target, derived_source or "")
        target = values.get("target_qps")
        per_second = OFFLINE_SLACK if scenario == "Offline" else 1.0  # queries (Offline: samples) per QPS-second
        if target is not None:
            fits = max_target_qps(scenario, duration, memory_budget_mb)
            derived = plan.sources["target_qps"] != "user.conf" and lgc.target_qps is None
            if derived and target > fits and scenario == "Offline" and \
                    plan.sources["min_duration_s"] == "quick-run default":
                # A lower target would make the SUT finish early (INVALID by construction): a shorter run instead.
                shorter = round(budget / loadgen_bytes(scenario, per_second) / target, 2)
                duration = values["min_duration_s"] = shorter
                plan.sources["min_duration_s"] = "quick run shortened so its queries fit LoadGen's memory"
                plan.notes.append(f"quick run of {shorter:g} s instead of {quick_duration:g} s: "
                                  f"{quick_duration:g} s of queries at {target:g}/s would not fit "
                                  f"in {memory_budget_mb:g} MB of LoadGen memory (--loadgen-memory-mb)")
            elif derived and target > fits:
                values["target_qps"] = round(fits, 1)
                plan.sources["target_qps"] = "memory bound"
                plan.notes.append(f"target QPS {values['target_qps']:g} instead of the measured {target:g}: "
                                  f"{duration:g} s of queries must fit in {memory_budget_mb:g} MB of LoadGen memory "
                                  f"(--loadgen-memory-mb, or pass --target-qps)")
            _check_fits(plan, "target_qps", "target QPS", scenario, values["target_qps"] * duration * per_second,
                        min_queries, 1, available)
        if scenario == Scenario.SERVER:
            # The p99 bound LoadGen will judge by: the command line, user.conf, --mlperf-conf, LoadGen's built-in file.
            target_ms = lgc.server_target_latency_ms or from_conf("target_latency") or \
                _mlperf_conf_value(cfg, "target_latency")
            plan.target_latency_ns = round(target_ms * 1e6) if target_ms else \
                builtin_settings(MODEL, scenario).server_target_latency_ns or SERVER_DEFAULT_TARGET_LATENCY_NS
            latency_limit = plan.target_latency_ns / 1e9
            conf_async = from_conf("max_async_queries", "Server")
            if conf_async is None:
                hold = max(SERVER_HOLD_S, 20 * latency_limit)
                rate = values.get("target_qps") or builtin_settings(MODEL, scenario).server_target_qps
                engine_rate = capacity_qps or peak_qps
                # What is outstanding when LoadGen gives up must still finish: at most ``hold`` of the SUT's work
                # (at 5,000 QPS on a 60/s engine, a second of queries took 82 s to drain, without a word).
                if engine_rate and rate > engine_rate:
                    plan.notes.append(f"target QPS {rate:g} is above the {engine_rate:.0f}/s measured: LoadGen will "
                                      f"end the run early (INVALID) once {hold:g} s of the SUT's work is outstanding")
                    rate = engine_rate
                values["server_max_async_queries"] = max(8, math.ceil(rate * hold))
                plan.sources["server_max_async_queries"] = f"{hold:g} s of queries, so Ctrl-C stops LoadGen"
            elif conf_async == 0:
                plan.notes.append("user.conf sets max_async_queries = 0: after Ctrl-C or a failure LoadGen "
                                  "keeps issuing until its schedule ends")
    else:
        samples = 1 if scenario == "SingleStream" else (
            from_conf("samples_per_query", "MultiStream") or MULTISTREAM_SAMPLES)
        key = "single_stream_expected_latency_ms" if scenario == "SingleStream" else "multistream_expected_latency_ms"
        engine_s = latency_s.get(int(samples))
        measured = cycle.fast_s if cycle is not None else engine_s
        typical = cycle.median_s if cycle is not None else engine_s
        if measured and quick:
            cap = ABORT_QUERIES[scenario]
            longest = cap * measured / QUERY_MARGIN  # seconds the bounded queries cover, with the margin
            if duration > longest and plan.sources["min_duration_s"] == "quick-run default":
                duration = values["min_duration_s"] = round(longest, 1)
                plan.sources["min_duration_s"] = "quick run shortened so Ctrl-C stops it quickly"
                plan.notes.append(
                    f"quick run of {duration:g} s instead of {quick_duration:g} s: a query takes "
                    f"{measured * 1e3:.3f} ms here, and LoadGen must issue all of its generated queries (at most "
                    f"{cap}) before it can stop after Ctrl-C; pass --min-duration to choose the length")
            elif duration > cap * measured:
                plan.notes.append(
                    f"{duration:g} s at {measured * 1e3:.3f} ms per query needs more than the {cap} queries a quick "
                    f"run generates (so that Ctrl-C stops it quickly): LoadGen will run out of queries and the "
                    f"result will be INVALID; pass --submission-length or a shorter --min-duration")
        derived_ms = None
        if measured:
            memory_floor = 2 * duration * loadgen_bytes(scenario, 1, samples) / budget
            floor = memory_floor
            if quick:
                floor = max(floor, 2 * duration / ABORT_QUERIES[scenario])
            derived_ms = max(measured, floor) * 1e3
        source = "measured per query through the pipeline" if cycle is not None else "engine's measured latency"
        choose(key, None, from_conf("target_latency", scenario), derived_ms, source)
        if plan.sources.get(key) == source and measured and derived_ms is not None \
                and derived_ms > measured * 1e3:
            plan.sources[key] = "bounded so LoadGen's generated queries stay small"
            plan.notes.append(f"expected latency {derived_ms:.3f} ms instead of the measured {measured * 1e3:.3f} ms: "
                              f"LoadGen generates 2 x duration / expected latency queries up front, which must "
                              f"stay within memory and be quick to drain on Ctrl-C")
        expected_ms = values.get(key) or (builtin_settings(MODEL, scenario).single_stream_expected_latency_ns
                                          if scenario == "SingleStream" else
                                          builtin_settings(MODEL, scenario).multi_stream_expected_latency_ns) / 1e6
        _check_fits(plan, key, "expected latency", scenario, 2 * duration / (expected_ms / 1e3), min_queries,
                    samples, available)
        if typical:
            _announce_length(plan, duration, min_queries * typical, f"{min_queries:g} queries (min_query_count) at "
                             f"the measured {typical * 1e3:.3f} ms each")
    if scenario == Scenario.SERVER and values.get("target_qps"):
        _announce_length(plan, duration, min_queries / values["target_qps"],
                         f"{min_queries:g} queries (min_query_count) at {values['target_qps']:g} QPS")
    if scenario == Scenario.OFFLINE and values.get("target_qps") and (rate := capacity_qps or peak_qps):
        samples = OFFLINE_SLACK * duration * values["target_qps"]
        _announce_length(plan, duration, samples / rate, f"LoadGen's one query of {samples:.0f} samples at the "
                         f"measured {rate:.0f}/s")

    if lgc.performance_sample_count is not None and lgc.performance_sample_count > total:
        raise ConfigError(f"--performance-sample-count {lgc.performance_sample_count} is more than the "
                          f"{total} samples of this dataset: use at most {total}")
    check_max_batch(cfg.batching.max_batch_size, int(values["performance_sample_count"]), available)
    plan.options = LoadGenOptions(
        scenario=scenario, mode=lgc.test_mode,
        min_duration_s=_explicit(values, plan, "min_duration_s"), target_qps=_explicit(values, plan, "target_qps"),
        min_query_count=_int(values, plan, "min_query_count"),
        performance_sample_count=_int(values, plan, "performance_sample_count"),
        user_conf=lgc.user_conf, mlperf_conf=lgc.mlperf_conf,
        single_stream_expected_latency_ms=_explicit(values, plan, "single_stream_expected_latency_ms"),
        multistream_expected_latency_ms=_explicit(values, plan, "multistream_expected_latency_ms"),
        server_max_async_queries=_int(values, plan, "server_max_async_queries"),
        server_target_latency_ms=lgc.server_target_latency_ms if scenario == Scenario.SERVER else None,
    )
    return plan


def check_max_batch(max_batch: int | None, samples: int, available: int | None, what: str = "--max-batch-size"
                    ) -> None:
    """Refuse a batch cap above the samples LoadGen loads, or one whose input buffers cannot fit in memory.

    The engine prepares (and warm-up runs) every batch size up to the cap before LoadGen starts, so an
    absurd cap would allocate gigabytes first; a batch larger than the loaded samples only repeats them.
    """
    if max_batch is None:
        return
    if max_batch > samples:
        raise ConfigError(f"{what} {max_batch} is more than the {samples} samples LoadGen loads "
                          f"(performance sample count): use at most {samples}")
    need = max_batch * SAMPLE_INPUT_BYTES * BATCH_BUFFERS
    if available is not None and need > 0.5 * available:
        raise ConfigError(f"{what} {max_batch} needs ~{need / 1e9:.3g} GB of batch buffers, more than half the "
                          f"{available / 1e9:.3g} GB of memory available: use a smaller batch")


def _announce_length(plan: RunPlan, duration: float, by_count_s: float, why: str) -> None:
    """A note with the run's estimated wall time where the query count, not the duration, sets it, or it is long."""
    if by_count_s > duration:
        plan.notes.append(f"this run will take about {_seconds(by_count_s)}, not the {duration:g} s minimum duration: "
                          f"{why} set its length")
    elif duration > LONG_RUN_S:
        plan.notes.append(f"this run will take about {_seconds(duration)} (its minimum duration)")


def _seconds(s: float) -> str:
    """A duration for a person: seconds, minutes or hours."""
    if s < 10:
        return f"{s:.1f} s"
    if s < 120:
        return f"{s:.0f} s"
    return f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _explicit(values: dict[str, float], plan: RunPlan, key: str) -> float | None:
    """A value the harness passes itself: not one user.conf already sets (LoadGen reads that from the file)."""
    return None if plan.sources.get(key) == "user.conf" else values.get(key)


def _int(values: dict[str, float], plan: RunPlan, key: str) -> int | None:
    value = _explicit(values, plan, key)
    return None if value is None else int(value)


def _check_fits(plan: RunPlan, key: str, what: str, scenario: str, queries: float, min_queries: float,
                samples: float, available: int | None) -> None:
    """Refuse a value whose generated queries cannot fit in the memory this machine has free.

    LoadGen generates max(min_query_count, what ``key`` implies) queries: the larger one is named.
    """
    if min_queries > queries:
        key, what, queries, advice = "min_query_count", "min_query_count", min_queries, "lower min_query_count"
    else:
        advice = "lower the target QPS or the duration, or raise the expected latency"
    need = loadgen_bytes(scenario, queries, samples)
    if available is not None and need > 0.8 * available:
        raise ConfigError(
            f"{what} from {plan.sources.get(key, 'mlperf.conf')} would make LoadGen generate {queries:.3g} queries "
            f"up front (~{need / 1e9:.3g} GB), more than the {available / 1e9:.3g} GB of memory available: {advice}")
