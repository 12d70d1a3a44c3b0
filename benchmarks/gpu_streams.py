"""Concurrent inference streams on one GPU: whether they pay, engine-only and under LoadGen's Server load.

Rerun: python benchmarks/gpu_streams.py [--streams 1,2,3,4] [--batches 8,16,32,64,128,256]
       [--server-at 0.85,0.90,0.95] [--duration 5] [--precision fp16]

In one process: the engine-only peak (one stream, batches up to 1024: the reference every ratio
is taken to); then for each stream count N an engine with N inference streams (N + 2 slots) and
  - its engine-only images/s per batch size with N batches in flight at once, one per stream
    (launches round-robin over the streams, timed from the first launch to the last stream idle);
  - Server runs at fixed fractions of the peak through LoadGen and the whole runtime, with the
    policy the harness derives itself (no tuning flags): validity, p99 and the mean batch.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from asyncbench.config import (
    BatchingConfig,
    EngineConfig,
    EngineKind,
    GpuConfig,
    LoadGenConfig,
    Precision,
    RunConfig,
    Scenario,
)
from asyncbench.cuda.api import device_name, set_device
from asyncbench.data.dataset import resolve_dataset
from asyncbench.engines.gpu import GpuEngine
from asyncbench.engines.sizing import open_engine
from asyncbench.harness.run import new_log_dir, run_scenario
from asyncbench.paths import BuildPaths

from engine_roofline import engine_only

ROOT = Path(__file__).resolve().parent.parent


def concurrent_rate(engine: GpuEngine, bucket: int, seconds: float = 0.3) -> float:
    """Images/s with one batch of ``bucket`` in flight on every inference stream at once."""
    worker = engine.workers[0]
    lanes: dict[int, object] = {}
    for slot in worker._slots:
        lanes.setdefault(slot.lane, slot)
    slots = list(lanes.values())
    set_device(worker.device)

    def burst(count: int) -> float:
        for stream in worker.compute_streams:
            stream.synchronize()
        start = time.perf_counter()
        for i in range(count):
            slots[i % len(slots)].launch(bucket)  # type: ignore[attr-defined]
        for stream in worker.compute_streams:
            stream.synchronize()
        return time.perf_counter() - start

    burst(2 * len(slots))
    probe = burst(4 * len(slots)) / (4 * len(slots))
    count = max(8 * len(slots), int(seconds / max(probe, 1e-6)))
    return count * bucket / burst(count)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", default="1,2,3,4")
    p.add_argument("--batches", default="8,16,32,64,128,256")
    p.add_argument("--max-batch", type=int, default=256, help="largest batch of the N-stream engines")
    p.add_argument("--server-at", default="0.85,0.90,0.95", help="fractions of the engine-only peak")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--precision", default=None)
    p.add_argument("--build-dir", default=str(ROOT / "build"))
    p.add_argument("--log-dir", type=Path, default=Path(tempfile.mkdtemp(prefix="gpu_streams_")))
    p.add_argument("--json", type=Path, default=Path(tempfile.gettempdir()) / "gpu_streams.json")
    args = p.parse_args()
    paths = BuildPaths(Path(args.build_dir))
    dataset = resolve_dataset(paths)
    precision = Precision(args.precision) if args.precision else None
    engine_cfg = EngineConfig(EngineKind.TORCH, precision=precision)
    batches = [int(b) for b in args.batches.split(",")]
    out: dict[str, object] = {"device": device_name(0)}

    reference = open_engine(RunConfig(batching=BatchingConfig(max_batch_size=1024), engine=engine_cfg), paths)
    assert isinstance(reference, GpuEngine)
    try:
        reference.warmup(reference.capabilities.buckets)
        rates = engine_only(reference)
    finally:
        reference.close()
    peak = max(rates.values())
    out["engine"], out["engine_only"], out["peak"] = reference.name, rates, peak
    lines = [f"engine-only peak (1 stream): {peak:,.0f} images/s; "
             + ", ".join(f"bs {b}: {r:,.0f}" for b, r in rates.items())]
    print(lines[0], flush=True)

    for n in (int(s) for s in args.streams.split(",")):
        gpu = GpuConfig(inference_streams=n)
        engine = open_engine(RunConfig(batching=BatchingConfig(max_batch_size=args.max_batch), engine=engine_cfg,
                                       gpu=gpu), paths)
        assert isinstance(engine, GpuEngine)
        try:
            engine.warmup(engine.capabilities.buckets)
            together = {b: concurrent_rate(engine, b) for b in batches if b <= args.max_batch}
            line = f"{n} stream(s), a batch on each at once: " + ", ".join(
                f"bs {b}: {r:,.0f}" for b, r in together.items())
            print(line, flush=True)
            lines.append(line)
            server = []
            for frac in (float(f) for f in args.server_at.split(",")):
                cfg = RunConfig(Scenario.SERVER, LoadGenConfig(min_duration_s=args.duration,
                                                               target_qps=round(frac * peak)),
                                BatchingConfig(), engine_cfg, gpu)
                result = run_scenario(cfg, engine, dataset, paths.preprocessed,
                                      new_log_dir(args.log_dir, cfg.scenario), lambda _: None)
                s = result.summary
                assert s is not None
                sizes = result.histogram
                mean_batch = sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values()))
                trial = {"fraction": frac, "qps": round(frac * peak), "result": s.result,
                         "p99_ms": s.latency_ns.get("p99", 0) / 1e6, "mean_batch": mean_batch,
                         "policy": result.record["batching"]}
                server.append(trial)
                line = (f"  Server {n} stream(s) at {frac:.2f} of peak ({trial['qps']:,} QPS): {s.result}, "
                        f"p99 {trial['p99_ms']:.2f} ms, mean batch {mean_batch:.1f}")
                print(line, flush=True)
                lines.append(line)
            out[f"streams_{n}"] = {"together": together, "server": server}
        finally:
            engine.close()
    print(f"\n== {device_name(0)}, {out['engine']}, {args.duration:g} s Server runs")
    print("\n".join(lines))
    args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
