"""CPU throughput of the fp32 and INT8 MobileNet models through OnnxRuntimeEngine.

The two models are measured alternately within each round and the per-point median over rounds
is reported, so the INT8/fp32 ratio compares runs made side by side on the same machine state.

    python benchmarks/engine_cpu.py [--rounds 5] [--seconds-per-point 1.0] [--threads N]
    python benchmarks/engine_cpu.py --sweep   # the INT8 model under each onnxruntime session setting
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from asyncbench.contract import SAMPLE_DTYPE, SAMPLE_SHAPE
from asyncbench.data.dataset import VAL_LAYOUT, resolve_dataset
from asyncbench.engines.onnxruntime_engine import OnnxRuntimeEngine
from asyncbench.errors import UserError
from asyncbench.host import cpu_model
from asyncbench.paths import BuildPaths

BATCH_SIZES = (1, 8, 32)


def busy_cpu_seconds() -> float | None:
    """CPU seconds every process on the machine has spent busy since boot (None off Linux)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds this process (all its threads) has used."""
    times = os.times()
    return times.user + times.system


def load_samples(paths: BuildPaths, count: int) -> tuple[np.ndarray, str]:
    """``count`` int8 NHW4 samples: the preprocessed validation images if present, else noise."""
    folder = resolve_dataset(paths).preprocessed_dir(paths.preprocessed, VAL_LAYOUT)
    files = sorted(folder.glob("*.npy"))
    if files:
        images = [np.load(f).reshape(SAMPLE_SHAPE) for f in files[:count]]
        stack = np.stack([images[i % len(images)] for i in range(count)]).astype(SAMPLE_DTYPE, copy=False)
        return stack, f"{len(images)} of the {len(files)} preprocessed images in {folder}"
    rng = np.random.default_rng(0)
    stack = rng.integers(-128, 128, size=(count, *SAMPLE_SHAPE), dtype=np.int8)
    stack[..., 3] = 0
    return stack, f"deterministic pseudo-random int8 input (no preprocessed images under {folder})"


def time_point(engine: OnnxRuntimeEngine, batch: np.ndarray, seconds: float) -> float:
    """Mean seconds per ``infer`` over at least ``seconds`` (and at least two calls)."""
    calls, start = 0, time.perf_counter()
    while True:
        engine.infer(batch)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 2:
            return elapsed / calls


SWEEP: dict[str, dict[str, object]] = {
    "default (threads: onnxruntime's, spinning, optimisation all)": {},
    "1 intra-op thread": {"intra_op_threads": 1},
    "2 intra-op threads": {"intra_op_threads": 2},
    "no spinning": {"spinning": False},
    "optimisation extended (no NCHWc layout)": {"optimization": "extended"},
    "optimisation basic": {"optimization": "basic"},
}


def sweep(paths: BuildPaths, rounds: int, seconds: float) -> None:
    """The INT8 model under each session setting: batch 1 and 32 images/s (alternating rounds) and load seconds."""
    samples, source = load_samples(paths, 32)
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, onnxruntime {ort.__version__}; input: {source}")
    print(f"command: python {shlex.join(sys.argv)}\n")
    engines, load_s = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        cached = Path(tmp) / "int8_optimized.onnx"
        variants = {**SWEEP, "optimised model written on first load": {"optimized_model": cached},
                    "optimised model read from disk": {"optimized_model": cached}}
        for name, options in variants.items():
            start = time.perf_counter()
            engines[name] = OnnxRuntimeEngine(paths.int8_model, max_batch_size=32, **options)  # type: ignore[arg-type]
            load_s[name] = time.perf_counter() - start
            engines[name].warmup([1, 32])
        rates: dict[tuple[str, int], list[float]] = {(n, b): [] for n in engines for b in (1, 32)}
        for round_index in range(rounds):
            order = list(engines) if round_index % 2 == 0 else list(reversed(engines))
            for size in (1, 32):
                batch = np.ascontiguousarray(samples[:size])
                for name in order:
                    rates[name, size].append(size / time_point(engines[name], batch, seconds))
        for engine in engines.values():
            engine.close()
    print("| session setting | load s | batch 1 images/s | batch 32 images/s |\n|---|---:|---:|---:|")
    for name in engines:
        print(f"| {name} | {load_s[name]:.2f} | {statistics.median(rates[name, 1]):.1f} | "
              f"{statistics.median(rates[name, 32]):.1f} |")
    print(f"\n{rounds} rounds x {seconds:g} s per point, settings alternating; median images/s.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per point (median reported)")
    parser.add_argument("--seconds-per-point", type=float, default=1.0, help="time per model/batch in each round")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: its own)")
    parser.add_argument("--build-dir", type=Path, default=Path("build"), help="build directory (default ./build)")
    parser.add_argument("--sweep", action="store_true", help="the INT8 model under each onnxruntime session setting")
    args = parser.parse_args()
    if args.rounds < 1 or args.seconds_per_point <= 0 or (args.threads is not None and args.threads < 1):
        parser.error("--rounds and --threads must be at least 1 and --seconds-per-point positive")

    paths = BuildPaths(args.build_dir)
    if args.sweep:
        sweep(paths, args.rounds, args.seconds_per_point)
        return 0
    models = {"fp32": paths.fp32_nhw4_model, "int8": paths.int8_model}
    for path in models.values():
        if not path.is_file():
            print(f"error: model {path} does not exist: run `make calibrate` first", file=sys.stderr)
            return 1
    try:
        engines = {
            name: OnnxRuntimeEngine(path, max_batch_size=max(BATCH_SIZES), intra_op_threads=args.threads)
            for name, path in models.items()
        }
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    samples, source = load_samples(paths, max(BATCH_SIZES))
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, onnxruntime {ort.__version__}")
    print(f"threads: {args.threads or 'onnxruntime default'}")
    print(f"input: {source}")
    print(f"command: python {shlex.join(sys.argv)}")
    print()

    for engine in engines.values():
        engine.warmup(BATCH_SIZES)
    per_call: dict[tuple[str, int], list[float]] = {(m, b): [] for m in engines for b in BATCH_SIZES}
    wall, busy, own = time.perf_counter(), busy_cpu_seconds(), own_cpu_seconds()
    for round_index in range(args.rounds):
        order = list(engines) if round_index % 2 == 0 else list(reversed(engines))  # cancel ordering effects
        for size in BATCH_SIZES:
            batch = np.ascontiguousarray(samples[:size])
            for name in order:
                per_call[name, size].append(time_point(engines[name], batch, args.seconds_per_point))
    wall, own = time.perf_counter() - wall, own_cpu_seconds() - own
    busy_after = busy_cpu_seconds()
    for engine in engines.values():
        engine.close()

    print("| model | batch | median ms/batch | rounds min-max ms | images/s | int8/fp32 speed |")
    print("|---|---:|---:|---:|---:|---:|")
    for size in BATCH_SIZES:
        fp32 = statistics.median(per_call["fp32", size])
        for name in engines:
            times = per_call[name, size]
            seconds = statistics.median(times)
            spread = f"{min(times) * 1e3:.1f}-{max(times) * 1e3:.1f}"
            ratio = f"{fp32 / seconds:.2f}x" if name == "int8" else ""
            print(f"| {name} | {size} | {seconds * 1e3:.2f} | {spread} | {size / seconds:.1f} | {ratio} |")
    print(f"\n{args.rounds} rounds x {args.seconds_per_point:g} s per point; median of the per-round mean call time.")
    if busy is not None and busy_after is not None:
        others = max(0.0, busy_after - busy - own) / wall
        print(f"other processes kept {others:.2f} of {os.cpu_count()} CPUs busy during the measurement (want ~0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
