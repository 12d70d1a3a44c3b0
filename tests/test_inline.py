"""The inline path of latency-bound scenarios: queries run and complete on LoadGen's issue thread.

The null engine's DEVICE form stands where a GPU engine stands (the same ``infer_indices_now``
contract); the GPU engine's own polling wait runs in tests/gpu. Exactly once holds whatever fails.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import uvloop
from conftest import run_cli

from asyncbench.config import BatchingConfig, EngineConfig, EngineKind, LoadGenConfig, RunConfig, Scenario
from asyncbench.data.qsl import SampleArena
from asyncbench.engines.base import ExecutionForm
from asyncbench.engines.null import NullEngine, parse_null_spec
from asyncbench.errors import ConfigError
from asyncbench.harness.policy import runs_inline
from asyncbench.paths import BuildPaths
from asyncbench.runtime.execution import execution_for
from asyncbench.runtime.inline import InlineDriver
from asyncbench.runtime.ledger import Ledger
from asyncbench.runtime.timeline import Timeline

LOOPS = ["asyncio", "uvloop"]


class Completions:
    """Every completion, with the thread it ran on."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[int], bool, str]] = []

    def __call__(self, ids: Sequence[int], top1: np.ndarray | None) -> None:
        if top1 is not None:
            assert len(top1) == len(ids) and top1.dtype == np.int32
        self.calls.append((list(ids), top1 is not None, threading.current_thread().name))

    def counts(self) -> Counter[int]:
        return Counter(i for ids, _, _ in self.calls for i in ids)


def _driver(engine: NullEngine, done: Completions, max_batch: int, timeout_s: float | None = 10) -> InlineDriver:
    arena = SampleArena(Path("/nonexistent"), [f"s{i}" for i in range(64)])
    execution = execution_for(engine, arena, max_batch)
    return InlineDriver(execution, max_batch, Ledger(done, execution.times, observer=Timeline()), timeout_s=timeout_s)


def _drive_from_a_thread(loop_kind: str, driver: InlineDriver, queries: list[list[int]]) -> None:
    """The loop waits on the driver while another thread plays LoadGen's issue thread."""
    factory = uvloop.new_event_loop if loop_kind == "uvloop" else None

    async def body() -> None:
        task = asyncio.create_task(driver.run())

        def issue_all() -> None:
            for ids in queries:
                driver.issue(ids, [i % 64 for i in ids])

        await asyncio.to_thread(issue_all)
        driver.close()
        await asyncio.wait_for(task, 30)

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(body())


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_queries_complete_once_on_the_issuing_thread(loop_kind: str) -> None:
    done = Completions()
    engine = NullEngine(max_batch_size=8, form=ExecutionForm.DEVICE, fixed_s=50e-6)
    driver = _driver(engine, done, max_batch=4)
    queries = [list(range(k * 8, k * 8 + 8)) for k in range(5)]  # MultiStream-like: 8 samples a query
    _drive_from_a_thread(loop_kind, driver, queries)
    assert driver.ledger.failure is None
    assert set(done.counts().values()) == {1} and len(done.counts()) == 40
    assert all(ok for _, ok, _ in done.calls)
    threads = {thread for _, _, thread in done.calls}
    assert len(threads) == 1 and threading.main_thread().name not in threads  # the issuing thread, never the loop
    assert driver.histogram() == {4: 10}  # split at the max batch size
    assert driver.ledger.issued == driver.ledger.completed == 40
    assert driver.ledger.latency.samples == 40
    timeline = driver.ledger.observer
    assert isinstance(timeline, Timeline) and len(timeline.batches) == 10
    assert all(b.completed >= b.executed >= b.started >= b.oldest_arrival for b in timeline.batches)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_failure_completes_the_rest_of_the_query_and_later_ones_as_failed(loop_kind: str) -> None:
    done = Completions()
    engine = NullEngine(max_batch_size=4, form=ExecutionForm.DEVICE, fail_after_batches=3)
    driver = _driver(engine, done, max_batch=2)
    _drive_from_a_thread(loop_kind, driver, [list(range(k * 4, k * 4 + 4)) for k in range(4)])
    failure = driver.ledger.failure
    assert failure is not None and "injected failure" in str(failure)
    assert failure.details()["failure_type"] == "EngineError"
    counts = done.counts()
    assert set(counts) == set(range(16)) and set(counts.values()) == {1}
    failed = {i for ids, ok, _ in done.calls if not ok for i in ids}
    assert failed == set(range(6, 16))  # batch 3 is the second half of query 1; everything after fails too
    assert driver.ledger.completed == driver.ledger.issued == 16 and driver.ledger.failed_samples == 10


def test_a_stall_fails_at_the_timeout_instead_of_hanging() -> None:
    done = Completions()
    engine = NullEngine(max_batch_size=1, form=ExecutionForm.DEVICE, stall_after_batches=1, stall_s=60)
    driver = _driver(engine, done, max_batch=1, timeout_s=0.2)
    _drive_from_a_thread("uvloop", driver, [[k] for k in range(4)])
    assert driver.ledger.failure is not None and "did not finish within 0.2 s" in str(driver.ledger.failure)
    assert set(done.counts().values()) == {1} and len(done.counts()) == 4


def test_the_inline_path_needs_a_device_engine() -> None:
    arena = SampleArena(Path("/nonexistent"), ["s0"])
    execution = execution_for(NullEngine(max_batch_size=1), arena, 1)
    with pytest.raises(TypeError, match="run_now"):
        InlineDriver(execution, 1, Ledger(Completions(), execution.times))


@pytest.mark.parametrize(("scenario", "form", "inline", "expected"), [
    (Scenario.SINGLE_STREAM, ExecutionForm.DEVICE, True, True),
    (Scenario.MULTI_STREAM, ExecutionForm.DEVICE, True, True),
    (Scenario.MULTI_STREAM, ExecutionForm.DEVICE, False, False),
    (Scenario.SERVER, ExecutionForm.DEVICE, True, False),
    (Scenario.OFFLINE, ExecutionForm.DEVICE, True, False),
    (Scenario.SINGLE_STREAM, ExecutionForm.BLOCKING, True, False),  # a CPU engine's call cannot be timed out
])
def test_which_runs_go_inline(scenario: Scenario, form: ExecutionForm, inline: bool, expected: bool) -> None:
    cfg = RunConfig(scenario, batching=BatchingConfig(inline=inline))
    assert runs_inline(cfg, NullEngine(max_batch_size=8, form=form)) is expected


def test_the_null_spec_picks_the_form() -> None:
    assert parse_null_spec("form=device,fixed_us=10") == {"form": ExecutionForm.DEVICE, "fixed_s": 10 * 1e-6}
    with pytest.raises(ConfigError, match="form must be"):
        parse_null_spec("form=gpu")


@pytest.mark.parametrize("scenario", ["SingleStream", "MultiStream"])
def test_loadgen_runs_latency_bound_scenarios_inline(calibrated: BuildPaths, tmp_path: Path, scenario: str) -> None:
    trace = tmp_path / "trace.json"
    done = run_cli("--engine", "null", "--null", "form=device,fixed_us=100", "--scenario", scenario,
                   "--min-duration", "0.5", "--min-query-count", "50", "--timeline", str(trace),
                   "--build-dir", str(calibrated.root), "--log-dir", str(tmp_path / "logs"), "--json", "-")
    assert done.returncode == 0, done.stderr
    assert "runs on LoadGen's issue thread" in done.stdout
    record = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
    assert record["batching"]["inline"] is True
    assert record["samples"]["completed"] == record["samples"]["issued"] > 0
    assert record["samples"]["failed"] == 0
    assert record["batch_sizes"] == ({"1": record["samples"]["issued"]} if scenario == "SingleStream"
                                     else {"8": record["samples"]["issued"] // 8})
    events = json.loads(trace.read_text())["traceEvents"]
    assert sum(1 for e in events if str(e.get("name", "")).startswith("execute")) == sum(
        record["batch_sizes"].values())


def test_an_inline_failure_through_loadgen_completes_every_sample(calibrated: BuildPaths, tmp_path: Path) -> None:
    done = run_cli("--engine", "null", "--null", "form=device,fail_after=40", "--scenario", "SingleStream",
                   "--max-batch-size", "1", "--min-duration", "0.3", "--min-query-count", "100",
                   "--build-dir", str(calibrated.root), "--log-dir", str(tmp_path), "--json", "-")
    assert done.returncode == 1
    said = done.stderr + "".join(line for line in done.stdout.splitlines() if not line.startswith("{"))
    assert "Traceback" not in said  # the traceback goes to the record (below), never to the user
    assert "error: run failed: engine failed" in said
    record = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
    assert record["samples"]["completed"] == record["samples"]["issued"] >= 100
    assert record["samples"]["failed"] == record["samples"]["issued"] - 35  # warm-up ran batches 0-4
    assert record["result"]["failure"]["failure_type"] == "EngineError"


def test_no_inline_sends_queries_through_the_loop(calibrated: BuildPaths, tmp_path: Path) -> None:
    cfg_inline = RunConfig(Scenario.SINGLE_STREAM, LoadGenConfig(), BatchingConfig(inline=False),
                           EngineConfig(EngineKind.NULL, null_spec="form=device"))
    assert not runs_inline(cfg_inline, NullEngine(max_batch_size=1, form=ExecutionForm.DEVICE))
    done = run_cli("--engine", "null", "--null", "form=device,fixed_us=100", "--scenario", "SingleStream",
                   "--no-inline", "--min-duration", "0.3", "--min-query-count", "20",
                   "--build-dir", str(calibrated.root), "--log-dir", str(tmp_path), "--json", "-")
    assert done.returncode == 0, done.stderr
    record = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
    assert record["batching"]["inline"] is False and record["samples"]["failed"] == 0
