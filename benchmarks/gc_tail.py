"""Server tail latency with and without the cyclic garbage collector during the run (null engine).

Rerun: python benchmarks/gc_tail.py [--qps 100000] [--trials 3] [--duration 10]

Each trial is a separate `python -m asyncbench` process at the same Server QPS; trials with the
runtime's default (collector off and the heap frozen while LoadGen runs) alternate with trials
where the collector runs as Python's default, so both see the same machine state.
"""

from __future__ import annotations

import argparse
import os
import sys

from trial import run_trial

CHILD = """
import contextlib, sys
import asyncbench.runtime.process as process
if sys.argv[1] == "collector-on":
    process.quiet_gc = contextlib.nullcontext
from asyncbench.cli import main
sys.exit(main(sys.argv[2:]))
"""


def trial(mode: str, qps: float, duration: float) -> tuple[str, float]:
    """(LoadGen's result, p99 ms) of one Server run."""
    t = run_trial(["--engine", "null", "--scenario", "Server", "--target-qps", str(qps), "--min-duration",
                   str(duration)], launcher=("-c", CHILD, mode), timeout=600)
    p99 = t.p99_ms
    return t.validity, float("nan") if p99 is None else p99


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--qps", type=float, default=100_000)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--duration", type=float, default=10.0)
    args = p.parse_args()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; Server {args.qps:g} QPS, "
          f"{args.duration:g} s per trial")
    print("| trial | collector | result | p99 ms |")
    print("|---|---|---|---|")
    for i in range(args.trials):
        for mode in ("collector-off", "collector-on"):
            result, p99 = trial(mode, args.qps, args.duration)
            print(f"| {i + 1} | {mode.split('-')[1]} during the run | {result} | {p99:.2f} |", flush=True)


if __name__ == "__main__":
    main()
