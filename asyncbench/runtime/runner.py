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
import os
import signal
import sys
import threading
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
from asyncbench.loadgen.logs import RunSummary, parse_summary
from asyncbench.loadgen.settings import LoadGenOptions, build_test_settings, make_log_settings
from asyncbench.runtime.batcher import BatchPolicy
from asyncbench.runtime.inbox import Inbox
from asyncbench.runtime.pipeline import Pipeline

SERVER_DEFAULT_TARGET_NS = 10_000_000
CPU_INFLIGHT = 2  # batches in a CPU engine at once: one computing, one being gathered
MULTISTREAM_SAMPLES = 8  # mlperf.conf's samples per MultiStream query


@dataclass(frozen=True)
class RunResult:
    """What a finished run reports back to the CLI."""

    log_dir: Path
    summary: RunSummary | None
    failure: str | None
    histogram: dict[int, int]
    exit_code: int


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
                  max_batch_size: int | None, max_queue_delay_us: int | None) -> tuple[BatchPolicy, str]:
    """Server batching from the p99 target and the engine's measured (idle) latency per batch size.

    A sample can wait the queue delay, then for a busy slot (one batch), then run (one batch).
    Pick the largest batch B with 2 * latency(B) <= 50% of the target: batches only grow that
    large under backlog, so a large cap costs no latency at low load and keeps the queue stable
    at high load. The delay is what is left of 60% of the target, capped at 10% of it; the rest
    is headroom for the harness and the tail. Explicit --max-batch-size / --max-queue-delay-us win.
    """
    target_s = target_ns / 1e9
    chosen = 1
    for b in batch_sizes_upto(max_batch_size or engine_max):
        lat = latency(b)
        if lat is not None and 2 * lat <= 0.5 * target_s:
            chosen = b
    chosen = max_batch_size or chosen
    lat = latency(chosen) or 0.0
    auto_delay = min(0.6 * target_s - 2 * lat, 0.1 * target_s)
    delay_us = max_queue_delay_us if max_queue_delay_us is not None else max(0, int(auto_delay * 1e6))
    note = (f"Server batching: max batch {chosen}, max queue delay {delay_us} us "
            f"(engine latency at batch {chosen}: {lat * 1e3:.3f} ms; p99 target {target_ns / 1e6:g} ms)")
    if 2 * (latency(1) or 0.0) > 0.6 * target_s:
        note += "; the engine alone is too slow for this latency target, expect INVALID"
    return BatchPolicy(chosen, delay_us * 1000), note


def make_policy(cfg: RunConfig, engine: Engine, target_ns: int) -> tuple[BatchPolicy, str]:
    """The scenario preset, overridden by explicit CLI values."""
    preset = cfg.preset
    if cfg.scenario == "Server":
        policy, note = server_policy(engine.latency, engine.max_batch_size, target_ns, cfg.max_batch_size,
                                     cfg.max_queue_delay_us)
        return BatchPolicy(policy.max_batch_size, policy.max_queue_delay_ns, cfg.preferred_batch_sizes), note
    max_batch = cfg.max_batch_size or preset.max_batch_size or engine.max_batch_size
    delay_us = cfg.max_queue_delay_us if cfg.max_queue_delay_us is not None else (preset.max_queue_delay_us or 0)
    policy = BatchPolicy(min(max_batch, engine.max_batch_size), delay_us * 1000, cfg.preferred_batch_sizes)
    return policy, f"{cfg.scenario} batching: max batch {policy.max_batch_size}, max queue delay {delay_us} us"


def new_log_dir(root: Path, scenario: str) -> Path:
    """build/logs/<timestamp>_<scenario>/ plus a `latest` link to it."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = root / f"{stamp}_{scenario}"
    path.mkdir(parents=True, exist_ok=False)
    latest = root / "latest"
    try:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(path.name)
    except OSError:
        pass  # a filesystem without symlinks still gets the run's own folder
    return path


@contextlib.contextmanager
def _event_log(path: Path) -> Iterator[structlog.typing.FilteringBoundLogger]:
    """A structlog JSON-lines logger writing to the run's folder; the file is closed with the run."""
    with path.open("a") as handle:
        yield structlog.wrap_logger(
            structlog.PrintLogger(file=handle),
            processors=[structlog.processors.TimeStamper(fmt="iso", utc=True), structlog.processors.JSONRenderer()],
        )


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
        print(f"\n{name}: aborting; completing every outstanding sample as failed so LoadGen can finish "
              f"(press Ctrl-C again to exit at once)", file=sys.stderr, flush=True)
        self.on_abort(f"interrupted by {name}")

    def remove(self) -> None:
        for sig in self.installed:
            self.loop.remove_signal_handler(sig)


async def drive(engine: Engine, arena: SampleArena, policy: BatchPolicy, settings: lg.TestSettings,
                log_settings: lg.LogSettings, performance_count: int, *, inflight: int,
                timeout_s: float | None,
                complete: Callable[[Sequence[int], np.ndarray | None], None] | None = None,
                log: structlog.typing.FilteringBoundLogger | None = None) -> Pipeline:
    """Run LoadGen's test against the pipeline on the running loop; returns the pipeline for its counters."""
    loop = asyncio.get_running_loop()
    inbox = Inbox(loop, lambda ids, indices, arrival: pipeline.submit(ids, indices, arrival),
                  ring_at=policy.max_batch_size)
    pipeline = Pipeline(engine, arena, policy, complete or LoadGenCompleter(), inflight=inflight, timeout_s=timeout_s,
                        sleep_until=inbox.sleep_until)
    callback_errors: list[str] = []

    def issue(ids: list[int], indices: list[int]) -> None:
        try:
            inbox.put(ids, indices)
        except BaseException as e:  # noqa: BLE001 - an exception escaping a LoadGen callback kills the process
            callback_errors.append(f"issue: {e!r}")

    def flush() -> None:
        return None

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
            await loop.run_in_executor(pool, lg.StartTestWithLogSettings, sut, qsl, settings, log_settings)
        pipeline.close()
        await run_task
    finally:
        signals.remove()
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    if callback_errors and pipeline.failure is None:
        pipeline.failure = "; ".join(callback_errors)
    if log is not None:
        log.info("pipeline_done", issued=pipeline.issued, completed=pipeline.completed,
                 failed=pipeline.failed_samples, failure=pipeline.failure, histogram=pipeline.batcher.histogram())
    return pipeline


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


def options_from(cfg: RunConfig, total: int, peak_qps: float | None = None,
                 latency: Callable[[int], float | None] | None = None) -> LoadGenOptions:
    """LoadGen options: explicit values, else a quick run unless a submission-length run was asked for.

    Without --target-qps, Offline expects the engine's measured peak (so LoadGen issues enough
    samples to fill the duration) and Server targets half of it. Without a user.conf, the
    SingleStream and MultiStream expected latencies are the engine's measured batch-1 and
    batch-8 latencies, so LoadGen pre-generates enough queries to fill the duration.
    """
    quick = not cfg.submission_length and cfg.test_mode != "SubmissionRun"
    min_duration = cfg.min_duration_s if cfg.min_duration_s is not None else (
        cfg.preset.quick_min_duration_s if quick else None)
    min_queries = cfg.min_query_count if cfg.min_query_count is not None else (
        cfg.preset.quick_min_query_count if quick else None)
    target = cfg.target_qps
    if target is None and peak_qps and cfg.scenario in ("Offline", "Server"):
        target = round(min(peak_qps, 500_000.0) * (1.0 if cfg.scenario == "Offline" else 0.5), 1)
    expected: dict[str, float] = {}
    if latency is not None and cfg.user_conf is None:
        ss, ms = latency(1), latency(MULTISTREAM_SAMPLES)
        if cfg.scenario == "SingleStream" and ss:
            expected["single_stream_expected_latency_ms"] = ss * 1e3
        if cfg.scenario == "MultiStream" and ms:
            expected["multistream_expected_latency_ms"] = ms * 1e3
    return LoadGenOptions(
        scenario=cfg.scenario, mode=cfg.test_mode, target_qps=target, min_duration_s=min_duration,
        min_query_count=min_queries, performance_sample_count=cfg.performance_sample_count or min(total, 1024),
        user_conf=cfg.user_conf, mlperf_conf=cfg.mlperf_conf, **expected)


def run_scenario(cfg: RunConfig, engine: Engine, dataset: Dataset, preprocessed: Path, log_root: Path,
                 say: Callable[[str], None] = print) -> RunResult:
    """One scenario through LoadGen; prints notes as it goes and returns the parsed result."""
    arena = dataset_arena(dataset, preprocessed, engine)
    opts = options_from(cfg, arena.total, engine_peak_qps(engine), engine.latency)
    settings, notes = build_test_settings(opts)
    if cfg.target_qps is None and opts.target_qps is not None:
        notes.append(f"{cfg.scenario} target QPS {opts.target_qps:g} from the engine's measured peak "
                     f"(pass --target-qps to choose)")
    log_dir = new_log_dir(log_root, cfg.scenario)
    with _event_log(log_dir / "asyncbench_events.jsonl") as events:
        target_ns = int(getattr(settings, "server_target_latency_ns", 0) or SERVER_DEFAULT_TARGET_NS)
        policy, policy_note = make_policy(cfg, engine, target_ns)
        for note in [*notes, policy_note]:
            say(f"note: {note}")
        events.info("run_start", scenario=cfg.scenario, mode=cfg.test_mode, engine=engine.name, loop=cfg.loop,
                    max_batch_size=policy.max_batch_size, max_queue_delay_ns=policy.max_queue_delay_ns,
                    notes=notes, log_dir=str(log_dir))
        with loop_runner(cfg.loop) as runner, gil_switch_interval(cfg.gil_switch_us * 1e-6), quiet_gc():
            inflight = getattr(engine, "inflight_slots", None) or cfg.inflight or CPU_INFLIGHT
            pipeline = runner.run(drive(engine, arena, policy, settings, make_log_settings(log_dir, cfg.trace),
                                        opts.performance_sample_count, inflight=inflight,
                                        timeout_s=cfg.engine_timeout_s, log=events))
        summary_path = log_dir / "mlperf_log_summary.txt"
        summary = parse_summary(summary_path) if summary_path.is_file() else None
        histogram = pipeline.batcher.histogram()
        events.info("run_end", result=getattr(summary, "result", None), failure=pipeline.failure, histogram=histogram,
                    stage_seconds=vars(pipeline.times))
    say(format_report(cfg, engine, summary, pipeline, log_dir))
    exit_code = 1 if pipeline.failure else 0
    if pipeline.failure:
        say(f"error: run failed: {pipeline.failure} ({pipeline.failed_samples} samples completed as failed; "
            f"LoadGen logs in {log_dir})")
    return RunResult(log_dir, summary, pipeline.failure, histogram, exit_code)


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


def format_report(cfg: RunConfig, engine: Engine, summary: RunSummary | None, pipeline: Pipeline,
                  log_dir: Path) -> str:
    """The human summary printed after each scenario."""
    lines = [f"== {cfg.scenario} / {cfg.test_mode} on {engine.name} ({cfg.loop})"]
    if summary is not None and summary.result is not None:
        lines.append(f"result: {summary.result}" + ("" if summary.result == "VALID" else
                                                    "".join(f"\n  - {r}" for r in summary.reasons)))
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
