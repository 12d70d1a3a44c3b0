"""Reading LoadGen's mlperf_log_summary.txt and mlperf_log_detail.txt back, so a run can report its result.

The summary layout (LoadGen 6.0, ``PerformanceSummary::LogSummary``) is banner-delimited sections:

* "MLPerf Results Summary": ``SUT name``, ``Scenario``, ``Mode``, then the scenario's metric line
  (``90.0th percentile latency (ns)`` for SingleStream, ``99.0th percentile latency (ns)`` of
  whole queries for MultiStream, ``Completed samples per second`` for Server, ``Samples per
  second`` for Offline; the percentile follows the target_latency_percentile setting), then
  ``Result is : VALID|INVALID``, indented ``... satisfied : Yes|NO`` lines, a
  ``Recommendations:`` list of `` * `` bullets when INVALID (possibly empty, e.g. when only early
  stopping failed), and an ``Early Stopping Result:`` list (not for Offline). Bullets may wrap
  onto lines that start with a space.
* "Additional Stats": ``key : value`` lines, among them min/max/mean and 50/90/95/97/99/99.9
  percentile latencies in ns (per sample; per query for MultiStream, under ``Per-query latency:``).
* "Test Parameters Used": the effective settings as ``key : value``.
* then ``No warnings encountered during test.`` / ``N ERRORS encountered. See detailed log.``

In AccuracyOnly mode LoadGen writes only those last two lines.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncbench.errors import UserError

_BANNER = re.compile(r"^=+$")
_KEY_VALUE = re.compile(r"^\s*(?P<key>[^:]+?)\s*:\s*(?P<value>.*?)\s*$")
_COUNT = re.compile(r"^(?P<count>No|\d+) (?P<kind>warning|error)s? encountered", re.IGNORECASE)
_PERCENTILE = re.compile(r"^(?P<p>\d+(?:\.\d+)?) percentile latency \(ns\)$")
_DETAIL_PREFIX = ":::MLLOG "


@dataclass(frozen=True)
class LatencyStats:
    """LoadGen's latency digest in ns: per sample, or per query for MultiStream."""

    min_ns: int
    max_ns: int
    mean_ns: int
    percentiles_ns: dict[float, int]  # {50.0: ..., 90.0: ..., 95.0: ..., 97.0: ..., 99.0: ..., 99.9: ...}


@dataclass(frozen=True)
class RunSummary:
    """What mlperf_log_summary.txt says about one test.

    ``scenario``, ``mode``, ``result`` and the metric are None for an AccuracyOnly summary, which
    holds only the warning and error counts.
    """

    scenario: str | None
    mode: str | None
    result: str | None  # "VALID" or "INVALID"
    metric_name: str | None  # e.g. "Samples per second", "90.0th percentile latency (ns)"
    metric_value: float | None
    sut_name: str | None = None
    constraints: dict[str, bool] = field(default_factory=dict)  # {"Min duration satisfied": True, ...}
    reasons: list[str] = field(default_factory=list)  # the "Recommendations:" bullets
    early_stopping: list[str] = field(default_factory=list)  # the "Early Stopping Result:" bullets
    latency: LatencyStats | None = None
    stats: dict[str, float] = field(default_factory=dict)  # every numeric "Additional Stats" line
    parameters: dict[str, str] = field(default_factory=dict)  # "Test Parameters Used"
    warnings: int = 0
    errors: int = 0

    @property
    def valid(self) -> bool:
        return self.result == "VALID"

    @property
    def latency_ns(self) -> dict[str, int]:
        """The latency digest flat for reports: ``min``, ``mean``, ``max``, ``p50``, ``p99.9``, ... (empty if none)."""
        if self.latency is None:
            return {}
        flat = {"min": self.latency.min_ns, "mean": self.latency.mean_ns, "max": self.latency.max_ns}
        flat.update({f"p{p:g}": ns for p, ns in self.latency.percentiles_ns.items()})
        return flat


def _sections(lines: list[str]) -> dict[str, list[str]]:
    """Lines under each ``=====`` / title / ``=====`` banner, keyed by title."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    i = 0
    while i < len(lines):
        if _BANNER.match(lines[i]) and i + 2 < len(lines) and _BANNER.match(lines[i + 2]):
            current = sections.setdefault(lines[i + 1].strip(), [])
            i += 3
            continue
        if current is not None:
            current.append(lines[i])
        i += 1
    return sections


def _bullets(lines: list[str]) -> list[str]:
    """`` * text`` items, with their wrapped continuation lines joined on."""
    items: list[str] = []
    for line in lines:
        if line.startswith(" * "):
            items.append(line[3:].strip())
        elif line.strip() and items:
            items[-1] = f"{items[-1]} {line.strip()}"
    return items


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _latency(stats: dict[str, float]) -> LatencyStats | None:
    """The latency lines of "Additional Stats", if LoadGen printed them."""
    try:
        low, high, mean = (int(stats[f"{k} latency (ns)"]) for k in ("Min", "Max", "Mean"))
    except KeyError:
        return None
    percentiles = {}
    for key, value in stats.items():
        match = _PERCENTILE.match(key)
        if match:
            percentiles[float(match["p"])] = int(value)
    return LatencyStats(min_ns=low, max_ns=high, mean_ns=mean, percentiles_ns=percentiles)


def _read_text(path: Path, what: str) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise UserError(f"LoadGen {what} {path} does not exist: did the LoadGen run finish?") from None
    except IsADirectoryError:
        raise UserError(f"LoadGen {what} {path} is a directory, expected a file") from None
    except OSError as e:
        raise UserError(f"cannot read LoadGen {what} {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"LoadGen {what} {path} is not text") from None


def parse_summary(path: Path) -> RunSummary:
    """The result, metric, constraints and latencies of a mlperf_log_summary.txt (format in the module doc)."""
    text = _read_text(path, "summary")
    lines = text.splitlines()
    warnings = errors = 0
    counted = False
    for line in lines:
        match = _COUNT.match(line.strip())
        if match:
            counted = True
            count = 0 if match["count"] == "No" else int(match["count"])
            if match["kind"].lower() == "error":
                errors = count
            else:
                warnings = count
    sections = _sections(lines)
    results = sections.get("MLPerf Results Summary")
    if results is None:
        if counted:  # AccuracyOnly: LoadGen reports no performance result
            return RunSummary(None, None, None, None, None, warnings=warnings, errors=errors)
        raise UserError(f"{path} is not a LoadGen summary (no 'MLPerf Results Summary' section)")

    head: dict[str, str] = {}
    metric_name = metric_value = result = None
    constraints: dict[str, bool] = {}
    block: list[str] | None = None
    recommendations: list[str] = []
    early_stopping: list[str] = []
    for line in results:
        stripped = line.strip()
        if stripped == "Recommendations:":
            block = recommendations
        elif stripped.endswith("Early Stopping Result:"):
            block = early_stopping
        elif block is not None:
            block.append(line)
        elif match := _KEY_VALUE.match(line):
            key, value = match["key"], match["value"]
            if key in ("SUT name", "Scenario", "Mode"):
                head[key] = value
            elif key == "Result is":
                result = value
            elif line.startswith("  ") and value in ("Yes", "NO"):
                constraints[key] = value == "Yes"
            elif result is None and metric_name is None:
                metric_name, metric_value = key, _number(value)
    if "Scenario" not in head or "Mode" not in head or result not in ("VALID", "INVALID"):
        raise UserError(
            f"{path} is not a complete LoadGen summary (scenario, mode or 'Result is' line missing): "
            "was the run cut short?"
        )

    stats: dict[str, float] = {}
    for line in sections.get("Additional Stats", []):
        match = _KEY_VALUE.match(line)
        if match and (value := _number(match["value"])) is not None:
            stats[match["key"]] = value
    parameters = {}
    for line in sections.get("Test Parameters Used", []):
        match = _KEY_VALUE.match(line)
        if match:
            parameters[match["key"]] = match["value"]
    return RunSummary(
        scenario=head["Scenario"],
        mode=head["Mode"],
        result=result,
        metric_name=metric_name,
        metric_value=metric_value,
        sut_name=head.get("SUT name"),
        constraints=constraints,
        reasons=_bullets(recommendations),
        early_stopping=_bullets(early_stopping),
        latency=_latency(stats),
        stats=stats,
        parameters=parameters,
        warnings=warnings,
        errors=errors,
    )


def parse_detail(path: Path) -> list[dict[str, Any]]:
    """The ``:::MLLOG {json}`` records of a mlperf_log_detail.txt, in file order.

    A last line that does not parse is dropped (LoadGen was cut off mid-write); a bad line
    anywhere else is an error. Lines without the prefix are skipped.
    """
    text = _read_text(path, "detail log")
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.startswith(_DETAIL_PREFIX)]
    records = []
    for position, (number, line) in enumerate(lines):
        try:
            record = json.loads(line[len(_DETAIL_PREFIX) :])
        except json.JSONDecodeError as e:
            if position == len(lines) - 1:
                break
            raise UserError(f"{path} line {number} is not a valid :::MLLOG record ({e.msg})") from None
        if not isinstance(record, dict) or "key" not in record:
            raise UserError(f"{path} line {number} is not a LoadGen record (no 'key')")
        records.append(record)
    if not records:
        raise UserError(f"{path} holds no :::MLLOG records: is it a LoadGen detail log?")
    return records


def detail_values(records: list[dict[str, Any]]) -> dict[str, Any]:
    """``key -> value`` of the detail records (the last one wins), e.g. ``effective_min_query_count``."""
    return {record["key"]: record.get("value") for record in records}


def detail_errors(records: list[dict[str, Any]]) -> list[str]:
    """``key: value`` of every record LoadGen flagged as an error (what "N ERRORS encountered" counts)."""
    return [
        f"{record['key']}: {record.get('value')}"
        for record in records
        if isinstance(record.get("metadata"), dict) and record["metadata"].get("is_error")
    ]
