"""Where a batch's time goes, read from a ``--timeline`` trace: per stage, median / p90 / p99 in microseconds.

Rerun: python benchmarks/timeline_summary.py TIMELINE.json [--json] [--excerpt OUT.json --ms 250]

Host stages come from the pipeline's stamps (queued, waiting for a slot, executing, completing).
On a GPU engine the trace also holds the device's own spans (CUDA events): copy in and compute
(top-1 back included). With one GPU, the n-th executed batch is the n-th device batch, so the
host's execute span splits into: launch (host enqueue to the copy starting on the GPU), copy,
wait for the compute stream, compute, and the notice (GPU done to the loop seeing the result).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"median": statistics.median(ordered), "p90": at(0.90), "p99": at(0.99), "count": len(ordered)}


def summarize(document: dict[str, object]) -> dict[str, dict[str, float]]:
    """Stage name -> quantiles of its durations (microseconds)."""
    events = [e for e in document["traceEvents"] if isinstance(e, dict) and e.get("ph") == "X"]  # type: ignore[union-attr]
    stages: dict[str, list[float]] = {}
    for e in events:
        stage = str(e["name"]).split(" (")[0]
        stages.setdefault(stage, []).append(float(e["dur"]))
    result = {stage: _quantiles(values) for stage, values in stages.items()}
    execute = sorted((e for e in events if str(e["name"]).startswith("execute")), key=lambda e: e["ts"])
    copies = sorted((e for e in events if str(e["name"]).startswith("copy in")), key=lambda e: e["ts"])
    computes = sorted((e for e in events if str(e["name"]).startswith("compute")), key=lambda e: e["ts"])
    devices = {e["tid"] for e in copies}
    if execute and len(execute) == len(copies) == len(computes) and len(devices) == 1:
        split: dict[str, list[float]] = {"launch": [], "wait for compute stream": [], "notice": []}
        for host, copy, compute in zip(execute, copies, computes, strict=True):
            split["launch"].append(copy["ts"] - host["ts"])
            split["wait for compute stream"].append(compute["ts"] - (copy["ts"] + copy["dur"]))
            split["notice"].append(host["ts"] + host["dur"] - (compute["ts"] + compute["dur"]))
        result.update({f"execute: {k}": _quantiles(v) for k, v in split.items()})
    return result


def excerpt(document: dict[str, object], window_ms: float) -> dict[str, object]:
    """The trace's first ``window_ms``: the events starting in it, and every track name (small enough to share)."""
    events = document["traceEvents"]
    assert isinstance(events, list)
    kept = [e for e in events if e.get("ph") == "M" or float(e.get("ts", 0)) < window_ms * 1000]
    batches = [e for e in kept if e.get("ph") == "X" and str(e["name"]).startswith("execute")]
    other = dict(document.get("otherData") or {})  # type: ignore[call-overload]
    other.update(excerpt_ms=window_ms, excerpt_batches=len(batches))
    return {"traceEvents": kept, "displayTimeUnit": "ms", "otherData": other}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("timeline", type=Path)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--excerpt", type=Path, help="also write the trace's first --ms milliseconds here")
    p.add_argument("--ms", type=float, default=250.0)
    args = p.parse_args()
    document = json.loads(args.timeline.read_text())
    if args.excerpt is not None:
        args.excerpt.write_text(json.dumps(excerpt(document, args.ms)))
    figures = summarize(document)
    if args.json:
        print(json.dumps({"other": document.get("otherData"), "stages": figures}, indent=1))
        return
    print(f"{args.timeline}: {document.get('otherData')}")
    print(f"{'stage':32} {'batches':>8} {'median us':>10} {'p90 us':>10} {'p99 us':>10}")
    for stage, q in figures.items():
        print(f"{stage:32} {q['count']:>8} {q['median']:>10.1f} {q['p90']:>10.1f} {q['p99']:>10.1f}")


if __name__ == "__main__":
    main()
