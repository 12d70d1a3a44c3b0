"""What LoadGen costs per generated query, and how fast it drains queries completed inline.

LoadGen generates every query of a test before it issues the first, so its memory is set by
what it is told (durations, target QPS, expected latencies); asyncbench bounds those values
with the per-query figures measured here (``asyncbench/harness/plan.py``). The drain rate is
how fast a test ends after Ctrl-C in SingleStream and MultiStream, where each later query is
completed as failed inside the issue callback.

Each measurement runs in a fresh process with a SUT that completes inline.

    python benchmarks/loadgen_memory.py
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

CHILD = r"""
import resource, sys, tempfile
import mlperf_loadgen as lg
scenario, n = sys.argv[1], int(sys.argv[2])
def rss():
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith('VmRSS'))
issued, first = [0], []
base = rss()
def issue(ids, indices):
    if not first:
        first.append(rss())
    issued[0] += len(ids)
    lg.QuerySamplesComplete([lg.QuerySampleResponse(i, 0, 0) for i in ids])
sut = lg.ConstructFastSUT(issue, lambda: None)
qsl = lg.ConstructQSL(1024, 1024, lambda x: None, lambda x: None)
s = lg.TestSettings()
s.FromConfig("", "mobilenet", scenario, 0)
s.scenario, s.mode = getattr(lg.TestScenario, scenario), lg.TestMode.PerformanceOnly
s.min_duration_ms, s.min_query_count = 1000, 1
if scenario == "SingleStream":
    s.single_stream_expected_latency_ns = max(1, int(2e9 / n))  # 2 x 1 s / latency = n queries
elif scenario == "MultiStream":
    s.multi_stream_expected_latency_ns = max(1, int(2e9 / n))
elif scenario == "Server":
    s.server_target_qps = float(n)
else:
    s.offline_expected_qps = n / 1.1
log = lg.LogSettings()
log.log_output.outdir = tempfile.mkdtemp()
lg.StartTestWithLogSettings(sut, qsl, s, log, "/nonexistent/audit.config")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(first[0] - base, peak - base, issued[0])
"""


def measure(scenario: str, n: int) -> tuple[int, int, int]:
    """(bytes at the first issue, peak bytes, samples issued in the 1 s test) over the process's start."""
    done = subprocess.run([sys.executable, "-c", CHILD, scenario, str(n)], capture_output=True, text=True, check=True)
    first, peak, issued = map(int, done.stdout.split())
    return first, peak, issued


def main() -> None:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"CPU: {cpu}, {os.cpu_count()} cores; python {platform.python_version()}")
    print("scenario       generated   at first issue   peak        per query (peak)   inline drain")
    for scenario, n in (("SingleStream", 1_000_000), ("MultiStream", 1_000_000), ("Offline", 5_000_000)):
        first, peak, issued = measure(scenario, n)
        queries = issued if scenario != "MultiStream" else issued // 8
        unit = "sample" if scenario == "Offline" else "query"
        drain = f"{queries / 1.0:,.0f} queries/s" if scenario != "Offline" else "-"
        print(f"{scenario:13s}  {n:>9,}   {first / 1e6:8.0f} MB      {peak / 1e6:6.0f} MB   "
              f"{peak / n:6.0f} B/{unit:6s}     {drain}")


if __name__ == "__main__":
    main()
