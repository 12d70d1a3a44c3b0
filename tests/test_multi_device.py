"""Several GPUs, on the CPU: the routing rule the GPU engine uses, the null engine's DEVICE form with N
modelled devices behind it (each with its own slots and queue), the whole harness scaling with them, and
``--gpus`` past the visible count as one line."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from asyncbench.config import EngineKind
from asyncbench.engines import factory
from asyncbench.engines.base import EngineError, ExecutionForm, least_loaded
from asyncbench.engines.null import NullEngine, parse_null_spec
from asyncbench.errors import ConfigError
from asyncbench.paths import BuildPaths
from tests.conftest import run_cli


@dataclass
class _Device:
    slots: int
    busy_batches: int
    busy_samples: int

    @property
    def free_slots(self) -> int:
        return self.slots - self.busy_batches


def test_a_batch_goes_to_the_free_device_with_the_fewest_batches_then_samples() -> None:
    busy, lighter, idle, full = _Device(4, 2, 40), _Device(4, 2, 8), _Device(4, 0, 0), _Device(1, 1, 1)
    assert least_loaded([busy, lighter]) is lighter
    assert least_loaded([busy, lighter, idle]) is idle
    assert least_loaded([full, busy]) is busy  # a device without a free slot is never picked
    assert least_loaded([full]) is None
    first, second = _Device(2, 0, 0), _Device(2, 0, 0)
    assert least_loaded([first, second]) is first  # a tie keeps the first device


def test_modelled_devices_share_the_batches_and_the_rate() -> None:
    engine = NullEngine(max_batch_size=64, slots=4, form=ExecutionForm.DEVICE, fixed_s=0.001, devices=2)
    assert engine.capabilities.slots == 8 and engine.capabilities.slots_per_device == 4
    assert engine.concurrency == 2 and engine.sustained(8) == pytest.approx(engine.expected_latency(8) / 2)

    async def pipeline_like(batches: int) -> list[np.ndarray]:
        room = asyncio.Semaphore(engine.capabilities.slots)  # never more in flight than the engine's slots

        async def one(i: int) -> np.ndarray:
            async with room:
                return await engine.infer_indices(list(range(1 + i % 16)))

        return list(await asyncio.gather(*(one(i) for i in range(batches))))

    answers = asyncio.run(pipeline_like(200))
    assert [len(a) for a in answers] == [1 + i % 16 for i in range(200)]
    first, second = engine.devices
    assert first.batches + second.batches == 200 and abs(first.batches - second.batches) <= 20
    assert first.samples + second.samples == sum(1 + i % 16 for i in range(200))
    assert first.busy_batches == second.busy_batches == 0

    async def one_too_many() -> None:
        await asyncio.gather(*(engine.infer_indices([0]) for _ in range(9)))

    with pytest.raises(EngineError, match="every device slot is busy"):
        asyncio.run(one_too_many())


def test_modelled_devices_need_the_device_form() -> None:
    assert parse_null_spec("form=device,devices=4")["devices"] == 4
    with pytest.raises(ConfigError, match="devices=2 needs form=device"):
        NullEngine(**parse_null_spec("devices=2"))
    with pytest.raises(ConfigError, match="devices must be an integer >= 1"):
        parse_null_spec("form=device,devices=0")


def test_the_harness_scales_with_the_modelled_devices(calibrated: BuildPaths, tmp_path: Path) -> None:
    """One modelled device sustains 12,308/s at batch 32: 13,000 QPS is past it (said before the run, then
    INVALID); two take the same rate VALID through LoadGen, the loop and the batcher."""
    results = {}
    timeline = tmp_path / "timeline.json"
    for devices in (1, 2):
        logs = tmp_path / str(devices)
        done = run_cli("run", "--engine", "null", "--null", f"form=device,devices={devices},fixed_us=1000,"
                       "per_sample_us=50", "--scenario", "Server", "--target-qps", "13000", "--min-duration", "3",
                       "--no-progress", "--build-dir", str(calibrated.root), "--log-dir", str(logs),
                       "--timeline", str(timeline))
        assert done.returncode == 0, done.stdout + done.stderr
        record = json.loads(next(logs.glob("*_Server/result.json")).read_text())
        results[devices] = (record["result"]["validity"], done.stdout)
    assert results[1][0] == "INVALID" and "13000 QPS is above" in results[1][1]
    assert results[2][0] == "VALID", results[2][1]
    # The two-device run's timeline: a track per modelled device, every batch on one, the load shared.
    trace = json.loads(timeline.read_text())
    tracks = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e.get("name") == "thread_name"}
    device_tracks = {tid: name for tid, name in tracks.items() if name.startswith("null:")}
    assert sorted(device_tracks.values()) == ["null:0 inference stream 0 (engine, top-1 back)",
                                              "null:1 inference stream 0 (engine, top-1 back)"]
    computes = [e for e in trace["traceEvents"] if e.get("tid") in device_tracks and e.get("ph") == "X"]
    assert len(computes) == trace["otherData"]["device_batches"] == trace["otherData"]["batches"]
    shares = [sum(e["args"]["size"] for e in computes if e["tid"] == tid) for tid in device_tracks]
    assert min(shares) > 0.35 * sum(shares), shares


def test_gpus_past_the_visible_count_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncbench.cuda.api as cuda_api

    monkeypatch.setattr(cuda_api, "device_count", lambda: 1)
    cfg = SimpleNamespace(gpu=SimpleNamespace(count=2))
    with pytest.raises(ConfigError, match=r"^--gpus 2: only 1 GPU\(s\) are visible$"):
        factory._gpu_devices(cfg, EngineKind.TORCH)  # type: ignore[arg-type]
    cfg.gpu.count = None
    assert factory._gpu_devices(cfg, EngineKind.TORCH) == [0]  # type: ignore[arg-type]
