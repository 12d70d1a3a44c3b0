"""Server latency at low load: p50/p99 of repeated runs, with and without dispatch to an idle engine.

Rerun: python benchmarks/low_load.py [--qps 2000] [--runs 5] [--duration 10] [--engine null]
       [--reference DIR --reference-pythonpath DIR]

Each run is a separate process (`python -m asyncbench --scenario Server`), the settings
alternating run by run so all see the same machine state. LoadGen's p50/p99 come from each
run's result.json. With ``--reference`` (see benchmarks/reference_cpu.py for DIR) MLCommons'
reference harness runs too, with its own do-nothing backend (``--backend null``), which like the
null engine measures the harness alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

from asyncbench.host import cpu_model

from reference_cpu import dataset_folder, run_reference, summary_latencies
from trial import run_trial

VARIANTS = {"idle dispatch (default)": (), "--no-idle-dispatch": ("--no-idle-dispatch",)}


def one_run(qps: float, duration: float, engine: str, extra: tuple[str, ...]) -> tuple[str, float, float]:
    """(validity, p50 ms, p99 ms) of one Server run."""
    t = run_trial(["--engine", engine, "--scenario", "Server", "--target-qps", str(qps), "--min-duration",
                   str(duration), "--no-progress", *extra], timeout=duration * 10 + 300, check=True)
    p50, p99 = t.latency_ms("p50"), t.latency_ms("p99")
    if p50 is None or p99 is None:
        raise RuntimeError(f"the run wrote no p50/p99 (exit {t.returncode}): {t.stderr[-2000:]}")
    return t.validity, p50, p99


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qps", type=float, default=2000.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--engine", default="null")
    parser.add_argument("--reference", type=Path, help="also run MLCommons' reference harness from this folder")
    parser.add_argument("--reference-pythonpath", default="", help="a folder with cv2 and pycocotools")
    args = parser.parse_args()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"command: python benchmarks/low_load.py {' '.join(sys.argv[1:])}\n")
    print("| run | setting | result | p50 ms | p99 ms |\n|---|---|---|---|---|")
    names = [*VARIANTS, *(["reference harness (null backend)"] if args.reference else [])]
    results: dict[str, list[tuple[str, float, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        data = dataset_folder(Path(tmp)) if args.reference else Path(tmp)
        for n in range(args.runs):
            for name in names:
                if name in VARIANTS:
                    validity, p50, p99 = one_run(args.qps, args.duration, args.engine, VARIANTS[name])
                else:
                    validity, ref_p50, ref_p99 = run_reference(args.reference, args.reference_pythonpath, data,
                                                               "Server", args.qps, args.duration, backend="null",
                                                               read=summary_latencies)
                    p50, p99 = ref_p50 or float("nan"), ref_p99 or float("nan")
                results[name].append((validity, p50, p99))
                print(f"| {n + 1} | {name} | {validity} | {p50:.3f} | {p99:.3f} |", flush=True)
    print(f"\n| setting | VALID of {args.runs} | median p50 ms | median p99 ms |\n|---|---|---|---|")
    for name, runs in results.items():
        print(f"| {name} | {sum(v == 'VALID' for v, _, _ in runs)} | {statistics.median(p for _, p, _ in runs):.3f} | "
              f"{statistics.median(p for _, _, p in runs):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
