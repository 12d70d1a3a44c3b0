"""--timeline and --nvtx: every batch is accounted for, ranges are balanced, and nothing is loaded when off."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from asyncbench.data.qsl import SampleArena
from asyncbench.engines.base import DeviceSpan
from asyncbench.engines.null import NullEngine
from asyncbench.paths import REPO_ROOT
from asyncbench.runtime.batcher import BatchPolicy
from asyncbench.runtime.execution import execution_for
from asyncbench.runtime.ledger import Ledger
from asyncbench.runtime.nvtx_ranges import NvtxRanges
from asyncbench.runtime.observer import Observers
from asyncbench.runtime.pipeline import Pipeline
from asyncbench.runtime.timeline import Timeline


class CountingRanges(NvtxRanges):
    """NvtxRanges' hooks over counting primitives (no nvtx package): counts marks, checks every range ends once."""

    def __init__(self) -> None:  # the nvtx domain is never made
        self.marks: Counter[str] = Counter()
        self.open: set[int] = set()
        self.started = 0

    def mark(self, message: str) -> None:
        self.marks[message.split(" ")[0]] += 1

    def mark_issue(self, samples: int) -> None:
        self.marks["issue"] += 1

    def start(self, message: str) -> Any:
        self.started += 1
        self.open.add(self.started)
        return self.started

    def end(self, handle: Any) -> None:
        self.open.remove(handle)


def _run_samples(pipeline: Pipeline, count: int) -> None:
    """Submit ``count`` samples in one call and run the pipeline until it has drained."""

    async def body() -> None:
        task = asyncio.create_task(pipeline.run())
        pipeline.submit(list(range(count)), [i % 64 for i in range(count)])
        pipeline.close()
        await task

    asyncio.run(body())


def test_ranges_are_per_batch_and_balanced() -> None:
    ranges = CountingRanges()
    engine = NullEngine(max_batch_size=8)
    arena = SampleArena(Path("/nonexistent"), [f"s{i}" for i in range(64)])
    execution = execution_for(engine, arena, 8)
    timeline = Timeline()
    pipeline = Pipeline(execution, BatchPolicy(8, 0),
                        Ledger(lambda ids, top1: None, execution.times, observer=Observers([ranges, timeline])))

    _run_samples(pipeline, 40)
    batches = sum(pipeline.batcher.histogram().values())
    assert batches == 5 and not ranges.open
    assert ranges.marks["batch"] == batches and ranges.started == 2 * batches  # execute + complete per batch
    assert len(timeline.batches) == batches


def test_timeline_accounts_for_every_batch(calibrated, tmp_path: Path) -> None:
    pytest.importorskip("nvtx")
    trace = tmp_path / "trace.json"
    done = run_cli("--engine", "null", "--null", "fixed_us=100,per_sample_us=5", "--scenario", "Server",
                   "--target-qps", "3000", "--min-duration", "1", "--timeline", str(trace), "--nvtx",
                   "--build-dir", str(calibrated.root), "--log-dir", str(tmp_path / "logs"), "--json", "-")
    assert done.returncode == 0, done.stderr
    record = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
    events = json.loads(trace.read_text())["traceEvents"]
    execute = [e for e in events if e.get("ph") == "X" and str(e["name"]).startswith("execute")]
    assert len(execute) == sum(record["batch_sizes"].values())
    assert sum(e["args"]["size"] for e in execute) == record["samples"]["completed"]
    assert all(e["dur"] >= 0 for e in events if e.get("ph") == "X")
    assert {e["args"]["name"] for e in events if e.get("name") == "thread_name"} >= {"batcher (queue)", "completion"}


def test_nothing_is_imported_without_the_flags(calibrated, tmp_path: Path) -> None:
    code = ("import sys; from asyncbench.cli import main; "
            f"rc = main(['--engine', 'null', '--scenario', 'Server', '--target-qps', '500', '--min-duration', '0.3', "
            f"'--build-dir', {str(calibrated.root)!r}, '--log-dir', {str(tmp_path)!r}]); "
            "print('nvtx' in sys.modules, rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert done.stdout.strip().endswith("False 0"), done.stdout + done.stderr


def test_a_failed_batch_closes_its_range() -> None:
    ranges = CountingRanges()
    engine = NullEngine(max_batch_size=8, fail_after_batches=1)
    arena = SampleArena(Path("/nonexistent"), [f"s{i}" for i in range(64)])
    execution = execution_for(engine, arena, 8)
    pipeline = Pipeline(execution, BatchPolicy(8, 0), Ledger(lambda ids, top1: None, execution.times, observer=ranges))

    _run_samples(pipeline, 24)
    assert pipeline.ledger.failure is not None and ranges.started >= 2 and not ranges.open


def test_device_spans_get_a_copy_and_a_compute_track_per_gpu(tmp_path: Path) -> None:
    timeline = Timeline()
    timeline.add_device_spans([DeviceSpan(0, 0, 3, 4, 1_000, 3_000, 3_500, 9_000),
                               DeviceSpan(1, 0, 8, 8, 2_000, 4_000, 4_000, 12_000)], uncertainty_ns=1_500)
    timeline.add_device_spans([DeviceSpan(0, 1, 1, 1, 9_000, 9_800, 10_000, 11_000)], uncertainty_ns=500)
    document = json.loads(timeline.write(tmp_path / "t.json").read_text())
    events = document["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    assert names[100] == "cuda:0 copy stream 0 (host to device)" and names[103].startswith("cuda:1 inference stream 0")
    copies = [e for e in events if e.get("ph") == "X" and e["name"].startswith("copy in")]
    computes = [e for e in events if e.get("ph") == "X" and e["name"].startswith("compute")]
    assert [(e["tid"], e["ts"], e["dur"]) for e in copies] == [(100, 0.0, 2.0), (102, 1.0, 2.0), (100, 8.0, 0.8)]
    assert [e["name"] for e in computes] == ["compute (4)", "compute (8)", "compute (1)"]
    assert document["otherData"]["device_batches"] == 3
    assert document["otherData"]["device_clock_uncertainty_us"] == 1.5


def test_each_inference_and_copy_stream_gets_its_own_track(tmp_path: Path) -> None:
    timeline = Timeline()
    timeline.add_device_spans([DeviceSpan(0, 0, 3, 4, 1_000, 3_000, 3_500, 9_000, stream=0, copy_stream=0),
                               DeviceSpan(0, 1, 8, 8, 2_000, 4_000, 4_000, 12_000, stream=1, copy_stream=1),
                               DeviceSpan(0, 2, 2, 2, 5_000, 6_000, 6_000, 8_000, stream=2, copy_stream=0)],
                              uncertainty_ns=100)
    events = json.loads(timeline.write(tmp_path / "t.json").read_text())["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    assert [names[t] for t in sorted(t for t in names if t >= 100)] == [
        "cuda:0 copy stream 0 (host to device)", "cuda:0 copy stream 1 (host to device)",
        "cuda:0 inference stream 0 (engine, top-1 back)", "cuda:0 inference stream 1 (engine, top-1 back)",
        "cuda:0 inference stream 2 (engine, top-1 back)"]
    computes = [e["tid"] for e in events if e.get("ph") == "X" and e["name"].startswith("compute")]
    copies = [e["tid"] for e in events if e.get("ph") == "X" and e["name"].startswith("copy in")]
    assert computes == [102, 103, 104] and copies == [100, 101, 100]


def test_the_real_ranges_run_through_the_nvtx_package() -> None:
    pytest.importorskip("nvtx")
    from asyncbench.runtime.nvtx_ranges import NvtxRanges

    ranges = NvtxRanges()
    for size in (1, 1, 8):
        ranges.mark_issue(size)
    assert sorted(ranges._issue) == [1, 8]  # one prepared message per size, not per call
    ranges.mark("batch 0 (1) to slot 0")
    ranges.end(ranges.start("execute batch 0 (1)"))
