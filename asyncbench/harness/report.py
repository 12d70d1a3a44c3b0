"""What people read: the summary printed after each scenario, and `asyncbench report`'s table of runs."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from asyncbench.config import RunConfig
from asyncbench.errors import UserError
from asyncbench.fileio import write_output
from asyncbench.harness.result import RESULT_FILE
from asyncbench.loadgen.logs import RunSummary
from asyncbench.loadgen.sut import SampleCounts
from asyncbench.runtime.ledger import Driver

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


def invalid_reasons(summary: RunSummary) -> list[str]:
    """Why LoadGen judged a run INVALID, in its words: each constraint not met, then its early-stopping verdict
    where that failed, then its recommendations (an early-stopping failure comes with no recommendation)."""
    reasons = [f"{name}: NO" for name, met in summary.constraints.items() if not met]
    if not summary.constraints.get("Early stopping satisfied", True):
        reasons += summary.early_stopping
    reasons += summary.reasons
    return reasons or ["LoadGen's summary names no reason: see mlperf_log_detail.txt"]


def format_report(cfg: RunConfig, engine_name: str, summary: RunSummary | None, driver: Driver, log_dir: Path,
                  effective: dict[str, object], counts: SampleCounts) -> str:
    """One scenario's result: effective settings, validity, metric, latencies, batch sizes and stage times."""
    scenario, mode = effective.get("scenario", cfg.scenario), effective.get("test_mode", cfg.loadgen.test_mode)
    lines = [f"== {scenario} / {mode} on {engine_name} ({cfg.process.loop})"]
    shown = [f"{k} {effective[k]}" for k in EFFECTIVE_SHOWN.get(str(scenario), ()) if k in effective]
    if shown:
        lines.append("effective: " + ", ".join(shown))
    if driver.ledger.failure is not None:
        said = f" (LoadGen's summary says {summary.result}, but it cannot see failed samples)" if (
            summary is not None and summary.result == "VALID") else ""
        lines.append(f"result: FAILED: {counts.failed} of {counts.issued} samples completed as failed{said}")
    elif summary is not None and summary.result is not None:
        lines.append(f"result: {summary.result}" + ("" if summary.result == "VALID" else
                                                    "".join(f"\n  - {r}" for r in invalid_reasons(summary))))
    if summary is not None and summary.result is not None:
        if summary.metric_name:
            lines.append(f"{summary.metric_name}: {summary.metric_value:g}")
        pct = summary.latency_ns
        lines.append("latency: " + ", ".join(f"{k} {pct[k] / 1e6:.3f} ms" for k in ("p50", "p90", "p99") if k in pct))
    lines.append("batch sizes: " + format_histogram(driver.histogram()))
    t = driver.ledger.times
    lines.append(f"stage time: gather {t.gather:.3f} s, execute {t.execute:.3f} s, complete {t.complete:.3f} s "
                 f"over {t.batches} batches / {t.samples} samples")
    lines.append(f"logs: {log_dir}")
    return "\n".join(lines)


REPORT_COLUMNS = ("run", "scenario", "mode", "engine", "validity", "metric", "value", "p50_ms", "p90_ms", "p99_ms",
                  "target_qps", "max_batch", "delay_us", "accuracy")


def find_results(paths: Sequence[Path]) -> list[Path]:
    """The result.json of each run folder given, or of every run below a folder (a tune folder, a log root)."""
    found: list[Path] = []
    for path in paths:
        if (path / RESULT_FILE).is_file():
            found.append(path / RESULT_FILE)
        elif path.is_dir():
            found.extend(sorted(p for p in path.rglob(RESULT_FILE) if "latest" not in p.parts))
        else:
            raise UserError(f"{path} is not a run folder (no {RESULT_FILE}) nor a folder holding runs")
    if not found:
        raise UserError(f"no {RESULT_FILE} under {', '.join(map(str, paths))}: runs write one since this version")
    return found


def report_row(path: Path) -> dict[str, object]:
    """One table row from a result.json."""
    try:
        record = json.loads(path.read_text())
        latency, cfg, batching = record["latency_ns"], record["config"], record["batching"]
        accuracy = record.get("accuracy")
        return {
            "run": path.parent.name, "scenario": cfg["scenario"], "mode": cfg["loadgen"]["test_mode"],
            "engine": record["engine"]["name"], "validity": record["result"]["validity"],
            "metric": (record["metric"] or {}).get("name"), "value": (record["metric"] or {}).get("value"),
            **{f"{k}_ms": round(latency[k] / 1e6, 3) if k in latency else None for k in ("p50", "p90", "p99")},
            "target_qps": record["loadgen_effective"].get("target_qps"), "max_batch": batching["max_batch_size"],
            "delay_us": batching["max_queue_delay_us"],
            "accuracy": None if not accuracy else accuracy["percent"],
        }
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a result.json this version reads ({type(e).__name__}: {e})") from None


def format_table(rows: Sequence[dict[str, object]]) -> str:
    """A plain-text table, one run per line, columns aligned."""
    def cell(value: object) -> str:
        if value is None:
            return "-"
        return f"{value:,.2f}" if isinstance(value, float) else str(value)

    table = [list(REPORT_COLUMNS), *([cell(row[c]) for c in REPORT_COLUMNS] for row in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(REPORT_COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in table)


def write_csv(path: Path, rows: Sequence[dict[str, object]]) -> None:
    """The table as CSV (raw values), replaced atomically; a write failure is one line."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, REPORT_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_output(path, text.getvalue().encode(), "--csv")
