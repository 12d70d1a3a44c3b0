"""The human summary printed after each scenario: LoadGen's effective settings, never just the requested ones."""

from __future__ import annotations

from pathlib import Path

from asyncbench.config import RunConfig
from asyncbench.loadgen.logs import RunSummary
from asyncbench.loadgen.sut import SampleCounts
from asyncbench.runtime.pipeline import Pipeline

# LoadGen's effective_* keys the report shows, per scenario (after scenario and mode).
EFFECTIVE_SHOWN = {
    "Server": ("target_qps", "target_latency_ns", "min_duration_ms", "min_query_count", "performance_sample_count",
               "max_async_queries"),
    "Offline": ("target_qps", "min_duration_ms", "performance_sample_count"),
    "SingleStream": ("target_qps", "min_duration_ms", "min_query_count", "performance_sample_count"),
    "MultiStream": ("target_qps", "samples_per_query", "min_duration_ms", "min_query_count",
                    "performance_sample_count"),
}


def format_histogram(hist: dict[int, int], max_items: int = 12) -> str:
    """`size x count` pairs; many distinct sizes (Server) are folded into power-of-two ranges."""
    if not hist:
        return "none"
    if len(hist) <= max_items:
        return ", ".join(f"{b}x{n}" for b, n in sorted(hist.items()))
    buckets: dict[int, int] = {}
    for size, count in hist.items():
        low = 1 << (size.bit_length() - 1)
        buckets[low] = buckets.get(low, 0) + count
    return ", ".join(f"{low}-{2 * low - 1}x{n}" if low > 1 else f"1x{n}" for low, n in sorted(buckets.items()))


def format_report(cfg: RunConfig, engine_name: str, summary: RunSummary | None, pipeline: Pipeline, log_dir: Path,
                  effective: dict[str, object], counts: SampleCounts) -> str:
    """One scenario's result: effective settings, validity, metric, latencies, batch sizes and stage times."""
    scenario, mode = effective.get("scenario", cfg.scenario), effective.get("test_mode", cfg.loadgen.test_mode)
    lines = [f"== {scenario} / {mode} on {engine_name} ({cfg.process.loop})"]
    shown = [f"{k} {effective[k]}" for k in EFFECTIVE_SHOWN.get(str(scenario), ()) if k in effective]
    if shown:
        lines.append("effective: " + ", ".join(shown))
    if pipeline.failure is not None:
        said = f" (LoadGen's summary says {summary.result}, but it cannot see failed samples)" if (
            summary is not None and summary.result == "VALID") else ""
        lines.append(f"result: FAILED: {counts.failed} of {counts.issued} samples completed as failed{said}")
    elif summary is not None and summary.result is not None:
        lines.append(f"result: {summary.result}" + ("" if summary.result == "VALID" else
                                                    "".join(f"\n  - {r}" for r in summary.reasons)))
    if summary is not None and summary.result is not None:
        if summary.metric_name:
            lines.append(f"{summary.metric_name}: {summary.metric_value:g}")
        pct = summary.latency_ns
        lines.append("latency: " + ", ".join(f"{k} {pct[k] / 1e6:.3f} ms" for k in ("p50", "p90", "p99") if k in pct))
    lines.append("batch sizes: " + format_histogram(pipeline.batcher.histogram()))
    t = pipeline.times
    lines.append(f"stage time: gather {t.gather:.3f} s, execute {t.execute:.3f} s, complete {t.complete:.3f} s "
                 f"over {t.batches} batches / {t.samples} samples")
    lines.append(f"logs: {log_dir}")
    return "\n".join(lines)
