"""One LoadGen run end to end: engine, QSL arena, batching policy, event loop, logs, summary.

Threads: the event loop (uvloop unless asked otherwise) owns the pipeline. LoadGen's StartTest
runs on its own thread; its issue callback only hands each call's (ids, indices) lists to the loop
with one call_soon_threadsafe, and never raises. CPU engine work runs on the pipeline's worker
threads; GPU work is enqueued from the loop and its completion comes back from a per-device thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import math
import os
import shutil
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import mlperf_loadgen as lg
import numpy as np
import structlog

from asyncbench.config import RunConfig
from asyncbench.data.dataset import VAL_LAYOUT, Dataset, read_map, require_preprocessed
from asyncbench.data.qsl import SampleArena
from asyncbench.engines.base import Engine
from asyncbench.errors import UserError
from asyncbench.loadgen.logs import RunSummary, detail_values, parse_detail, parse_summary
from asyncbench.loadgen.plan import MULTISTREAM_SAMPLES, RunPlan, plan_run
from asyncbench.loadgen.settings import build_test_settings, make_log_settings
from asyncbench.runtime.batcher import BatchPolicy
from asyncbench.runtime.inbox import Inbox
from asyncbench.runtime.pipeline import Pipeline

SERVER_DEFAULT_TARGET_NS = 10_000_000
CPU_INFLIGHT = 2  # batches in a CPU engine at once: one computing, one being gathered
FAILED_MARKER = "asyncbench_FAILED.txt"  # written into a run's log folder when samples were completed as failed


@dataclass(frozen=True)
class RunResult:
    """What a finished run reports back to the CLI."""

    log_dir: Path
    summary: RunSummary | None
    failure: str | None
    histogram: dict[int, int]
    exit_code: int
    effective: dict[str, object]  # LoadGen's effective_* values from the detail log (key without the prefix)


class LoadGenCompleter:
    """One QuerySamplesComplete per batch, from response objects reused across batches.

    Building a QuerySampleResponse per sample was the event loop's largest cost at Server rates
    (a profile at 80k QPS). Here response k always points at slot k of one int32 buffer: a batch
    copies its top-1 into the buffer and only sets each response's id (about 0.3 us per sample
    against 0.9 us to construct one). QuerySamplesComplete copies what it needs before it
    returns, and completions run one at a time on the loop thread, so one pool serves every batch.
    """

    def __init__(self) -> None:
        self._ok: list[lg.QuerySampleResponse] = []
        self._buffer = np.zeros(0, np.int32)
        self._failed: list[lg.QuerySampleResponse] = []

    def _grow(self, n: int) -> None:
        size = max(n, 2 * len(self._ok), 64)
        self._buffer = np.zeros(size, np.int32)
        base = self._buffer.ctypes.data
        self._ok = list(map(lg.QuerySampleResponse, repeat(0, size), range(base, base + 4 * size, 4),
                            repeat(4, size)))

    def __call__(self, ids: Sequence[int], top1: np.ndarray | None) -> None:
        """Complete ``ids`` with their top-1 classes, or as failed (no data) when ``top1`` is None."""
        n = len(ids)
        if top1 is None:
            if len(self._failed) < n:
                self._failed.extend(lg.QuerySampleResponse(0, 0, 0) for _ in range(n - len(self._failed)))
            responses = self._failed[:n]
        else:
            if len(self._ok) < n:
                self._grow(n)
            self._buffer[:n] = top1
            responses = self._ok[:n]
        for response, sample_id in zip(responses, ids, strict=True):
            response.id = sample_id
        lg.QuerySamplesComplete(responses)


def batch_sizes_upto(limit: int) -> list[int]:
    """Powers of two up to and including `limit` (the sizes whose latency the Server preset measures)."""
    sizes, b = [], 1
    while b < limit:
        sizes.append(b)
        b *= 2
    return [*sizes, limit]


def server_policy(latency: Callable[[int], float | None], engine_max: int, target_ns: int,
                  max_batch_size: int | None, max_queue_delay_us: int | None,
                  depth: int = 2) -> tuple[BatchPolicy, str]:
    """Server batching from the p99 target and the engine's measured (idle) latency per batch size.

    A sample can wait the queue delay, then for the batches ahead of it, then run: ``depth``
    batches in all (2 for engines that run batches side by side; a GPU's slots share one device,
    so there it is its slots per device: on the H200 a cap of 128 with 3 slots put the p50 at
    9.4 ms, about 3 x the 2.2 ms batch time plus the delay, at every load from 0.7 to 0.9 of the
    peak). Pick the largest batch B with depth * latency(B) <= 50% of the target: batches only
    grow that large under backlog, so a large cap costs no latency at low load and keeps the queue
    stable at high load. The delay is what is left of 60% of the target, capped at 10% of it; the
    rest is headroom for the harness and the tail. Explicit --max-batch-size / --max-queue-delay-us win.
    """
    target_s = target_ns / 1e9
    chosen = 1
    for b in batch_sizes_upto(max_batch_size or engine_max):
        lat = latency(b)
        if lat is not None and depth * lat <= 0.5 * target_s:
            chosen = b
    chosen = max_batch_size or chosen
    lat = latency(chosen) or 0.0
    auto_delay = min(0.6 * target_s - depth * lat, 0.1 * target_s)
    delay_us = max_queue_delay_us if max_queue_delay_us is not None else max(0, int(auto_delay * 1e6))
    note = (f"Server batching: max batch {chosen}, max queue delay {delay_us} us "
            f"(engine latency at batch {chosen}: {lat * 1e3:.3f} ms, {depth} batches deep; "
            f"p99 target {target_ns / 1e6:g} ms)")
    if 2 * (latency(1) or 0.0) > 0.6 * target_s:
        note += "; the engine alone is too slow for this latency target, expect INVALID"
    return BatchPolicy(chosen, delay_us * 1000), note


def make_policy(cfg: RunConfig, engine: Engine, target_ns: int) -> tuple[BatchPolicy, str]:
    """The scenario preset, overridden by explicit CLI values."""
    preset = cfg.preset
    if cfg.scenario == "Server":
        depth = max(2, getattr(engine, "slots_per_device", 0))
        policy, note = server_policy(engine.latency, engine.max_batch_size, target_ns, cfg.max_batch_size,
                                     cfg.max_queue_delay_us, depth)
        return BatchPolicy(policy.max_batch_size, policy.max_queue_delay_ns, cfg.preferred_batch_sizes), note
    max_batch = cfg.max_batch_size or preset.max_batch_size or engine.max_batch_size
    delay_us = cfg.max_queue_delay_us if cfg.max_queue_delay_us is not None else (preset.max_queue_delay_us or 0)
    policy = BatchPolicy(min(max_batch, engine.max_batch_size), delay_us * 1000, cfg.preferred_batch_sizes)
    return policy, f"{cfg.scenario} batching: max batch {policy.max_batch_size}, max queue delay {delay_us} us"


def new_log_dir(root: Path, scenario: str) -> Path:
    """build/logs/<timestamp>_<scenario>/ plus a `latest` link to it, checked writable before any work."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = root / f"{stamp}_{scenario}"
    try:
        path.mkdir(parents=True, exist_ok=False)
        with (path / "asyncbench_events.jsonl").open("a") as probe:
            probe.write("")
            probe.flush()
            os.fsync(probe.fileno())
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
def event_log(path: Path) -> Iterator[structlog.typing.FilteringBoundLogger]:
    """A structlog JSON-lines logger writing to the run's folder; the file is closed with the run."""
    with path.open("a") as handle:
        yield structlog.wrap_logger(
            structlog.PrintLogger(file=handle),
            processors=[structlog.processors.TimeStamper(fmt="iso", utc=True), structlog.processors.JSONRenderer()],
        )


WARMUP_REPEATS = 5  # infers per batch size (engines.base.run_warmup)
COMPILE_ALLOWANCE_S = 900.0  # a GPU engine's first warm-up size also compiles and captures graphs


def warm_up(engine: Engine, timeout_s: float, log: structlog.typing.FilteringBoundLogger) -> None:
    """Warm every batch size up under the run's engine timeout; a failure or stall is one UserError.

    Each size runs on a daemon thread so a stalled engine cannot hang the process: the wait per size
    is the engine timeout per batch (a GPU engine's first size may also compile, and gets longer).
    """
    sizes = batch_sizes_upto(engine.max_batch_size)
    log.info("warmup_start", engine=engine.name, sizes=sizes, timeout_s=timeout_s)
    for position, size in enumerate(sizes):
        outcome: list[BaseException | dict[int, float]] = []
        worker = threading.Thread(target=_capture, args=(outcome, engine.warmup, [size]), name="warmup",
                                  daemon=True)
        limit = timeout_s * WARMUP_REPEATS
        if position == 0 and engine.device != "cpu":
            limit = max(limit, COMPILE_ALLOWANCE_S)
        worker.start()
        worker.join(limit)
        if worker.is_alive():
            log.error("warmup_stalled", batch_size=size, waited_s=limit)
            raise UserError(f"warm-up: the {engine.name} engine stalled: batch size {size} did not finish "
                            f"{WARMUP_REPEATS} batches within {limit:g} s (--engine-timeout {timeout_s:g})")
        result = outcome[0]
        if isinstance(result, BaseException):
            log.error("warmup_failed", batch_size=size, error=repr(result),
                      traceback="".join(traceback.format_exception(result)))
            raise UserError(f"warm-up: the {engine.name} engine failed at batch size {size}: "
                            f"{type(result).__name__}: {result}") from None
        log.info("warmup_size", batch_size=size, seconds=result.get(size))


def _capture(into: list[BaseException | dict[int, float]], fn: Callable[..., dict[int, float]],
             *args: object) -> None:
    """Append ``fn(*args)``'s result, or the exception it raised, to ``into`` (for a worker thread)."""
    try:
        into.append(fn(*args))
    except BaseException as e:  # noqa: BLE001 - handed back to the waiting thread
        into.append(e)


class _Signals:
    """First Ctrl-C / SIGTERM aborts the run cleanly; a second one exits at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_abort: Callable[[str], None]) -> None:
        self.loop, self.on_abort, self.count = loop, on_abort, 0
        self.installed: list[int] = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._handle, sig)
                self.installed.append(sig)

    def _handle(self, sig: int) -> None:
        self.count += 1
        name = signal.Signals(sig).name
        if self.count > 1:
            print(f"error: {name} again: exiting now without waiting for LoadGen", file=sys.stderr, flush=True)
            os._exit(130)
        print(f"\n{name}: stopping: every outstanding sample is completed as failed and LoadGen is made to end "
              f"early, then its logs are written (press Ctrl-C again to exit at once)", file=sys.stderr, flush=True)
        self.on_abort(f"interrupted by {name}")

    def remove(self) -> None:
        for sig in self.installed:
            self.loop.remove_signal_handler(sig)


@dataclass(frozen=True)
class SampleCounts:
    """Samples of one test: issued by LoadGen, completed (each exactly once), and of those completed as failed."""

    issued: int
    completed: int
    failed: int


class AbortGate:
    """What LoadGen's issue thread does once the run is aborted (a failure or Ctrl-C): stop it quickly.

    LoadGen has no call that ends a test. SingleStream, MultiStream and Offline end once LoadGen runs
    out of queries, so each later query is completed as failed right here on LoadGen's thread (about
    3 us each) without a trip through the event loop. Server issues on a fixed schedule; it stops early
    only when more than ``server_max_async_queries`` are outstanding, so with ``hold`` the later queries
    are held uncompleted until LoadGen gives up and calls flush, and then completed as failed.
    """

    def __init__(self, complete: Callable[[Sequence[int], np.ndarray | None], None], hold: bool) -> None:
        self._complete = complete
        self._hold = hold
        self._held: list[int] = []
        self._lock = threading.Lock()
        self._flushed = False
        self.completed = 0

    def take(self, ids: list[int]) -> None:
        """A query issued after the abort: hold it (Server) or complete it as failed now."""
        with self._lock:
            if self._hold and not self._flushed:
                self._held.extend(ids)
                return
            self.completed += len(ids)
        self._complete(ids, None)

    def flush(self) -> None:
        """LoadGen stopped issuing: complete everything held."""
        with self._lock:
            self._flushed = True
            held, self._held = self._held, []
            self.completed += len(held)
        if held:
            self._complete(held, None)


async def drive(engine: Engine, arena: SampleArena, policy: BatchPolicy, settings: lg.TestSettings,
                log_settings: lg.LogSettings, performance_count: int, *, inflight: int,
                timeout_s: float | None, audit_config: Path,
                complete: Callable[[Sequence[int], np.ndarray | None], None] | None = None,
                log: structlog.typing.FilteringBoundLogger | None = None) -> tuple[Pipeline, SampleCounts]:
    """Run LoadGen's test against the pipeline on the running loop; returns the pipeline and the test's counts."""
    loop = asyncio.get_running_loop()
    inbox = Inbox(loop, lambda ids, indices, arrival: pipeline.submit(ids, indices, arrival),
                  ring_at=policy.max_batch_size)
    pipeline = Pipeline(engine, arena, policy, complete or LoadGenCompleter(), inflight=inflight, timeout_s=timeout_s,
                        sleep_until=inbox.sleep_until)
    hold = settings.scenario == lg.TestScenario.Server and settings.server_max_async_queries > 0 \
        and settings.mode != lg.TestMode.AccuracyOnly
    gate = AbortGate(complete or LoadGenCompleter(), hold)  # its own responses: it runs on LoadGen's thread
    callback_errors: list[str] = []

    def issue(ids: list[int], indices: list[int]) -> None:
        try:
            if pipeline.failure is not None:
                gate.take(ids)
            else:
                inbox.put(ids, indices)
        except BaseException as e:  # noqa: BLE001 - an exception escaping a LoadGen callback kills the process
            callback_errors.append(f"issue: {e!r}")

    def flush() -> None:
        try:
            gate.flush()
        except BaseException as e:  # noqa: BLE001 - see issue()
            callback_errors.append(f"flush: {e!r}")

    def load(indices: list[int]) -> None:
        try:
            arena.load(indices)
        except BaseException as e:  # noqa: BLE001 - see issue(); the run fails instead, every sample completed
            callback_errors.append(f"load_samples: {e}")
            loop.call_soon_threadsafe(pipeline.abort, f"loading samples failed: {e}")

    def unload(indices: list[int]) -> None:
        try:
            arena.unload(indices)
        except BaseException as e:  # noqa: BLE001
            callback_errors.append(f"unload_samples: {e!r}")

    sut = lg.ConstructFastSUT(issue, flush)
    qsl = lg.ConstructQSL(arena.total, performance_count, load, unload)
    signals = _Signals(loop, pipeline.abort)
    run_task = asyncio.create_task(pipeline.run(), name="pipeline")
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="loadgen") as pool:
            await loop.run_in_executor(pool, lg.StartTestWithLogSettings, sut, qsl, settings, log_settings,
                                       str(audit_config))
        pipeline.close()
        await run_task
    finally:
        signals.remove()
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    if callback_errors and pipeline.failure is None:
        pipeline.failure = "; ".join(callback_errors)
    # What the gate completed after an abort never reached the pipeline.
    counts = SampleCounts(pipeline.issued + gate.completed, pipeline.completed + gate.completed,
                          pipeline.failed_samples + gate.completed)
    if log is not None:
        log.info("pipeline_done", issued=counts.issued, completed=counts.completed, failed=counts.failed,
                 failure=pipeline.failure, histogram=pipeline.batcher.histogram())
    return pipeline, counts


@contextlib.contextmanager
def gil_switch_interval(seconds: float) -> Iterator[None]:
    """Shorter GIL time slices for the run, restored afterwards.

    LoadGen's issue thread needs the GIL for every query while the loop thread completes
    batches; with Python's default 5 ms slice an issue call can wait a whole slice. Measured with
    the null engine at 65k / 75k Server QPS: p99 6.8 / 38 ms at 5 ms, 4.6 / 19 ms at 0.5 ms.
    """
    before = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """No cyclic garbage collection during the run; everything alive before it is frozen.

    Every LoadGen issue call allocates lists, so the collector ran constantly, and its full
    collections walked the whole heap (onnx, numpy, the model) while holding the GIL: pauses that
    landed in the Server tail. Reference counting still frees everything the run drops; what
    cycles it leaves are collected when the run ends.
    """
    gc.collect()
    gc.freeze()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        gc.unfreeze()
        gc.collect()


def loop_runner(kind: str) -> asyncio.Runner:
    """An asyncio.Runner on uvloop (default) or the standard loop."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise UserError("uvloop is not installed: pip install uvloop, or pass --loop asyncio") from None
        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


def dataset_arena(dataset: Dataset, preprocessed: Path, engine: Engine | None = None) -> SampleArena:
    """The arena over the validation map's preprocessed samples (a GPU engine makes its own, pinned)."""
    names = [e.name for e in read_map(dataset.val_map)]
    folder = dataset.preprocessed_dir(preprocessed, VAL_LAYOUT)
    require_preprocessed(folder, names, "--val_only", preprocessed)
    make_arena = getattr(engine, "make_arena", None)
    return make_arena(folder, names) if make_arena is not None else SampleArena(folder, names)


def engine_peak_qps(engine: Engine) -> float | None:
    """Best samples/s over the batch sizes the engine's warm-up measured."""
    rates = [b / lat for b in batch_sizes_upto(engine.max_batch_size) if (lat := engine.latency(b))]
    return max(rates) if rates else None


def plan_for(cfg: RunConfig, engine: Engine, total: int) -> RunPlan:
    """The LoadGen plan for ``cfg`` from the engine's warm-up measurements."""
    latencies = {b: engine.latency(b) for b in (1, MULTISTREAM_SAMPLES) if b <= engine.max_batch_size}
    return plan_run(cfg, total, engine_peak_qps(engine), latencies, memory_budget_mb=cfg.loadgen_memory_mb)


def audit_config_path(cfg: RunConfig, log_dir: Path, say: Callable[[str], None]) -> Path:
    """The audit.config LoadGen reads: the one asked for, else a path that cannot exist (never ./audit.config)."""
    if cfg.audit_config is not None:
        say(f"note: applying audit config {cfg.audit_config}: it overrides the test settings (compliance test)")
        return cfg.audit_config.resolve()
    if Path("audit.config").exists():
        say("note: ./audit.config is present and was ignored (LoadGen would apply it silently); "
            "pass --audit-config audit.config to run that compliance test")
    return log_dir / "no-audit.config"


def run_scenario(cfg: RunConfig, engine: Engine, dataset: Dataset, preprocessed: Path, log_dir: Path,
                 say: Callable[[str], None] = print) -> RunResult:
    """One scenario through LoadGen into ``log_dir``; prints notes as it goes and returns the parsed result."""
    arena = dataset_arena(dataset, preprocessed, engine)
    plan = plan_for(cfg, engine, arena.total)
    settings, notes = build_test_settings(plan.options)
    with event_log(log_dir / "asyncbench_events.jsonl") as events:
        target_ns = int(getattr(settings, "server_target_latency_ns", 0) or SERVER_DEFAULT_TARGET_NS)
        policy, policy_note = make_policy(cfg, engine, target_ns)
        if plan.conf_problems:
            say(f"note: user.conf keys LoadGen ignores: {'; '.join(plan.conf_problems)}")
        say(plan.describe())
        for note in [*plan.notes, *notes, policy_note]:
            say(f"note: {note}")
        audit = audit_config_path(cfg, log_dir, say)
        events.info("run_start", scenario=cfg.scenario, mode=cfg.test_mode, engine=engine.name, loop=cfg.loop,
                    max_batch_size=policy.max_batch_size, max_queue_delay_ns=policy.max_queue_delay_ns,
                    settings=plan.describe(), notes=[*plan.notes, *notes], log_dir=str(log_dir),
                    audit_config=str(audit) if cfg.audit_config else None)
        with loop_runner(cfg.loop) as runner, gil_switch_interval(cfg.gil_switch_us * 1e-6), quiet_gc():
            inflight = getattr(engine, "inflight_slots", None) or cfg.inflight or CPU_INFLIGHT
            pipeline, counts = runner.run(drive(engine, arena, policy, settings, make_log_settings(log_dir, cfg.trace),
                                              settings.performance_sample_count_override or min(arena.total, 1024),
                                              inflight=inflight, timeout_s=cfg.engine_timeout_s, audit_config=audit,
                                              log=events))
        summary, effective = read_results(log_dir)
        histogram = pipeline.batcher.histogram()
        events.info("run_end", result=getattr(summary, "result", None), failure=pipeline.failure, failed=counts.failed,
                    issued=counts.issued, histogram=histogram, stage_seconds=vars(pipeline.times),
                    effective={k: v for k, v in effective.items() if not k.endswith("rng_seed")})
    for note in effective_notes(plan, effective):
        say(f"note: {note}")
    say(format_report(cfg, engine, summary, pipeline, log_dir, effective, counts))
    exit_code = 1 if pipeline.failure else 0
    if pipeline.failure:
        (log_dir / FAILED_MARKER).write_text(
            f"FAILED: {pipeline.failure}\n{counts.failed} of {counts.issued} samples were completed as failed "
            f"(no data). LoadGen 6.0 has no error response, so mlperf_log_summary.txt cannot show this: "
            f"this run is not valid.\n")
        say(f"error: run failed: {pipeline.failure} ({counts.failed} of {counts.issued} samples completed as failed; "
            f"LoadGen logs in {log_dir})")
    return RunResult(log_dir, summary, pipeline.failure, histogram, exit_code, effective)


# LoadGen's effective_* keys the report shows, per scenario (after scenario and mode).
EFFECTIVE_SHOWN = {
    "Server": ("target_qps", "target_latency_ns", "min_duration_ms", "min_query_count", "performance_sample_count",
               "max_async_queries"),
    "Offline": ("target_qps", "min_duration_ms", "performance_sample_count"),
    "SingleStream": ("target_qps", "min_duration_ms", "min_query_count", "performance_sample_count"),
    "MultiStream": ("target_qps", "samples_per_query", "min_duration_ms", "min_query_count",
                    "performance_sample_count"),
}


def read_results(log_dir: Path) -> tuple[RunSummary | None, dict[str, object]]:
    """LoadGen's summary and its effective settings (from the detail log), whichever of them it wrote."""
    summary_path, detail_path = log_dir / "mlperf_log_summary.txt", log_dir / "mlperf_log_detail.txt"
    try:
        summary = parse_summary(summary_path) if summary_path.is_file() else None
        effective: dict[str, object] = {}
        if detail_path.is_file():
            values = detail_values(parse_detail(detail_path))
            effective = {k.removeprefix("effective_"): v for k, v in values.items() if k.startswith("effective_")}
    except UserError:
        free = shutil.disk_usage(log_dir).free
        if free < 1 << 20:
            raise UserError(f"LoadGen could not finish its logs in {log_dir}: the disk is full ({free} bytes free); "
                            f"free some space and run again") from None
        raise
    return summary, effective


def effective_notes(plan: RunPlan, effective: dict[str, object]) -> list[str]:
    """Where LoadGen ran with other values than the harness passed (an audit config, LoadGen's own rules)."""
    o = plan.options
    asked = {
        "target_qps": o.target_qps if o.scenario in ("Server", "Offline") else None,
        "min_duration_ms": None if o.min_duration_s is None else round(o.min_duration_s * 1000),
        "min_query_count": None if o.min_query_count is None or o.scenario == "Offline" else o.min_query_count,
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
        same = got == value if isinstance(value, str) else math.isclose(float(got), float(value), rel_tol=1e-5)
        if not same:
            notes.append(f"LoadGen ran with {key} {got}, not the {value} asked for")
    return notes


def format_histogram(hist: dict[int, int], max_items: int = 12) -> str:
    """`size x count` pairs; many distinct sizes (Server) are folded into power-of-two ranges."""
    if not hist:
        return "none"
    if len(hist) <= max_items:
        return ", ".join(f"{b}x{n}" for b, n in sorted(hist.items()))
    buckets: dict[int, int] = {}
    for size, count in hist.items():
        low = 1 << (size.bit_length() - 1)
        buckets[low] = buckets.get(low, 0) + count
    return ", ".join(f"{low}-{2 * low - 1}x{n}" if low > 1 else f"1x{n}" for low, n in sorted(buckets.items()))


def format_report(cfg: RunConfig, engine: Engine, summary: RunSummary | None, pipeline: Pipeline, log_dir: Path,
                  effective: dict[str, object], counts: SampleCounts) -> str:
    """The human summary printed after each scenario: LoadGen's effective settings, never just the requested ones."""
    scenario, mode = effective.get("scenario", cfg.scenario), effective.get("test_mode", cfg.test_mode)
    lines = [f"== {scenario} / {mode} on {engine.name} ({cfg.loop})"]
    shown = [f"{k} {effective[k]}" for k in EFFECTIVE_SHOWN.get(str(scenario), ()) if k in effective]
    if shown:
        lines.append("effective: " + ", ".join(shown))
    if pipeline.failure is not None:
        said = f" (LoadGen's summary says {summary.result}, but it cannot see failed samples)" if (
            summary is not None and summary.result == "VALID") else ""
        lines.append(f"result: FAILED: {counts.failed} of {counts.issued} samples completed as failed{said}")
    elif summary is not None and summary.result is not None:
        lines.append(f"result: {summary.result}" + ("" if summary.result == "VALID" else
                                                    "".join(f"\n  - {r}" for r in summary.reasons)))
    if summary is not None and summary.result is not None:
        if summary.metric_name:
            lines.append(f"{summary.metric_name}: {summary.metric_value:g}")
        pct = summary.latency_ns
        lines.append("latency: " + ", ".join(f"{k} {pct[k] / 1e6:.3f} ms" for k in ("p50", "p90", "p99") if k in pct))
    lines.append("batch sizes: " + format_histogram(pipeline.batcher.histogram()))
    t = pipeline.times
    lines.append(f"stage time: gather {t.gather:.3f} s, execute {t.execute:.3f} s, complete {t.complete:.3f} s "
                 f"over {t.batches} batches / {t.samples} samples")
    lines.append(f"logs: {log_dir}")
    return "\n".join(lines)
