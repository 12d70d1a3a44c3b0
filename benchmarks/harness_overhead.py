"""Highest VALID Server QPS (p99 <= 10 ms): asyncbench with the null engine vs a minimal inline SUT.

Rerun: python benchmarks/harness_overhead.py [--duration 10] [--precision 0.03] [--baseline-tree DIR]

The inline SUT completes every sample inside LoadGen's issue callback: the ceiling any Python
harness on this machine can reach. asyncbench runs its full path (coalesced hand-off to the
event loop, dynamic batcher, worker thread, one QuerySamplesComplete per batch) with the null
engine, which skips the host gather. Each trial is a separate process running LoadGen's Server
scenario with identical settings; trials of the two SUTs alternate, so both searches see the
same machine state. The search doubles the QPS until a trial is INVALID, then bisects.
With ``--baseline-tree`` (a checkout of another commit, e.g. ``git worktree add /tmp/base HEAD~1``)
that tree's asyncbench is searched too, alternating with the other two: a refactor's cost is then
a ratio measured in the same run.
Each trial's validity and p99 come from its result.json; the inline SUT's from LoadGen's logs, read
into the same keys (benchmarks/trial.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from trial import REPO, latency_ms, loadgen_record, run_trial, tree_env, validity

ROOT = REPO


def inline_trial(qps: float, duration: float, log_dir: Path) -> None:
    """Child process: the minimal SUT (complete inline in issue_queries)."""
    import mlperf_loadgen as lg
    import numpy as np

    from asyncbench.config import Scenario
    from asyncbench.loadgen.settings import LoadGenOptions, build_test_settings, make_log_settings

    settings, _ = build_test_settings(LoadGenOptions(Scenario.SERVER, target_qps=qps, min_duration_s=duration,
                                                     min_query_count=1024, performance_sample_count=104))
    top1 = np.zeros(1, np.int32)
    ptr = top1.ctypes.data

    def issue(ids: list[int], indices: list[int]) -> None:
        lg.QuerySamplesComplete([lg.QuerySampleResponse(i, ptr, 4) for i in ids])

    sut = lg.ConstructFastSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(104, 104, lambda s: None, lambda s: None)
    lg.StartTestWithLogSettings(sut, qsl, settings, make_log_settings(log_dir))
    lg.DestroyQSL(qsl)
    lg.DestroySUT(sut)


def trial(kind: str, qps: float, duration: float, tree: Path = ROOT, extra: tuple[str, ...] = ()
          ) -> tuple[bool, float | None]:
    """(VALID?, p99 ms) of one run in a fresh process; asyncbench runs from ``tree`` with ``extra`` options."""
    timeout = duration * 10 + 120
    if kind != "inline":
        t = run_trial(["--engine", "null", "--scenario", "Server", "--target-qps", str(qps), "--min-duration",
                       str(duration), "--build-dir", str(ROOT / "build"), *extra], tree=tree, timeout=timeout)
        return t.valid, t.p99_ms
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, __file__, "--inline-trial", str(qps), "--duration", str(duration),
                        "--log", tmp], cwd=tree, capture_output=True, text=True, timeout=timeout, env=tree_env(tree))
        record = loadgen_record(Path(tmp))
    return validity(record) == "VALID", latency_ms(record)


def fixed_rates(kinds: tuple[str, ...], trees: dict[str, Path], extras: dict[str, tuple[str, ...]],
                rates: list[float], repeats: int, duration: float) -> int:
    """Every SUT at each QPS ``repeats`` times, alternating run by run: VALID count and median p99 per cell.

    A bisection's last steps hinge on single runs near the edge, where p99 varies run to run;
    repeated runs at the same rates compare two trees within that noise.
    """
    cells: dict[tuple[str, float], list[tuple[bool, float | None]]] = {}
    n = 0
    for _ in range(repeats):
        for qps in rates:
            for kind in kinds:
                valid, p99 = trial(kind, qps, duration, trees.get(kind, ROOT), extras.get(kind, ()))
                cells.setdefault((kind, qps), []).append((valid, p99))
                n += 1
                print(f"| {n} | {kind} | {qps:g} | {'VALID' if valid else 'INVALID'} | "
                      f"{'-' if p99 is None else f'{p99:.2f}'} |", flush=True)
    print(f"\n| SUT | target QPS | VALID of {repeats} | median p99 ms |\n|---|---|---|---|")
    for (kind, qps), runs in cells.items():
        p99s = sorted(p for _, p in runs if p is not None)
        median = p99s[len(p99s) // 2] if p99s else float("nan")
        print(f"| {kind} | {qps:g} | {sum(v for v, _ in runs)} | {median:.2f} |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per trial (default 10)")
    parser.add_argument("--start", type=float, default=2500.0, help="first QPS tried")
    parser.add_argument("--precision", type=float, default=0.03, help="stop bisecting at this relative gap")
    parser.add_argument("--baseline-tree", type=Path, help="also search the asyncbench of this checkout")
    parser.add_argument("--with-progress", action="store_true",
                        help="also run this tree with a progress line every second (the default SUT runs without)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=OPTIONS",
                        help="also run this tree with these extra options, e.g. no-idle=--no-idle-dispatch")
    parser.add_argument("--at", type=lambda t: [float(q) for q in t.split(",")],
                        help="instead of searching: run every SUT at these QPS, alternating (e.g. 250000,280000)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per SUT and QPS with --at (default 5)")
    parser.add_argument("--inline-trial", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inline_trial is not None:
        inline_trial(args.inline_trial, args.duration, args.log)
        return 0

    trees = {"asyncbench": ROOT}
    extras = {"asyncbench": ("--no-progress",), "progress": ("--progress-every", "1")}
    if args.with_progress:
        trees["progress"] = ROOT
    for variant in args.variant:
        name, _, options = variant.partition("=")
        trees[name], extras[name] = ROOT, tuple(options.split())
    if args.baseline_tree is not None:
        trees["baseline"] = args.baseline_tree.resolve()
    kinds = ("inline", *trees)
    state = {k: {"lo": 0.0, "hi": None, "next": args.start} for k in kinds}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    commits = {k: subprocess.run(["git", "-C", str(t), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip() for k, t in trees.items()}
    print("command: python benchmarks/harness_overhead.py " + " ".join(sys.argv[1:]) + "\n")
    print("trees: " + ", ".join(f"{k} {t} (commit {commits[k] or '?'}, plus its uncommitted changes)"
                                for k, t in trees.items()) + "\n")
    print("| trial | SUT | target QPS | result | p99 ms |\n|---|---|---|---|---|")
    if args.at:
        return fixed_rates(kinds, trees, extras, args.at, args.repeats, args.duration)
    n = 0
    while any(s["next"] is not None for s in state.values()):
        for kind in kinds:  # alternate so both searches share the machine's state
            s = state[kind]
            if s["next"] is None:
                continue
            qps = round(s["next"])
            valid, p99 = trial(kind, qps, args.duration, trees.get(kind, ROOT), extras.get(kind, ()))
            n += 1
            print(f"| {n} | {kind} | {qps} | {'VALID' if valid else 'INVALID'} | "
                  f"{'-' if p99 is None else f'{p99:.2f}'} |", flush=True)
            if valid:
                s["lo"] = qps
            else:
                s["hi"] = qps
            if s["hi"] is None:
                s["next"] = qps * 2
            elif s["hi"] - s["lo"] <= args.precision * s["hi"]:
                s["next"] = None
            else:
                s["next"] = (s["lo"] + s["hi"]) / 2 if s["lo"] else s["hi"] / 2
    inline = state["inline"]["lo"]
    print(f"\nhighest VALID Server QPS: inline {inline:g}; " + "; ".join(
        f"{k} {state[k]['lo']:g} (ratio to inline {state[k]['lo'] / inline if inline else float('nan'):.2f})"
        for k in trees))
    return 0


if __name__ == "__main__":
    sys.exit(main())
