"""result.json: one machine-readable record per run, written into the run's log folder.

Everything a later reader (``asyncbench report``, ``asyncbench plot``, a tuning run, a script)
needs without parsing LoadGen's text files: the configuration, LoadGen's effective settings,
validity with its reasons, the metric, the latency percentiles (read from the detail log's
``:::MLLOG`` keys, not the human summary), the batch sizes, stage times, the harness's own
latency histogram, the engine and device, package versions and, in AccuracyOnly, the accuracy;
for a remote engine (Triton), per server the batches it got, their round trip and the server's own
time per request from its statistics API (``remote``, else null).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from pathlib import Path
from typing import Any

import asyncbench
from asyncbench.config import RunConfig, Scenario
from asyncbench.fileio import write_bytes_atomic
from asyncbench.host import environment, git_commit
from asyncbench.loadgen.accuracy import AccuracyResult
from asyncbench.loadgen.logs import RunSummary

SCHEMA_VERSION = 1
RESULT_FILE = "result.json"
PERCENTILES = ("50.00", "90.00", "95.00", "99.00", "99.90")
# MLPerf v0.5 MobileNet: 98% of the fp32 reference's 71.676% top-1.
ACCURACY_TARGET_PERCENT = 0.98 * 71.676
_PERCENTILE_KEY = re.compile(r"^result_(\d+\.\d+)_percentile_(per_query_)?latency_ns$")


def _plain(value: object) -> object:
    """JSON-ready form of config values: enums by value, paths as strings, tuples as lists."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def config_record(cfg: RunConfig) -> dict[str, Any]:
    """The full run configuration, nested as RunConfig is."""
    record = _plain(dataclasses.asdict(cfg))
    assert isinstance(record, dict)
    return record


def latency_percentiles(detail: dict[str, Any], scenario: Scenario | None) -> dict[str, int]:
    """``{"p50": ns, ..., "p99.9": ns}`` from the detail log (MultiStream: per query, as LoadGen judges it)."""
    per_query = scenario == Scenario.MULTI_STREAM
    found: dict[str, int] = {}
    for key, value in detail.items():
        match = _PERCENTILE_KEY.match(key)
        if match and bool(match.group(2)) == per_query and match.group(1) in PERCENTILES:
            found[f"p{float(match.group(1)):g}"] = int(value)
    if not found and per_query:  # an older LoadGen logs MultiStream per sample only
        return latency_percentiles(detail, None)
    return found


def build_result(*, cfg: RunConfig, engine_name: str, device: str, policy: dict[str, object],
                 summary: RunSummary | None, effective: dict[str, object], detail: dict[str, Any],
                 failure: dict[str, str | None] | None, counts: dict[str, int], histogram: dict[int, int],
                 stage_seconds: dict[str, float], latency_histogram: dict[str, object],
                 accuracy: AccuracyResult | None, log_dir: Path,
                 remote: dict[str, Any] | None = None) -> dict[str, Any]:
    """The result record of one run (see the module docstring for what it holds)."""
    validity = "FAILED" if failure else (summary.result if summary is not None else None)
    return {
        "schema_version": SCHEMA_VERSION,
        "asyncbench": {"version": asyncbench.__version__, "git": git_commit()},
        "log_dir": str(log_dir),
        "config": config_record(cfg),
        "engine": {"name": engine_name, "device": device},
        "batching": policy,
        "loadgen_effective": effective,
        "result": {
            "validity": validity,
            "reasons": summary.reasons if summary is not None else [],
            "early_stopping": {"met": detail.get("early_stopping_met"),
                               "verdict": summary.early_stopping if summary is not None else []},
            "failure": failure,
            "loadgen_errors": summary.errors if summary is not None else None,
        },
        "metric": {"name": summary.metric_name, "value": summary.metric_value} if summary is not None else None,
        "latency_ns": latency_percentiles(detail, cfg.scenario),
        "samples": counts,
        "batch_sizes": {str(size): n for size, n in sorted(histogram.items())},
        "stage_seconds": stage_seconds,
        "harness_latency": latency_histogram,
        "accuracy": None if accuracy is None else {
            "percent": accuracy.accuracy, "good": accuracy.good, "total": accuracy.total,
            "target_percent": round(ACCURACY_TARGET_PERCENT, 3),
            "met": accuracy.accuracy is not None and accuracy.accuracy >= ACCURACY_TARGET_PERCENT},
        "environment": environment(device),
        "remote": remote,
    }


def write_result(log_dir: Path, result: dict[str, Any]) -> Path:
    """result.json in the run's folder."""
    path = log_dir / RESULT_FILE
    write_bytes_atomic(path, (json.dumps(result, indent=1, default=str) + "\n").encode())
    return path
