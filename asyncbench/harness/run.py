"""One scenario through LoadGen end to end: arena, plan, batching policy, the loop, logs and the report."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from asyncbench.config import RunConfig, Scenario, TestMode
from asyncbench.data.dataset import VAL_LAYOUT, Dataset, read_map, require_preprocessed
from asyncbench.data.qsl import SampleArena
from asyncbench.engines.base import DeviceTracer, Engine, RemoteEngine
from asyncbench.engines.sizing import engine_peak_qps
from asyncbench.errors import RunFailure, UserError
from asyncbench.harness.plan import (
    MULTISTREAM_SAMPLES,
    SERVER_DEFAULT_TARGET_LATENCY_NS,
    RunPlan,
    loadgen_fits_qps,
    plan_run,
)
from asyncbench.harness.policy import batch_policy, runs_inline
from asyncbench.harness.progress import Progress
from asyncbench.harness.report import format_report
from asyncbench.harness.result import build_result, write_result
from asyncbench.loadgen.accuracy import AccuracyResult, compute_accuracy, load_accuracy_log
from asyncbench.loadgen.logs import RunSummary, detail_errors, detail_values, parse_detail, parse_summary
from asyncbench.loadgen.settings import LoadGenOptions, build_test_settings, make_log_settings
from asyncbench.loadgen.sut import (
    INTERRUPTED,
    LoadGenCompleter,
    LoadGenTest,
    QueryCycle,
    SampleCounts,
    drive,
    measure_cycle,
    measure_throughput,
)
from asyncbench.runtime.batcher import BatchPolicy
from asyncbench.runtime.execution import Execution, execution_for
from asyncbench.runtime.inline import InlineDriver
from asyncbench.runtime.ledger import Driver, Ledger
from asyncbench.runtime.nvtx_ranges import NvtxRanges
from asyncbench.runtime.observer import Observer, Observers
from asyncbench.runtime.pipeline import Pipeline
from asyncbench.runtime.process import run_process
from asyncbench.runtime.timeline import Timeline

EVENTS_FILE = "asyncbench_events.jsonl"
TRACE_FILE = "mlperf_log_trace.json"
PROBE_SECONDS = 0.5  # the Server probe: a LoadGen test this long at the rate the pipeline took
PROBE_BACKLOG_S = 0.05  # it ends once this much of its schedule is outstanding (the pipeline fell behind)
FAILED_MARKER = "asyncbench_FAILED.txt"  # written into a run's log folder when samples were completed as failed


@dataclass(frozen=True)
class LoadGenLogs:
    """What LoadGen wrote about one test, whichever of its files it got to write."""

    summary: RunSummary | None
    effective: dict[str, object]  # LoadGen's effective_* values from the detail log (key without the prefix)
    errors: list[str]  # records LoadGen flagged as errors
    detail: dict[str, Any]  # every detail-log key's last value


@dataclass(frozen=True)
class RunResult:
    """What a finished run reports back to the CLI."""

    log_dir: Path
    summary: RunSummary | None
    failure: RunFailure | None
    histogram: dict[int, int]
    effective: dict[str, object]
    accuracy: AccuracyResult | None  # AccuracyOnly runs
    record: dict[str, Any]  # what result.json holds

def new_log_dir(root: Path, scenario: str) -> Path:
    """build/logs/<timestamp>_<scenario>/ plus a `latest` link to it, checked writable before any work."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = root / f"{stamp}_{scenario}"
    try:
        path.mkdir(parents=True, exist_ok=False)
        (path / EVENTS_FILE).touch()
    except OSError as e:
        raise UserError(f"cannot write the log folder {path}: {e.strerror or e}; "
                        f"pass --log-dir with a writable folder") from None
    latest = root / "latest"
    try:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(path.name)
    except OSError:
        pass  # a filesystem without symlinks still gets the run's own folder
    return path


@contextlib.contextmanager
def event_log(log_dir: Path) -> Iterator[structlog.typing.FilteringBoundLogger]:
    """A structlog JSON-lines logger writing to the run folder's event log; the file is closed with the run."""
    with (log_dir / EVENTS_FILE).open("a") as handle:
        yield structlog.wrap_logger(
            structlog.PrintLogger(file=handle),
            processors=[structlog.processors.TimeStamper(fmt="iso", utc=True), structlog.processors.JSONRenderer()],
        )


def dataset_arena(dataset: Dataset, preprocessed: Path, engine: Engine) -> SampleArena:
    """The engine's arena over the validation map's preprocessed samples (pinned for a GPU engine)."""
    names = [e.name for e in read_map(dataset.val_map)]
    folder = dataset.preprocessed_dir(preprocessed, VAL_LAYOUT)
    require_preprocessed(folder, names, "--val_only", preprocessed)
    return engine.make_arena(folder, names)


def plan_for(cfg: RunConfig, engine: Engine, arena: SampleArena) -> RunPlan:
    """The LoadGen plan for ``cfg`` from the engine's warm-up and the pilots through the pipeline."""
    latencies = {b: engine.latency(b) for b in (1, MULTISTREAM_SAMPLES) if b <= engine.capabilities.max_batch_size}
    first = plan_run(cfg, arena.total, engine_peak_qps(engine), latencies)
    # The pilot sizes a derived target: a rate given on the command line, by a tune trial or in user.conf needs none.
    if cfg.scenario in (Scenario.SERVER, Scenario.OFFLINE) and cfg.loadgen.target_qps is None \
            and first.sources.get("target_qps") != "user.conf" and cfg.loadgen.test_mode != TestMode.ACCURACY_ONLY:
        capacity = pilot_throughput(cfg, engine, arena, first.target_latency_ns)
        return plan_run(cfg, arena.total, engine_peak_qps(engine), latencies, capacity_qps=capacity)
    return plan_run(cfg, arena.total, engine_peak_qps(engine), latencies, cycle=pilot_cycle(cfg, engine, arena))


def pilot_throughput(cfg: RunConfig, engine: Engine, arena: SampleArena, target_latency_ns: int) -> float | None:
    """Server / Offline: the samples/s the pipeline sustains under the batching this run will use.

    Server is then probed through LoadGen itself at that rate: LoadGen's issue thread and its logger
    share the CPU with the pipeline (on 2 cores the null engine's pipeline took 480k/s from a Python
    issuer and sustained 150k/s under LoadGen), and what it completes is what the run can sustain.
    """
    policy, _ = batch_policy(cfg, engine, target_latency_ns)
    with run_process(cfg.process) as runner:
        rate = runner.run(measure_throughput(execution_for(engine, arena, policy.max_batch_size), arena, policy,
                                             server=cfg.scenario == Scenario.SERVER, timeout_s=cfg.engine.timeout_s))
        if rate is None or cfg.scenario != Scenario.SERVER:
            return rate
        rate = min(rate, loadgen_fits_qps(cfg.loadgen.memory_mb, PROBE_SECONDS))
        options = LoadGenOptions(scenario=Scenario.SERVER, target_qps=rate, min_duration_s=PROBE_SECONDS,
                                 min_query_count=1, performance_sample_count=min(arena.total, 1024),
                                 server_max_async_queries=max(8, math.ceil(rate * PROBE_BACKLOG_S)))
        settings, _ = build_test_settings(options)
        with tempfile.TemporaryDirectory(prefix="asyncbench-probe-") as tmp:
            execution = execution_for(engine, arena, policy.max_batch_size)
            test = LoadGenTest(settings, make_log_settings(Path(tmp)), min(arena.total, 1024),
                               Path(tmp) / "no-audit.config")
            probe, counts = runner.run(_test(
                lambda ledger: _loop_driver(execution, policy, ledger, cfg.engine.timeout_s),
                Ledger(LoadGenCompleter(), execution.times), arena, test, None))
            failure = probe.ledger.failure
            if failure is not None and str(failure).startswith(INTERRUPTED):
                raise KeyboardInterrupt  # Ctrl-C during the probe ends the command, not just the probe
            summary = parse_summary(Path(tmp) / "mlperf_log_summary.txt")
        if counts.failed or summary.metric_value is None:
            return None
        return min(rate, summary.metric_value)


def pilot_cycle(cfg: RunConfig, engine: Engine, arena: SampleArena) -> QueryCycle | None:
    """SingleStream / MultiStream through the loop: the pipeline's seconds per query, measured before LoadGen starts.

    The inline path (a device engine) has no hops to measure: its engine latency is the query's.
    """
    if cfg.scenario not in (Scenario.SINGLE_STREAM, Scenario.MULTI_STREAM) or runs_inline(cfg, engine) \
            or cfg.loadgen.test_mode == TestMode.ACCURACY_ONLY:
        return None
    policy, _ = batch_policy(cfg, engine, SERVER_DEFAULT_TARGET_LATENCY_NS)
    samples = 1 if cfg.scenario == Scenario.SINGLE_STREAM else MULTISTREAM_SAMPLES
    with run_process(cfg.process) as runner:  # the pipeline closes its execution when it ends
        return runner.run(measure_cycle(execution_for(engine, arena, policy.max_batch_size), arena, policy, samples,
                                        timeout_s=cfg.engine.timeout_s))


def audit_config_path(cfg: RunConfig, log_dir: Path, say: Callable[[str], None]) -> Path:
    """The audit.config LoadGen reads: the one asked for, else a path that cannot exist (never ./audit.config)."""
    if cfg.loadgen.audit_config is not None:
        say(f"note: applying audit config {cfg.loadgen.audit_config}: it overrides the test settings "
            f"(compliance test)")
        return cfg.loadgen.audit_config.resolve()
    if Path("audit.config").exists():
        say("note: ./audit.config is present and was ignored (LoadGen would apply it silently); "
            "pass --audit-config audit.config to run that compliance test")
    return log_dir / "no-audit.config"


def run_scenario(cfg: RunConfig, engine: Engine, dataset: Dataset, preprocessed: Path, log_dir: Path,
                 say: Callable[[str], None] = print, progress_every_s: float | None = None,
                 timeline_path: Path | None = None, nvtx: NvtxRanges | None = None) -> RunResult:
    """One scenario through LoadGen into ``log_dir``; prints notes as it goes and returns the parsed result.

    ``progress_every_s``: seconds between progress lines on stderr (None: none). ``timeline_path``:
    write a Chrome/Perfetto trace of every batch there. ``nvtx``: NVTX ranges per batch. A GPU
    engine's test runs between cudaProfilerStart and cudaProfilerStop.
    """
    timeline = Timeline() if timeline_path is not None else None
    arena = dataset_arena(dataset, preprocessed, engine)
    plan = plan_for(cfg, engine, arena)
    settings, notes = build_test_settings(plan.options)
    with event_log(log_dir) as events:
        policy, policy_note = batch_policy(cfg, engine, plan.target_latency_ns, plan.values.get("target_qps"))
        say(f"dataset {dataset.name}: {arena.total} samples ({dataset.val_map})")
        if plan.conf_problems:
            say(f"note: user.conf keys LoadGen ignores: {'; '.join(plan.conf_problems)}")
        say(plan.describe())
        for note in [*plan.notes, *notes, policy_note]:
            say(f"note: {note}")
        audit = audit_config_path(cfg, log_dir, say)
        events.info("run_start", scenario=cfg.scenario, mode=cfg.loadgen.test_mode, engine=engine.name,
                    loop=cfg.process.loop, max_batch_size=policy.max_batch_size,
                    max_queue_delay_ns=policy.max_queue_delay_ns, settings=plan.describe(),
                    notes=[*plan.notes, *notes], log_dir=str(log_dir),
                    audit_config=str(audit) if cfg.loadgen.audit_config else None)
        execution = execution_for(engine, arena, policy.max_batch_size)
        inline = runs_inline(cfg, engine)
        tracer = engine if timeline is not None and isinstance(engine, DeviceTracer) else None
        if tracer is not None:
            tracer.trace_devices()
        remote = engine if isinstance(engine, RemoteEngine) else None
        if remote is not None:
            remote.remote_begin(trace=timeline is not None)
        remote_record: dict[str, Any] | None = None
        observers: list[Observer] = [EventLog(events)]
        observers += [o for o in (timeline, nvtx) if o is not None]
        if progress_every_s is not None:
            observers.append(Progress(progress_every_s))
        test = LoadGenTest(settings, make_log_settings(log_dir, cfg.loadgen.trace),
                           settings.performance_sample_count_override or min(arena.total, 1024), audit)
        try:
            with run_process(cfg.process) as runner:
                timeout_s = cfg.engine.timeout_s
                pipeline, counts = runner.run(_test(
                    lambda ledger: InlineDriver(execution, policy.max_batch_size, ledger, timeout_s=timeout_s)
                    if inline else _loop_driver(execution, policy, ledger, timeout_s),
                    Ledger(LoadGenCompleter(), execution.times, observer=Observers(observers)), arena, test,
                    _profiler_range(engine.device)))
        finally:
            if tracer is not None and timeline is not None:
                timeline.add_device_spans(*tracer.device_spans())
            if remote is not None:
                remote_record, spans = remote.remote_end()
                if timeline is not None:
                    timeline.add_request_spans(spans, [s["url"] for s in remote_record["servers"]])
            if not cfg.loadgen.trace:
                _remove_empty(log_dir / TRACE_FILE)
        if timeline is not None and timeline_path is not None:
            events.info("timeline", path=str(timeline.write(timeline_path)), batches=len(timeline.batches),
                        device_batches=len(timeline.device_spans))
        logs = read_results(log_dir)
        summary, effective = logs.summary, logs.effective
        histogram = pipeline.histogram()
        ledger = pipeline.ledger
        failure = ledger.failure.details() if ledger.failure else None
        events.info("run_end", result=summary.result if summary is not None else None, failed=counts.failed,
                    issued=counts.issued, histogram=histogram, stage_seconds=vars(ledger.times),
                    effective={k: v for k, v in effective.items() if not k.endswith("rng_seed")},
                    loadgen_errors=logs.errors, **(failure or {"failure": None}))
    accuracy = None
    if cfg.loadgen.test_mode == TestMode.ACCURACY_ONLY and ledger.failure is None:
        accuracy = compute_accuracy(load_accuracy_log(log_dir / "mlperf_log_accuracy.json"),
                                    [e.label for e in read_map(dataset.val_map)], source=str(log_dir))
    record = build_result(
        cfg=cfg, engine_name=engine.name, device=engine.device, summary=summary, effective=effective,
        detail=logs.detail, failure=failure, histogram=histogram, stage_seconds=vars(ledger.times),
        policy={"max_batch_size": policy.max_batch_size, "max_queue_delay_us": policy.max_queue_delay_ns // 1000,
                "preferred_batch_sizes": list(policy.preferred_batch_sizes), "slots": execution.slots,
                "idle_gap_us": None if policy.idle_gap_ns is None else policy.idle_gap_ns / 1000,
                "inline": inline},
        counts={"issued": counts.issued, "completed": counts.completed, "failed": counts.failed},
        latency_histogram=ledger.latency.to_json(), accuracy=accuracy, log_dir=log_dir, remote=remote_record)
    write_result(log_dir, record)
    if accuracy is not None:  # the line a submission's accuracy folder holds (the checker reads accuracy=)
        (log_dir / "accuracy.txt").write_text(accuracy.line() + "\n")
    for note in [*effective_notes(plan, effective), *(f"LoadGen logged {e}" for e in logs.errors)]:
        say(f"note: {note}")
    say(format_report(cfg, engine.name, summary, pipeline, log_dir, effective, counts))
    for line in remote_lines(remote_record):
        say(line)
    if accuracy is not None:
        say(accuracy.line())
    if ledger.failure:
        (log_dir / FAILED_MARKER).write_text(
            f"FAILED: {ledger.failure}\n{counts.failed} of {counts.issued} samples were completed as failed "
            f"(no data). LoadGen 6.0 has no error response, so mlperf_log_summary.txt cannot show this: "
            f"this run is not valid.\n")
        say(f"error: run failed: {ledger.failure} ({counts.failed} of {counts.issued} samples completed as failed; "
            f"LoadGen logs in {log_dir})")
    return RunResult(log_dir, summary, ledger.failure, histogram, effective, accuracy, record)


class EventLog(Observer):
    """The run's event log as an observer: the closing facts of the pipeline go in as one event."""

    def __init__(self, log: structlog.typing.FilteringBoundLogger) -> None:
        self._log = log

    def finished(self, **facts: object) -> None:
        self._log.info("pipeline_done", **facts)


def _loop_driver(execution: Execution, policy: BatchPolicy, ledger: Ledger, timeout_s: float | None) -> Driver:
    """The loop pipeline on the running loop (its inbox needs the loop LoadGen's thread hands calls to)."""
    return Pipeline(execution, policy, ledger, timeout_s=timeout_s, loop=asyncio.get_running_loop())


async def _test(make_driver: Callable[[Ledger], Driver], ledger: Ledger, arena: SampleArena, test: LoadGenTest,
                around_test: contextlib.AbstractContextManager[object] | None) -> tuple[Driver, SampleCounts]:
    """One LoadGen test through the driver ``make_driver`` builds on the running loop; the driver and the counts."""
    driver = make_driver(ledger)
    return driver, await drive(driver, arena, test, around_test=around_test)


def _remove_empty(path: Path) -> None:
    """LoadGen creates its trace file even with tracing off: an empty one is only clutter in the run folder."""
    with contextlib.suppress(OSError):
        if path.stat().st_size == 0:
            path.unlink()


def _profiler_range(device: str) -> contextlib.AbstractContextManager[object] | None:
    """The CUDA profiler's capture range for a GPU engine's test (None on the CPU: nothing to capture)."""
    if not device.startswith("cuda"):
        return None
    from asyncbench.cuda.api import profiler_range

    return profiler_range()


def read_results(log_dir: Path) -> LoadGenLogs:
    """LoadGen's summary, and from its detail log the effective settings, the errors it logged and every value."""
    summary_path, detail_path = log_dir / "mlperf_log_summary.txt", log_dir / "mlperf_log_detail.txt"
    try:
        summary = parse_summary(summary_path) if summary_path.is_file() else None
        values: dict[str, Any] = {}
        errors: list[str] = []
        if detail_path.is_file():
            records = parse_detail(detail_path)
            values = detail_values(records)
            errors = detail_errors(records)
        effective = {k.removeprefix("effective_"): v for k, v in values.items() if k.startswith("effective_")}
    except UserError:
        free = shutil.disk_usage(log_dir).free
        if free < 1 << 20:
            raise UserError(f"LoadGen could not finish its logs in {log_dir}: the disk is full ({free} bytes free); "
                            f"free some space and run again") from None
        raise
    return LoadGenLogs(summary, effective, errors, values)


def remote_lines(record: dict[str, Any] | None) -> list[str]:
    """Per server of a remote engine: its share of the batches, the round trip, and the server's own time."""
    if record is None:
        return []
    lines = []
    for s in record["servers"]:
        line = f"server {s['url']}: {s['batches']} batches / {s['samples']} samples"
        if s["round_trip_ms"] is not None:
            line += f", round trip {s['round_trip_ms']:.3f} ms"
        side = s["server"]
        if side is not None and side["request_ms"] is not None:
            parts = [f"{k.removesuffix('_ms').replace('_', ' ')} {side[k]:.3f}"
                     for k in ("queue_ms", "compute_input_ms", "compute_infer_ms", "compute_output_ms")
                     if side[k] is not None]
            line += f"; in the server {side['request_ms']:.3f} ms per request ({', '.join(parts)})"
        if s["down"]:
            line += f"; taken out: {s['down']}"
        lines.append(line)
    if record["retried_batches"]:
        lines.append(f"note: {record['retried_batches']} batch(es) were sent again to another server after theirs "
                     f"became unreachable")
    return lines


def effective_notes(plan: RunPlan, effective: dict[str, object]) -> list[str]:
    """Where LoadGen ran with other values than the harness passed (an audit config, LoadGen's own rules)."""
    o = plan.options
    asked: dict[str, float | str | None] = {
        "target_qps": o.target_qps if o.scenario in (Scenario.SERVER, Scenario.OFFLINE) else None,
        "min_duration_ms": None if o.min_duration_s is None else round(o.min_duration_s * 1000),
        "min_query_count": None if o.min_query_count is None or o.scenario is Scenario.OFFLINE else o.min_query_count,
        "performance_sample_count": o.performance_sample_count,
        "max_async_queries": o.server_max_async_queries,
        "test_mode": o.mode,
    }
    notes = []
    for key, value in asked.items():
        got = effective.get(key)
        if value is None or got is None:
            continue
        # LoadGen prints doubles with 6 significant digits.
        same = str(got) == value if isinstance(value, str) else math.isclose(float(str(got)), value, rel_tol=1e-5)
        if not same:
            notes.append(f"LoadGen ran with {key} {got}, not the {value} asked for")
    return notes
