"""Engine-only images/s per batch size on the GPU, plus what the copy path costs.

Rerun: python benchmarks/engine_roofline.py [--engine torch] [--torch-compile default] [--max-batch 1024]

Engine-only: one slot's CUDA graph replayed back to back on device buffers, timed with CUDA
events: no copies, no host round trip, no LoadGen. It is the ceiling the LoadGen scenarios are
compared against (benchmarks/gpu_scenarios.py measures both in one process).
Copy path: host-to-device copies of the batch's samples from the pinned arena, as the runtime
issues them: scattered rows (one run per sample) with cudaMemcpyBatchAsync and with one
cudaMemcpyAsync per run; GPU time and host CPU time per batch.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from asyncbench.config import BatchingConfig, EngineConfig, EngineKind, GpuConfig, RunConfig, TorchCompile
from asyncbench.engines.base import batch_sizes_upto, warmup_batch
from asyncbench.engines.gpu import GpuEngine, pinned_rows

ROOT = Path(__file__).resolve().parent.parent


def engine_only(engine: GpuEngine, seconds: float = 0.5) -> dict[int, float]:
    """Images/s per bucket of the first device, each timed over about ``seconds`` of GPU time."""
    worker = engine.workers[0]
    rates = {}
    for bucket in worker.buckets:
        probe = worker.time_compute(bucket, 3)
        repeats = max(5, int(seconds / max(probe, 1e-6)))
        rates[bucket] = bucket / worker.time_compute(bucket, repeats)
    return rates


def copy_costs(engine: GpuEngine, sizes: list[int], samples: int = 1024) -> list[dict[str, float]]:
    """Per batch size: GPU and CPU time of scattered-row copies, batched call vs one call per run."""
    from asyncbench.contract import SAMPLE_BYTES
    from asyncbench.cuda.memory import RunCopier

    worker = engine.workers[0]
    arena = pinned_rows(samples)  # as load_samples fills it
    arena[:] = warmup_batch(samples)
    worker.set_source(arena, on_device=False)
    rng = np.random.default_rng(0)
    rows_out = []
    for size in sizes:
        rows = rng.permutation(samples)[:size] * 2 % samples  # even rows only: no two rows adjacent
        entry: dict[str, float] = {"batch": size}
        for label, batch_api in (("batched", True), ("per_run", False)):
            worker.copier = RunCopier(SAMPLE_BYTES, batch_api)
            gpu_s, cpu_s = worker.time_copy(rows, 20)
            entry[f"{label}_gpu_us"] = gpu_s * 1e6
            entry[f"{label}_cpu_us"] = cpu_s * 1e6
            entry[f"{label}_samples_per_s"] = size / gpu_s
        rows_out.append(entry)
    worker.copier = RunCopier(SAMPLE_BYTES)
    return rows_out


def make_engine(args: argparse.Namespace) -> GpuEngine:
    from asyncbench.engines.sizing import open_engine
    from asyncbench.paths import BuildPaths

    cfg = RunConfig(batching=BatchingConfig(max_batch_size=args.max_batch, inflight=1),
                    engine=EngineConfig(EngineKind(args.engine), torch_compile=TorchCompile(args.torch_compile)),
                    gpu=GpuConfig(count=1))
    engine = open_engine(cfg, BuildPaths(Path(args.build_dir)))
    assert isinstance(engine, GpuEngine)
    return engine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="torch", choices=("torch", "tensorrt"))
    p.add_argument("--torch-compile", default="default")
    p.add_argument("--max-batch", type=int, default=1024)
    p.add_argument("--build-dir", default=str(ROOT / "build"))
    p.add_argument("--json", type=Path, default=Path(tempfile.gettempdir()) / "engine_roofline.json")
    args = p.parse_args()
    from asyncbench.cuda.api import device_name

    engine = make_engine(args)
    try:
        rates = engine_only(engine)
        copies = copy_costs(engine, [s for s in batch_sizes_upto(args.max_batch) if s >= 8])
    finally:
        engine.close()
    print(f"GPU: {device_name(0)}; engine {engine.name}, torch.compile {args.torch_compile}")
    print("| batch | engine-only images/s | ms per batch |")
    print("|---|---|---|")
    for b, r in rates.items():
        print(f"| {b} | {r:,.0f} | {b / r * 1e3:.3f} |")
    print("\nscattered-row host-to-device copies from the pinned arena (one run per sample):")
    print("| batch | batched call: GPU us / CPU us / samples/s | per-run calls: GPU us / CPU us / samples/s |")
    print("|---|---|---|")
    for c in copies:
        print(f"| {c['batch']:.0f} | {c['batched_gpu_us']:.0f} / {c['batched_cpu_us']:.0f} / "
              f"{c['batched_samples_per_s']:,.0f} | {c['per_run_gpu_us']:.0f} / {c['per_run_cpu_us']:.0f} / "
              f"{c['per_run_samples_per_s']:,.0f} |")
    args.json.write_text(json.dumps({"device": device_name(0), "engine_only": rates, "copies": copies}, indent=1))


if __name__ == "__main__":
    main()
