"""Exactly-once completion through the pipeline, with injected failures, stalls and aborts.

Runs without LoadGen (a recording completer stands in for QuerySamplesComplete) on both plain
asyncio and uvloop. Engine waits are the null engine's latency model; nothing sleeps to wait for
a condition: each test drives the pipeline to completion and then checks the ledger.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncbench.data.qsl import SampleArena
from asyncbench.engines.base import ExecutionForm
from asyncbench.engines.null import NullEngine
from asyncbench.runtime.batcher import BatchPolicy
from asyncbench.runtime.execution import execution_for
from asyncbench.runtime.ledger import Ledger
from asyncbench.runtime.pipeline import Pipeline

LOOPS = ["asyncio", "uvloop"]
FORMS = [ExecutionForm.LOOP, ExecutionForm.BLOCKING]  # the null engine awaited on the loop, or on worker threads


def _pipeline(engine: NullEngine, done: Completions, timeout_s: float | None = None) -> Pipeline:
    execution = execution_for(engine, _arena(), engine.max_batch_size)
    return Pipeline(execution, BatchPolicy(engine.max_batch_size, 0), Ledger(done, execution.times),
                    timeout_s=timeout_s)


class Completions:
    """Records every completion so tests can check the exactly-once invariant."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[int], bool]] = []

    def __call__(self, ids: Sequence[int], top1: np.ndarray | None) -> None:
        if top1 is not None:
            assert len(top1) == len(ids) and top1.dtype == np.int32
        self.calls.append((list(ids), top1 is not None))

    def counts(self) -> Counter[int]:
        return Counter(i for ids, _ in self.calls for i in ids)

    def failed(self) -> set[int]:
        return {i for ids, ok in self.calls if not ok for i in ids}


def _run(loop_kind: str, coro_fn):
    factory = uvloop.new_event_loop if loop_kind == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro_fn())


def _arena(n: int = 64) -> SampleArena:
    return SampleArena(Path("/nonexistent"), [f"s{i}" for i in range(n)])  # the null engine never gathers


async def _drive(pipeline: Pipeline, chunks: list[list[int]], abort_at: int | None = None) -> None:
    task = asyncio.create_task(pipeline.run())
    for k, ids in enumerate(chunks):
        if abort_at == k:
            pipeline.abort("test abort")
        pipeline.submit(ids, [i % 64 for i in ids])
        await asyncio.sleep(0)  # let the stages interleave with arrivals
    pipeline.close()
    await asyncio.wait_for(task, 30)


chunk_lists = st.lists(st.integers(1, 40), min_size=1, max_size=25)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("loop_kind", LOOPS)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=chunk_lists, fail_after=st.one_of(st.none(), st.integers(0, 10)),
       max_batch=st.integers(1, 16), inflight=st.integers(1, 3), abort_at=st.one_of(st.none(), st.integers(0, 30)))
def test_every_sample_completed_exactly_once(form: ExecutionForm, loop_kind: str, sizes: list[int],
                                             fail_after: int | None, max_batch: int, inflight: int,
                                             abort_at: int | None) -> None:
    ids, chunks, next_id = [], [], 0
    for size in sizes:
        chunks.append(list(range(next_id, next_id + size)))
        ids.extend(chunks[-1])
        next_id += size
    ledger = Completions()
    engine = NullEngine(max_batch_size=max_batch, slots=inflight, form=form, fail_after_batches=fail_after)
    pipeline = _pipeline(engine, ledger, timeout_s=10)
    _run(loop_kind, lambda: _drive(pipeline, chunks, abort_at))
    counts = ledger.counts()
    assert set(counts) == set(ids) and all(c == 1 for c in counts.values())
    assert pipeline.ledger.issued == pipeline.ledger.completed == len(ids)
    if pipeline.ledger.failure is None:
        assert not ledger.failed()
    else:
        assert "injected" in str(pipeline.ledger.failure) or str(pipeline.ledger.failure) == "test abort"
    assert all(len(batch) <= max_batch for batch, _ in ledger.calls if _)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("loop_kind", LOOPS)
def test_stalled_engine_fails_the_run_once(form: ExecutionForm, loop_kind: str) -> None:
    ledger = Completions()
    engine = NullEngine(max_batch_size=4, form=form, stall_after_batches=1, stall_s=30)
    pipeline = _pipeline(engine, ledger, timeout_s=0.3)
    try:
        _run(loop_kind, lambda: _drive(pipeline, [list(range(k * 4, k * 4 + 4)) for k in range(6)]))
    finally:
        engine.close()  # releases the stalled worker thread
    assert pipeline.ledger.failure is not None and "stalled" in str(pipeline.ledger.failure)
    assert isinstance(pipeline.ledger.failure.__cause__, TimeoutError)  # the cause travels with the failure
    counts = ledger.counts()
    assert set(counts) == set(range(24)) and set(counts.values()) == {1}
    assert ledger.failed()


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_batches_respect_policy_and_results_align(loop_kind: str) -> None:
    ledger = Completions()
    pipeline = _pipeline(NullEngine(max_batch_size=8), ledger)
    _run(loop_kind, lambda: _drive(pipeline, [list(range(100))]))
    assert pipeline.ledger.failure is None
    assert [len(ids) for ids, _ in ledger.calls] == [8] * 12 + [4]
    assert pipeline.batcher.histogram() == {8: 12, 4: 1}


@pytest.mark.parametrize("form", FORMS)
def test_an_engine_error_keeps_its_type_and_traceback(form: ExecutionForm) -> None:
    ledger = Completions()
    engine = NullEngine(max_batch_size=4, form=form, fail_after_batches=0)
    pipeline = _pipeline(engine, ledger, timeout_s=10)
    _run("asyncio", lambda: _drive(pipeline, [[0, 1, 2]]))
    assert pipeline.ledger.failure is not None
    details = pipeline.ledger.failure.details()
    assert details["failure_type"] == "EngineError"
    assert "Traceback" in str(details["traceback"]) and "_begin" in str(details["traceback"])


def test_execution_refuses_an_engine_without_its_declared_form() -> None:
    class Pretender(NullEngine):
        infer_async = None  # declares LOOP (the default form) but cannot be awaited

    with pytest.raises(TypeError, match="loop form"):
        execution_for(Pretender(), _arena(), 4)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_an_idle_engine_gets_a_lone_sample_without_the_queue_delay(loop_kind: str) -> None:
    completed = asyncio.Event()

    def complete(ids: Sequence[int], top1: np.ndarray | None) -> None:
        completed.set()

    async def body() -> None:
        engine = NullEngine(max_batch_size=8)
        # An hour of queue delay: only the idle-engine rule can dispatch this sample before close().
        execution = execution_for(engine, _arena(), 8)
        pipeline = Pipeline(execution, BatchPolicy(8, 3600 * 10**9, idle_gap_ns=0), Ledger(complete, execution.times))
        task = asyncio.create_task(pipeline.run())
        pipeline.submit([7], [7])
        await asyncio.wait_for(completed.wait(), 30)  # a watchdog, not a timing: it fails only if nothing comes
        assert pipeline.ledger.completed == 1 and pipeline.batcher.histogram() == {1: 1}
        pipeline.close()
        await task

    _run(loop_kind, body)


# -- the pilot that sizes SingleStream / MultiStream ------------------------------------------------------------------

def _real_arena(folder: Path, n: int = 8) -> SampleArena:
    """An arena over ``n`` all-zero samples on disk (the pilot loads what it issues, as LoadGen's QSL does)."""
    from asyncbench.contract import SAMPLE_DTYPE, SAMPLE_SHAPE

    for i in range(n):
        np.save(folder / f"s{i}.npy", np.zeros(SAMPLE_SHAPE, SAMPLE_DTYPE))
    return SampleArena(folder, [f"s{i}" for i in range(n)])


def test_the_pilot_measures_a_query_through_the_whole_pipeline(tmp_path: Path) -> None:
    from asyncbench.loadgen.sut import measure_cycle

    engine = NullEngine(max_batch_size=8, fixed_s=2e-3)
    arena = _real_arena(tmp_path)
    cycle = asyncio.run(measure_cycle(execution_for(engine, arena, 8), arena, BatchPolicy(8, 0), 8, timeout_s=5))
    assert cycle is not None
    assert 2e-3 <= cycle.fast_s <= cycle.median_s < 0.1  # the engine's 2 ms plus the harness's hops


def test_a_pilot_whose_engine_fails_fails_the_run_without_hanging(tmp_path: Path) -> None:
    from asyncbench.errors import RunFailure
    from asyncbench.loadgen.sut import measure_cycle

    engine = NullEngine(max_batch_size=1, fail_after_batches=2)
    arena = _real_arena(tmp_path, 1)
    with pytest.raises(RunFailure, match="pilot before LoadGen: engine failed: EngineError: injected failure"):
        asyncio.run(asyncio.wait_for(
            measure_cycle(execution_for(engine, arena, 1), arena, BatchPolicy(1, 0), 1, timeout_s=5), 30))


@pytest.mark.parametrize("server", [True, False])
def test_the_throughput_pilot_measures_the_pipeline_not_the_engine_alone(tmp_path: Path, server: bool) -> None:
    from asyncbench.loadgen.sut import measure_throughput

    # One modelled device: a batch of up to 16 every 2 ms, so at most 8,000 samples/s get through.
    engine = NullEngine(max_batch_size=16, fixed_s=2e-3)
    arena = _real_arena(tmp_path)
    policy = BatchPolicy(16, 1_000_000 if server else 0)
    rate = asyncio.run(measure_throughput(execution_for(engine, arena, 16), arena, policy, server=server,
                                          timeout_s=5))
    assert rate is not None and 1_000 < rate <= 8_000 * 1.05
