"""Soak: Server at a fraction of the measured capacity for many minutes, watching memory and file descriptors.

One asyncbench process runs back-to-back Server tests (``--scenario Server,Server,...``), so what is
measured is a long-lived harness: one engine, one event loop per test, LoadGen started and torn
down again and again. Every minute the process's resident memory, open file descriptors and threads
are read from /proc. At the end every test must be VALID with no failed and no lost sample
(issued == completed in each test's result.json, which gives every figure printed at the end).

    python benchmarks/soak.py --engine null --minutes 30                  # capacity found first
    python benchmarks/soak.py --engine torch --minutes 10 --capacity-qps 40000
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trial import REPO, asyncbench_command, latency_ms, metric_value, read_records, run_trial, validity


def server_valid(engine_args: list[str], qps: float, seconds: float, repeats: int, log_dir: Path) -> bool:
    """Server tests at ``qps`` in one process: VALID only if every one of ``repeats`` is (p99 varies run to run)."""
    done = run_trial([*engine_args, "--scenario", ",".join(["Server"] * repeats), "--target-qps", f"{qps:.0f}",
                      "--min-duration", str(seconds)], log_dir=log_dir)
    results = [validity(r) for r in done.records]
    ok = done.returncode == 0 and len(results) == repeats and all(r == "VALID" for r in results)
    print(f"capacity search: {qps:.0f} QPS {'VALID' if ok else 'INVALID'} ({', '.join(results)})", flush=True)
    return ok


def find_capacity(engine_args: list[str], log_dir: Path, start: float, seconds: float, repeats: int) -> float:
    """Highest Server QPS VALID in every repeat: doubling from ``start``, then four bisection steps."""
    low, high = 0.0, start
    while server_valid(engine_args, high, seconds, repeats, log_dir):
        low, high = high, high * 2
    for _ in range(4):
        mid = (low + high) / 2
        low, high = (mid, high) if server_valid(engine_args, mid, seconds, repeats, log_dir) else (low, mid)
    return low


def sample(pid: int) -> dict[str, int]:
    """Resident memory (kB), open file descriptors and threads of a running process."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    rss = int(status["VmRSS"].split()[0])  # "  123456 kB"
    threads = int(status["Threads"])
    return {"rss_mb": rss // 1024, "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": threads}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="null")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--run-seconds", type=float, default=60.0, help="length of each Server test")
    parser.add_argument("--fraction", type=float, default=0.8, help="share of the capacity to run at")
    parser.add_argument("--capacity-qps", type=float, help="skip the search and use this capacity")
    parser.add_argument("--search-start", type=float, default=2000.0)
    parser.add_argument("--repeats", type=int, default=3, help="capacity search: VALID runs needed at a QPS")
    parser.add_argument("--log-dir", type=Path, default=None)
    parser.add_argument("extra", nargs="*", help="more asyncbench options (after --)")
    args = parser.parse_args()
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="soak-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    engine_args = ["--engine", args.engine, *args.extra]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.machine())
    print(f"machine: {cpu}, {os.cpu_count()} cores; python {platform.python_version()}", flush=True)
    capacity = args.capacity_qps or find_capacity(engine_args, log_dir / "search", args.search_start, 10.0,
                                                  args.repeats)
    qps = capacity * args.fraction
    runs = max(1, round(args.minutes * 60 / args.run_seconds))
    print(f"soak: {runs} Server tests of {args.run_seconds:g} s at {qps:.0f} QPS "
          f"({args.fraction:g} x capacity {capacity:.0f})", flush=True)
    soak_dir = log_dir / "soak"
    cmd = asyncbench_command([*engine_args, "--scenario", ",".join(["Server"] * runs), "--target-qps", f"{qps:.0f}",
                              "--min-duration", f"{args.run_seconds:g}"], soak_dir, log_dir / "soak.json")
    out = open(log_dir / "soak.out", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    start = time.monotonic()
    samples = []
    next_at = 20.0  # the first sample once the engine is built, then one a minute
    while proc.poll() is None:
        time.sleep(1.0)
        elapsed = time.monotonic() - start
        if elapsed >= next_at:
            next_at = 60.0 * (elapsed // 60 + 1)
            try:
                s = {"minute": round(elapsed / 60, 1), **sample(proc.pid)}
            except (FileNotFoundError, ProcessLookupError):
                break
            samples.append(s)
            print(f"  t={s['minute']:5.1f} min  rss {s['rss_mb']} MB  fds {s['fds']}  threads {s['threads']}",
                  flush=True)
    proc.wait()
    out.close()
    records = read_records(soak_dir, log_dir / "soak.json")
    results = [validity(r) for r in records]
    tests = len(records)
    lost = sum(r["samples"]["issued"] - r["samples"]["completed"] for r in records)
    failed = sum(r["samples"]["failed"] for r in records)
    qps_done = [v for v in map(metric_value, records) if v is not None]
    p99 = [v for v in (latency_ms(r) for r in records) if v is not None]
    steady = samples[1:] or samples
    print(f"exit {proc.returncode}; {results.count('VALID')}/{len(results)} VALID; {tests} tests, "
          f"{lost} lost and {failed} failed samples")
    if qps_done and p99:
        print(f"completed QPS {min(qps_done):.0f}-{max(qps_done):.0f}; p99 {min(p99):.3f}-{max(p99):.3f} ms")
    if steady:
        spans = {key: f"{min(s[key] for s in steady)}-{max(s[key] for s in steady)}" for key in ("rss_mb", "fds",
                                                                                                 "threads")}
        print(f"rss {spans['rss_mb']} MB, fds {spans['fds']}, threads {spans['threads']} (after the first sample)")
    print(f"logs: {log_dir}")
    ok = proc.returncode == 0 and results and all(r == "VALID" for r in results) and lost == 0 and failed == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
