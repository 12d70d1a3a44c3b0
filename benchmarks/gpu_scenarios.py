"""All four LoadGen scenarios on the GPU against the engine-only roofline, in one process.

Rerun: python benchmarks/gpu_scenarios.py [--engine torch] [--duration 10] [--gpus 1]
       [--repeats 3] [--server-variants idle,no-idle] [--timeline-qps 20000 --timeline FILE.json]

One engine is built (compiled, graphs captured) once. First its engine-only images/s per batch
size (benchmarks/engine_roofline.py's method), then, through LoadGen and the full runtime:
Offline samples/s; the highest VALID Server QPS (p99 <= 10 ms), searched downward from the
engine-only peak in steps, for each Server variant (idle dispatch on and off); MultiStream p99
and SingleStream p90 beside the engine-only batch-8 and batch-1 times and the idle round trip
(copy-in to top-1 back), each run inline and through the loop, alternating, ``--repeats`` times.
Ratios are to the engine-only peak measured here, in the same process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from asyncbench.config import (
    BatchingConfig,
    EngineConfig,
    EngineKind,
    GpuConfig,
    LoadGenConfig,
    RunConfig,
    Scenario,
    TorchCompile,
)
from asyncbench.cuda.api import device_name
from asyncbench.data.dataset import resolve_dataset
from asyncbench.engines.sizing import open_engine
from asyncbench.harness.run import dataset_arena, new_log_dir, run_scenario
from asyncbench.loadgen.logs import RunSummary
from asyncbench.paths import BuildPaths

from engine_roofline import engine_only

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="torch", choices=("torch", "tensorrt"))
    p.add_argument("--torch-compile", default="default")
    p.add_argument("--max-batch", type=int, default=1024)
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--scenarios", default="Offline,Server,MultiStream,SingleStream")
    p.add_argument("--server-steps", default="0.97,0.94,0.91,0.88,0.85,0.80,0.75,0.70",
                   help="fractions of the engine-only peak tried in order until one is VALID")
    p.add_argument("--repeats", type=int, default=1,
                   help="MultiStream/SingleStream runs per path (inline, through the loop), alternating")
    p.add_argument("--server-variants", default="idle",
                   help="comma list of Server searches: idle (idle dispatch, the default) and/or no-idle")
    p.add_argument("--server-at", default="",
                   help="instead of searching: run each Server variant at these QPS (comma list), alternating, "
                        "--repeats times")
    p.add_argument("--timeline-qps", type=float, help="also run Server at this QPS with a timeline")
    p.add_argument("--latency-timelines", type=Path, metavar="DIR",
                   help="write a timeline of the last inline MultiStream and SingleStream run here")
    p.add_argument("--timeline", type=Path, default=Path(tempfile.gettempdir()) / "gpu_server_timeline.json")
    p.add_argument("--build-dir", default=str(ROOT / "build"))
    p.add_argument("--log-dir", type=Path, default=Path(tempfile.mkdtemp(prefix="gpu_scenarios_")))
    p.add_argument("--json", type=Path, default=Path(tempfile.gettempdir()) / "gpu_scenarios.json")
    args = p.parse_args()
    paths = BuildPaths(Path(args.build_dir))
    dataset = resolve_dataset(paths)
    engine_cfg = EngineConfig(EngineKind(args.engine), torch_compile=TorchCompile(args.torch_compile))
    gpu_cfg = GpuConfig(count=args.gpus)
    engine = open_engine(RunConfig(batching=BatchingConfig(max_batch_size=args.max_batch), engine=engine_cfg,
                                   gpu=gpu_cfg), paths)
    out: dict[str, object] = {"device": device_name(0), "gpus": args.gpus, "engine": engine.name}
    lines: list[str] = []
    try:
        engine.warmup(engine.capabilities.buckets)
        rates = engine_only(engine)
        peak_batch = max(rates, key=rates.get)
        peak = rates[peak_batch] * args.gpus
        out["engine_only"] = rates
        print("engine-only images/s: " + ", ".join(f"bs {b}: {r:,.0f}" for b, r in rates.items()), flush=True)
        lines.append(f"engine-only peak: {peak:,.0f} images/s (batch {peak_batch}, x{args.gpus} GPU)")

        def run(scenario: Scenario, target_qps: float | None = None, max_batch: int | None = None,
                inline: bool = True, idle_dispatch: bool = True, timeline: Path | None = None) -> RunSummary:
            """One LoadGen test; the batch cap is the preset's (from measured latencies) unless given."""
            cfg = RunConfig(scenario, LoadGenConfig(min_duration_s=args.duration, target_qps=target_qps),
                            BatchingConfig(max_batch_size=max_batch, inline=inline, idle_dispatch=idle_dispatch),
                            engine_cfg, gpu_cfg)
            log_dir = new_log_dir(args.log_dir, cfg.scenario)
            result = run_scenario(cfg, engine, dataset, paths.preprocessed, log_dir, print, timeline_path=timeline)
            assert result.summary is not None, f"LoadGen wrote no summary in {log_dir}"
            return result.summary

        def idle_round_trip(batch: int, repeats: int = 2000) -> dict[str, float]:
            """ms quantiles of one idle batch from the pinned arena: copy in, compute, top-1 back, on this thread.

            The inline path without LoadGen: what a latency-bound query costs before any harness hop.
            """
            arena = dataset_arena(dataset, paths.preprocessed, engine)
            arena.load(range(arena.total))
            rng = np.random.default_rng(0)
            times = []
            for _ in range(repeats):
                indices = rng.integers(0, arena.total, batch).tolist()
                t0 = time.perf_counter()
                engine.infer_indices_now(indices, 10.0)
                times.append((time.perf_counter() - t0) * 1e3)
            arena.unload(range(arena.total))
            q = np.percentile(times, [50, 90, 99])
            return {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2])}

        def latency_bound(scenario: Scenario, key: str, batch: int) -> None:
            """Inline and through the loop, alternating; medians beside the engine-only time and the round trip."""
            found: dict[str, list[float]] = {"inline": [], "loop": []}
            for repeat in range(args.repeats):
                for path in ("loop", "inline"):
                    timeline = None
                    if args.latency_timelines is not None and path == "inline" and repeat == args.repeats - 1:
                        args.latency_timelines.mkdir(parents=True, exist_ok=True)
                        timeline = args.latency_timelines / f"{scenario}_inline.json"
                    s = run(scenario, inline=path == "inline", timeline=timeline)
                    found[path].append(s.latency_ns.get(key, 0) / 1e6)
                    print(f"{scenario} {path}: {key} {found[path][-1]:.3f} ms ({s.result})", flush=True)
            round_trip = (engine.latency(batch) or 0.0) * 1e3
            idle = idle_round_trip(batch)
            out[str(scenario).lower()] = {f"{key}_ms": found, "round_trip_ms": round_trip, "idle_arena_ms": idle,
                                          "engine_only_ms": batch / rates[batch] * 1e3}
            lines.append(f"{scenario}: {key} inline {statistics.median(found['inline']):.3f} ms, through the loop "
                         f"{statistics.median(found['loop']):.3f} ms (medians of {args.repeats}); engine-only batch "
                         f"{batch} {batch / rates[batch] * 1e3:.3f} ms; round trip (warm-up's host batch: staged "
                         f"copy, compute, top-1 back) {round_trip:.3f} ms; idle from the pinned arena p50/p90/p99 "
                         f"{idle['p50']:.3f}/{idle['p90']:.3f}/{idle['p99']:.3f} ms")

        for scenario in args.scenarios.split(","):
            if scenario == "Offline":
                s = run(Scenario.OFFLINE, target_qps=peak, max_batch=args.max_batch)
                out["offline"] = {"samples_per_s": s.metric_value, "result": s.result}
                lines.append(f"Offline: {s.metric_value:,.0f} samples/s = {s.metric_value / peak:.3f} of peak "
                             f"({s.result})")
            elif scenario == "Server" and args.server_at:
                fixed: dict[str, list[dict[str, object]]] = {}
                for _ in range(args.repeats):
                    for qps in (float(q) for q in args.server_at.split(",")):
                        for variant in args.server_variants.split(","):
                            s = run(Scenario.SERVER, target_qps=qps, idle_dispatch=variant == "idle")
                            p99 = s.latency_ns.get("p99", 0) / 1e6
                            fixed.setdefault(f"{variant} {qps:.0f}", []).append({"result": s.result, "p99_ms": p99})
                            print(f"Server ({variant}) at {qps:.0f} QPS: {s.result}, p99 {p99:.2f} ms", flush=True)
                out["server_fixed"] = fixed
                for key, trials in fixed.items():
                    valid = sum(t["result"] == "VALID" for t in trials)
                    lines.append(f"Server ({key} QPS): VALID {valid} of {len(trials)}, median p99 "
                                 f"{statistics.median(float(t['p99_ms']) for t in trials):.2f} ms")  # type: ignore[arg-type]
            elif scenario == "Server":
                for variant in args.server_variants.split(","):
                    trials = []
                    for frac in (float(f) for f in args.server_steps.split(",")):
                        # The batcher's delay and batch come from the p99 target and measured latencies (preset).
                        s = run(Scenario.SERVER, target_qps=round(frac * peak), idle_dispatch=variant == "idle")
                        p99 = s.latency_ns.get("p99", 0) / 1e6
                        trials.append({"qps": round(frac * peak), "result": s.result, "p99_ms": p99})
                        print(f"Server ({variant}) trial {round(frac * peak)} QPS: {s.result}, p99 {p99:.2f} ms",
                              flush=True)
                        if s.result == "VALID":
                            break
                    out[f"server_{variant}"] = trials
                    best = next((t for t in trials if t["result"] == "VALID"), None)
                    lines.append(f"Server ({variant}): " + (
                        f"{best['qps']:,} QPS VALID (p99 {best['p99_ms']:.2f} ms) = {best['qps'] / peak:.3f} of peak"
                        if best else "no VALID trial"))
            elif scenario == "MultiStream":
                latency_bound(Scenario.MULTI_STREAM, "p99", 8)
            elif scenario == "SingleStream":
                latency_bound(Scenario.SINGLE_STREAM, "p90", 1)
        if args.timeline_qps:
            s = run(Scenario.SERVER, target_qps=args.timeline_qps, timeline=args.timeline)
            lines.append(f"Server at {args.timeline_qps:,.0f} QPS with --timeline: {s.result}, p99 "
                         f"{s.latency_ns.get('p99', 0) / 1e6:.2f} ms; timeline {args.timeline}")
    finally:
        engine.close()
    print(f"\n== {device_name(0)} x{args.gpus}, {engine.name}, {args.duration:g} s runs")
    print("\n".join(lines))
    args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
