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

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

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
ABORT_QUERIES = {Scenario.SINGLE_STREAM: 150_000, Scenario.MULTI_STREAM: 80_000}
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


def loadgen_bytes(scenario: Scenario, queries: float, samples_per_query: float = 1) -> float:
    """LoadGen's peak memory for a test that generates ``queries`` (Offline: samples) of that many samples."""
    if scenario is Scenario.OFFLINE:
        return queries * OFFLINE_SAMPLE_BYTES
    return queries * (QUERY_BYTES + SAMPLE_BYTES * samples_per_query)


def loadgen_fits_qps(memory_mb: float, duration_s: float) -> float:
    """The highest Server rate whose queries for ``duration_s`` fit in ``memory_mb`` of LoadGen memory."""
    return memory_mb * 1e6 / loadgen_bytes(Scenario.SERVER, 1) / max(duration_s, 1e-3)


@dataclass(frozen=True)
class Resolved:
    """One setting's value and what set it ("command line", "user.conf", "quick-run default", ...)."""

    value: float | None
    source: str


@dataclass(frozen=True)
class BuiltinDefaults:
    """The values of LoadGen's built-in mlperf.conf this harness falls back on, for one scenario."""

    min_duration_s: float
    server_target_latency_ns: int
    server_target_qps: float
    single_stream_expected_latency_ms: float
    multistream_expected_latency_ms: float


@functools.cache
def builtin_defaults(scenario: Scenario) -> BuiltinDefaults:
    """LoadGen's built-in values for ``scenario``, read once per process and scenario."""
    settings = builtin_settings(MODEL, scenario)
    return BuiltinDefaults(settings.min_duration_ms / 1000, settings.server_target_latency_ns,
                           settings.server_target_qps, settings.single_stream_expected_latency_ns / 1e6,
                           settings.multi_stream_expected_latency_ns / 1e6)


@dataclass(frozen=True)
class RunPlan:
    """The resolved settings of one run: every value LoadGen gets with its source, the options passed, the notes."""

    scenario: Scenario
    settings: Mapping[str, Resolved]  # in the order they were decided
    options: LoadGenOptions
    notes: tuple[str, ...] = ()
    conf_problems: tuple[str, ...] = ()
    target_latency_ns: int = SERVER_DEFAULT_TARGET_LATENCY_NS  # Server's p99 bound, for the batching policy
    duration_s: float = 0.0  # the minimum duration LoadGen runs for, from whichever source set it

    @property
    def values(self) -> dict[str, float]:
        """Setting -> value, for the settings that have one here."""
        return {k: r.value for k, r in self.settings.items() if r.value is not None}

    @property
    def sources(self) -> dict[str, str]:
        """Setting -> what set it."""
        return {k: r.source for k, r in self.settings.items()}

    def describe(self) -> str:
        """One line: every setting the harness decided, with its source."""
        parts = [f"{key} {r.value:g} ({r.source})" if r.value is not None else f"{key} ({r.source})"
                 for key, r in self.settings.items()]
        return "settings: " + (", ".join(parts) if parts else "LoadGen's own")


def _mlperf_conf_value(cfg: RunConfig, key: str) -> float | None:
    """``key`` for this scenario from ``--mlperf-conf`` (None without one, or where it does not set it)."""
    if cfg.loadgen.mlperf_conf is None:
        return None
    return read_conf(cfg.loadgen.mlperf_conf, "mlperf.conf").number(MODEL, cfg.scenario, key)


def max_target_qps(scenario: Scenario, duration_s: float, memory_mb: float) -> float:
    """The highest Server target / Offline expected QPS whose queries fit in ``memory_mb`` of LoadGen memory."""
    per_second = OFFLINE_SLACK if scenario is Scenario.OFFLINE else 1.0  # queries (Offline: samples) per QPS-second
    return memory_mb * 1e6 / loadgen_bytes(scenario, per_second) / max(duration_s, 1e-3)


class _Resolution:
    """The plan while it is being decided: values with their sources, notes, and what later steps need."""

    def __init__(self, cfg: RunConfig, total: int, available: int | None) -> None:
        lgc = cfg.loadgen
        self.cfg, self.total, self.lgc, self.scenario = cfg, total, lgc, cfg.scenario
        self.conf = read_conf(lgc.user_conf) if lgc.user_conf is not None else None
        self.quick = not lgc.submission_length and lgc.test_mode != TestMode.SUBMISSION_RUN
        self.quick_duration = lgc.quick_duration_s or cfg.preset.quick_min_duration_s
        self.settings: dict[str, Resolved] = {}
        self.notes: list[str] = []
        self.conf_problems: list[str] = []
        self.target_latency_ns = SERVER_DEFAULT_TARGET_LATENCY_NS
        self.duration = 0.0
        self.budget_mb = lgc.memory_mb
        self.available = available_memory_bytes() if available is None else available

    def from_conf(self, key: str, scenario: Scenario | None = None) -> float | None:
        """``key`` from user.conf for this scenario (or ``scenario``); None without a user.conf or the key."""
        return None if self.conf is None else self.conf.number(MODEL, scenario or self.scenario, key)

    def value(self, name: str) -> float | None:
        """The value decided for ``name`` (None: none here)."""
        return self.settings[name].value if name in self.settings else None

    def source(self, name: str) -> str | None:
        """What set ``name`` (None: nothing yet)."""
        return self.settings[name].source if name in self.settings else None

    def set(self, name: str, value: float | None, source: str) -> None:
        """Decide ``name``."""
        self.settings[name] = Resolved(value, source)

    def choose(self, name: str, explicit: float | None, conf_value: float | None, derived: float | None,
               derived_source: str, scale: float = 1.0) -> None:
        """Command line, then user.conf (left to LoadGen: it reads the file), then the derived value."""
        if explicit is not None:
            self.set(name, explicit, self.lgc.source_of(name))
        elif conf_value is not None:
            self.set(name, conf_value * scale, "user.conf")
        elif derived is not None:
            self.set(name, derived, derived_source)

    def explicit(self, name: str) -> float | None:
        """A value the harness passes itself: not one user.conf already sets (LoadGen reads that from the file)."""
        return None if self.source(name) == "user.conf" else self.value(name)

    def explicit_int(self, name: str) -> int | None:
        """``explicit`` as an integer."""
        value = self.explicit(name)
        return None if value is None else int(value)

    def announce_length(self, by_count_s: float, why: str) -> None:
        """A note with the run's estimated wall time where the query count, not the duration, sets it, or it is long."""
        if by_count_s > self.duration:
            self.notes.append(f"this run will take about {_seconds(by_count_s)}, not the {self.duration:g} s minimum "
                              f"duration: {why} set its length")
        elif self.duration > LONG_RUN_S:
            self.notes.append(f"this run will take about {_seconds(self.duration)} (its minimum duration)")

    def check_fits(self, key: str, what: str, queries: float, samples: float) -> None:
        """Refuse a value whose generated queries cannot fit in the memory this machine has free.

        LoadGen generates max(min_query_count, what ``key`` implies) queries: the larger one is named.
        """
        min_queries = self.value("min_query_count") or 0
        if min_queries > queries:
            key, what, queries, advice = "min_query_count", "min_query_count", min_queries, "lower min_query_count"
        else:
            advice = "lower the target QPS or the duration, or raise the expected latency"
        need = loadgen_bytes(self.scenario, queries, samples)
        if self.available is not None and need > 0.8 * self.available:
            raise ConfigError(
                f"{what} from {self.source(key) or 'mlperf.conf'} would make LoadGen generate {queries:.3g} queries "
                f"up front (~{need / 1e9:.3g} GB), more than the {self.available / 1e9:.3g} GB of memory available: "
                f"{advice}")

    def plan(self) -> RunPlan:
        """The frozen record, with the options LoadGen gets."""
        s, lgc = self.scenario, self.lgc
        options = LoadGenOptions(
            scenario=s, mode=lgc.test_mode,
            min_duration_s=self.explicit("min_duration_s"), target_qps=self.explicit("target_qps"),
            min_query_count=self.explicit_int("min_query_count"),
            performance_sample_count=self.explicit_int("performance_sample_count"),
            user_conf=lgc.user_conf, mlperf_conf=lgc.mlperf_conf,
            single_stream_expected_latency_ms=self.explicit("single_stream_expected_latency_ms"),
            multistream_expected_latency_ms=self.explicit("multistream_expected_latency_ms"),
            server_max_async_queries=self.explicit_int("server_max_async_queries"),
            server_target_latency_ms=lgc.server_target_latency_ms if s is Scenario.SERVER else None,
            **({} if lgc.rng_seeds is None else dict(zip(("qsl_rng_seed", "sample_index_rng_seed",
                                                          "schedule_rng_seed"), lgc.rng_seeds, strict=True))),
        )
        return RunPlan(s, MappingProxyType(dict(self.settings)), options, tuple(self.notes),
                       tuple(self.conf_problems), self.target_latency_ns, self.duration)


def plan_run(cfg: RunConfig, total: int, peak_qps: float | None, latency_s: dict[int, float | None], *,
             available: int | None = None, cycle: QueryCycle | None = None,
             capacity_qps: float | None = None) -> RunPlan:
    """Resolve every value LoadGen gets for ``cfg``; ``latency_s`` maps batch size to measured seconds.

    ``cycle``: the pipeline's measured seconds per SingleStream / MultiStream query; ``capacity_qps``:
    the samples/s the whole pipeline sustained under this scenario's batching (Server, Offline). The
    engine's own latency and batched peak are used without them.
    """
    r = _Resolution(cfg, total, available)
    _common(r)
    if cfg.scenario in (Scenario.SERVER, Scenario.OFFLINE):
        _throughput(r, peak_qps, capacity_qps)
        if cfg.scenario is Scenario.SERVER:
            _server_bounds(r, peak_qps, capacity_qps)
        _announce_throughput(r, capacity_qps or peak_qps)
    else:
        _stream(r, latency_s, cycle)
    lgc = cfg.loadgen
    if lgc.performance_sample_count is not None and lgc.performance_sample_count > total:
        raise ConfigError(f"--performance-sample-count {lgc.performance_sample_count} is more than the "
                          f"{total} samples of this dataset: use at most {total}")
    check_max_batch(cfg.batching.max_batch_size, int(r.value("performance_sample_count") or 0), r.available)
    return r.plan()


def _common(r: _Resolution) -> None:
    """Every scenario: user.conf's problems, the duration, the query count, the performance sample count."""
    lgc = r.lgc
    if r.conf is not None:
        r.conf_problems = r.conf.problems(MODEL)
        if r.conf_problems and lgc.strict:
            raise ConfigError(f"user.conf {lgc.user_conf}: LoadGen would ignore {'; '.join(r.conf_problems)} "
                              f"(--strict)")
        if (mode := r.conf.lookup(MODEL, r.scenario, "mode")) is not None:
            r.notes.append(f"user.conf sets mode = {mode}: the run uses --test-mode {lgc.test_mode}")
    r.choose("min_duration_s", lgc.min_duration_s, r.from_conf("min_duration"),
             r.quick_duration if r.quick else None, "quick-run default", 1e-3)
    duration = r.value("min_duration_s")
    if duration is None:
        mine = _mlperf_conf_value(r.cfg, "min_duration")
        duration = mine / 1000 if mine is not None else builtin_defaults(r.scenario).min_duration_s
        r.set("min_duration_s", None, "mlperf.conf")
    r.duration = duration
    r.choose("min_query_count", lgc.min_query_count, r.from_conf("min_query_count"),
             r.cfg.preset.quick_min_query_count if r.quick else None, "quick-run default")
    r.choose("performance_sample_count", lgc.performance_sample_count,
             r.from_conf("performance_sample_count_override"), min(r.total, 1024), "dataset size")


def _throughput(r: _Resolution, peak_qps: float | None, capacity_qps: float | None) -> None:
    """Server and Offline: the target QPS (derived from what was measured), bounded by LoadGen's memory."""
    offline = r.scenario is Scenario.OFFLINE
    load = OFFLINE_OVERESTIMATE if offline else SERVER_LOAD
    derived_target = derived_source = None
    if capacity_qps:
        derived_target = round(capacity_qps * load, 1)
        derived_source = f"pipeline's measured {capacity_qps:.0f}/s x {load:g}"
    elif peak_qps:
        derived_target = round(min(peak_qps, 500_000.0) * load, 1)
        derived_source = f"engine's measured peak x {load:g}"
    r.choose("target_qps", r.lgc.target_qps, r.from_conf("target_qps"), derived_target, derived_source or "")
    target = r.value("target_qps")
    if target is not None:
        per_second = OFFLINE_SLACK if offline else 1.0  # queries (Offline: samples) per QPS-second
        fits = max_target_qps(r.scenario, r.duration, r.budget_mb)
        derived = r.source("target_qps") != "user.conf" and r.lgc.target_qps is None
        if derived and target > fits and offline and r.source("min_duration_s") == "quick-run default":
            # A lower target would make the SUT finish early (INVALID by construction): a shorter run instead.
            shorter = round(r.budget_mb * 1e6 / loadgen_bytes(r.scenario, per_second) / target, 2)
            r.duration = shorter
            r.set("min_duration_s", shorter, "quick run shortened so its queries fit LoadGen's memory")
            r.notes.append(f"quick run of {shorter:g} s instead of {r.quick_duration:g} s: "
                           f"{r.quick_duration:g} s of queries at {target:g}/s would not fit "
                           f"in {r.budget_mb:g} MB of LoadGen memory (--loadgen-memory-mb)")
        elif derived and target > fits:
            r.set("target_qps", round(fits, 1), "memory bound")
            r.notes.append(f"target QPS {round(fits, 1):g} instead of the measured {target:g}: "
                           f"{r.duration:g} s of queries must fit in {r.budget_mb:g} MB of LoadGen memory "
                           f"(--loadgen-memory-mb, or pass --target-qps)")
        r.check_fits("target_qps", "target QPS", (r.value("target_qps") or target) * r.duration * per_second, 1)


def _announce_throughput(r: _Resolution, rate: float | None) -> None:
    """Server and Offline: the run's length where the query count or LoadGen's one Offline query sets it."""
    target = r.value("target_qps")
    if not target:
        return
    if r.scenario is Scenario.SERVER:
        min_queries = r.value("min_query_count") or 0
        r.announce_length(min_queries / target, f"{min_queries:g} queries (min_query_count) at {target:g} QPS")
    elif rate:
        samples = OFFLINE_SLACK * r.duration * target
        r.announce_length(samples / rate, f"LoadGen's one query of {samples:.0f} samples at the measured {rate:.0f}/s")


def _server_bounds(r: _Resolution, peak_qps: float | None, capacity_qps: float | None) -> None:
    """Server: the p99 bound LoadGen judges by, and how much LoadGen may hold outstanding before it stops."""
    lgc = r.lgc
    # The command line, user.conf, --mlperf-conf, LoadGen's built-in file.
    target_ms = lgc.server_target_latency_ms or r.from_conf("target_latency") or \
        _mlperf_conf_value(r.cfg, "target_latency")
    r.target_latency_ns = round(target_ms * 1e6) if target_ms else \
        builtin_defaults(r.scenario).server_target_latency_ns or SERVER_DEFAULT_TARGET_LATENCY_NS
    conf_async = r.from_conf("max_async_queries")
    if conf_async is None:
        hold = max(SERVER_HOLD_S, 20 * r.target_latency_ns / 1e9)
        rate = r.value("target_qps") or builtin_defaults(r.scenario).server_target_qps
        engine_rate = capacity_qps or peak_qps
        # What is outstanding when LoadGen gives up must still finish: at most ``hold`` of the SUT's work
        # (at 5,000 QPS on a 60/s engine, a second of queries took 82 s to drain, without a word).
        if engine_rate and rate > engine_rate:
            r.notes.append(f"target QPS {rate:g} is above the {engine_rate:.0f}/s measured: LoadGen will "
                           f"end the run early (INVALID) once {hold:g} s of the SUT's work is outstanding")
            rate = engine_rate
        r.set("server_max_async_queries", max(8, math.ceil(rate * hold)),
              f"{hold:g} s of queries, so Ctrl-C stops LoadGen")
    elif conf_async == 0:
        r.notes.append("user.conf sets max_async_queries = 0: after Ctrl-C or a failure LoadGen "
                       "keeps issuing until its schedule ends")


def _stream(r: _Resolution, latency_s: dict[int, float | None], cycle: QueryCycle | None) -> None:
    """SingleStream and MultiStream: the expected latency, bounded so the generated queries stay few."""
    single = r.scenario is Scenario.SINGLE_STREAM
    samples = 1 if single else (r.from_conf("samples_per_query") or MULTISTREAM_SAMPLES)
    key = "single_stream_expected_latency_ms" if single else "multistream_expected_latency_ms"
    engine_s = latency_s.get(int(samples))
    measured = cycle.fast_s if cycle is not None else engine_s
    typical = cycle.median_s if cycle is not None else engine_s
    cap = ABORT_QUERIES[r.scenario]
    if measured and r.quick:
        longest = cap * measured / QUERY_MARGIN  # seconds the bounded queries cover, with the margin
        if r.duration > longest and r.source("min_duration_s") == "quick-run default":
            r.duration = round(longest, 1)
            r.set("min_duration_s", r.duration, "quick run shortened so Ctrl-C stops it quickly")
            r.notes.append(
                f"quick run of {r.duration:g} s instead of {r.quick_duration:g} s: a query takes "
                f"{measured * 1e3:.3f} ms here, and LoadGen must issue all of its generated queries (at most "
                f"{cap}) before it can stop after Ctrl-C; pass --min-duration to choose the length")
        elif r.duration > cap * measured:
            r.notes.append(
                f"{r.duration:g} s at {measured * 1e3:.3f} ms per query needs more than the {cap} queries a quick "
                f"run generates (so that Ctrl-C stops it quickly): LoadGen will run out of queries and the "
                f"result will be INVALID; pass --submission-length or a shorter --min-duration")
    derived_ms = None
    if measured:
        floor = 2 * r.duration * loadgen_bytes(r.scenario, 1, samples) / (r.budget_mb * 1e6)
        if r.quick:
            floor = max(floor, 2 * r.duration / cap)
        derived_ms = max(measured, floor) * 1e3
    source = "measured per query through the pipeline" if cycle is not None else "engine's measured latency"
    r.choose(key, None, r.from_conf("target_latency"), derived_ms, source)
    if r.source(key) == source and measured and derived_ms is not None and derived_ms > measured * 1e3:
        r.set(key, derived_ms, "bounded so LoadGen's generated queries stay small")
        r.notes.append(f"expected latency {derived_ms:.3f} ms instead of the measured {measured * 1e3:.3f} ms: "
                       f"LoadGen generates 2 x duration / expected latency queries up front, which must "
                       f"stay within memory and be quick to drain on Ctrl-C")
    builtin = builtin_defaults(r.scenario)
    expected_ms = r.value(key) or (builtin.single_stream_expected_latency_ms if single
                                   else builtin.multistream_expected_latency_ms)
    r.check_fits(key, "expected latency", 2 * r.duration / (expected_ms / 1e3), samples)
    if typical:
        min_queries = r.value("min_query_count") or 0
        r.announce_length(min_queries * typical, f"{min_queries:g} queries (min_query_count) at the measured "
                          f"{typical * 1e3:.3f} ms each")


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


def _seconds(s: float) -> str:
    """A duration for a person: seconds, minutes or hours."""
    if s < 10:
        return f"{s:.1f} s"
    if s < 120:
        return f"{s:.0f} s"
    return f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"
