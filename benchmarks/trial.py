"""The benchmarks' shared helper: one asyncbench run in a fresh process, read back from its result.json.

Every ``python -m asyncbench run`` writes one result.json record per scenario into the scenario's
log folder, and with ``--json FILE`` all of them as one JSON list (the keys are listed in
``asyncbench/harness/result.py``: ``result.validity``, ``metric``, ``latency_ns``, ``samples``,
``batch_sizes``, ...). A benchmark reads those records, never the printed output::

    from trial import run_trial   # python benchmarks/x.py puts benchmarks/ first on sys.path

    t = run_trial(["--engine", "null", "--scenario", "Server", "--target-qps", "2000", "--min-duration", "2"])
    t.validity, t.p99_ms, t.metric_value, t.record["batch_sizes"]

``tree=DIR`` runs the asyncbench of another checkout (``--baseline-tree``): the child starts in
DIR with DIR first on PYTHONPATH, and both come before the installed (editable) package, whose
finder Python consults after the path entries. For a SUT that is not asyncbench (LoadGen with
an inline SUT, MLCommons' reference harness) ``loadgen_record`` builds the same keys from
LoadGen's own logs, as asyncbench does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncbench.config import Scenario
from asyncbench.errors import UserError
from asyncbench.harness.result import RESULT_FILE, latency_percentiles
from asyncbench.loadgen.logs import detail_values, parse_detail, parse_summary

REPO = Path(__file__).resolve().parent.parent
ASYNCBENCH = ("-m", "asyncbench")


@dataclass
class Trial:
    """One asyncbench process: its result.json records (one per scenario, in run order) and its exit."""

    records: list[dict[str, Any]]
    returncode: int
    stdout: str = ""
    stderr: str = field(default="", repr=False)

    @property
    def record(self) -> dict[str, Any] | None:
        """The last scenario's record (the only one for a one-scenario run); None if the run wrote none."""
        return self.records[-1] if self.records else None

    @property
    def validity(self) -> str:
        """LoadGen's VALID / INVALID, FAILED for a failed run, "failed" if no record was written."""
        return validity(self.record)

    @property
    def valid(self) -> bool:
        return self.validity == "VALID"

    def latency_ms(self, percentile: str = "p99") -> float | None:
        """``p50``, ``p90``, ``p95``, ``p99`` or ``p99.9`` in ms (per query in MultiStream), None if absent."""
        return latency_ms(self.record, percentile)

    @property
    def p99_ms(self) -> float | None:
        return self.latency_ms("p99")

    @property
    def metric_value(self) -> float | None:
        """Samples per second (Offline), completed samples per second (Server) or the latency metric."""
        return metric_value(self.record)


def validity(record: dict[str, Any] | None) -> str:
    """A record's ``result.validity`` ("failed" for no record, or one without a verdict)."""
    return (record or {}).get("result", {}).get("validity") or "failed"


def latency_ms(record: dict[str, Any] | None, percentile: str = "p99") -> float | None:
    """A record's ``latency_ns[percentile]`` in ms, None if absent."""
    ns = (record or {}).get("latency_ns", {}).get(percentile)
    return None if ns is None else ns / 1e6


def metric_value(record: dict[str, Any] | None) -> float | None:
    """A record's ``metric.value``, None if absent."""
    return ((record or {}).get("metric") or {}).get("value")


def tree_env(tree: Path | None) -> dict[str, str]:
    """The environment of a child that imports ``tree``'s asyncbench (the inherited one for None)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), env.get("PYTHONPATH", "")) if p)
    return env


def asyncbench_command(args: Sequence[str], log_dir: Path, json_file: Path | None = None,
                       launcher: Sequence[str] = ASYNCBENCH) -> list[str]:
    """``python -m asyncbench run ARGS --log-dir LOG_DIR [--json FILE]``.

    ``launcher`` replaces ``-m asyncbench``, e.g. ``("-c", CODE, EXTRA)`` for a child that patches
    something and then calls ``asyncbench.cli.main(sys.argv[2:])``.
    """
    return [sys.executable, *launcher, "run", *args, "--log-dir", str(log_dir),
            *(["--json", str(json_file)] if json_file is not None else [])]


def run_folders(log_root: Path) -> list[Path]:
    """The run folders under ``log_root`` in run order (their names start with a timestamp), no ``latest`` link."""
    if not log_root.is_dir():
        return []
    return sorted(p for p in log_root.iterdir() if p.is_dir() and not p.is_symlink())


def read_records(log_root: Path, json_file: Path | None = None, skip: Sequence[Path] = ()) -> list[dict[str, Any]]:
    """The records of a run: the ``--json`` file if it was written, else each run folder's result.json.

    The ``--json`` list is written once every scenario ended; a process that died before that
    still leaves the result.json of each scenario it finished. ``skip``: folders of earlier runs.
    """
    if json_file is not None and json_file.is_file():
        return list(json.loads(json_file.read_text()))
    return [json.loads((folder / RESULT_FILE).read_text()) for folder in run_folders(log_root)
            if folder not in skip and (folder / RESULT_FILE).is_file()]


def run_trial(args: Sequence[str], *, tree: Path | None = None, log_dir: Path | None = None,
              launcher: Sequence[str] = ASYNCBENCH, timeout: float | None = None, check: bool = False) -> Trial:
    """``python -m asyncbench run ARGS`` in a fresh process, from ``tree`` (default: this checkout).

    The logs go to a temporary folder removed afterwards, or under ``log_dir`` and kept.
    ``check``: a non-zero exit raises subprocess.CalledProcessError (asyncbench exits 0 on an
    INVALID result unless ``--strict`` is among ARGS). A timeout raises subprocess.TimeoutExpired.
    """
    with tempfile.TemporaryDirectory(prefix="asyncbench-trial-") as tmp:
        logs = log_dir if log_dir is not None else Path(tmp) / "logs"
        before = run_folders(logs)
        json_file = Path(tmp) / "records.json"
        done = subprocess.run(asyncbench_command(args, logs, json_file, launcher), cwd=tree or REPO,
                              env=tree_env(tree), capture_output=True, text=True, timeout=timeout)
        if check:
            done.check_returncode()
        records = read_records(logs, json_file, skip=before)
    return Trial(records, done.returncode, done.stdout, done.stderr)


def loadgen_record(log_dir: Path) -> dict[str, Any] | None:
    """result.json's ``result``, ``metric`` and ``latency_ns`` of a LoadGen run by another SUT, from its logs.

    Latencies come from the detail log's ``:::MLLOG`` keys (as asyncbench reads them), else from the
    summary. None when the summary is missing or incomplete (the run was cut short).
    """
    summary_path, detail_path = log_dir / "mlperf_log_summary.txt", log_dir / "mlperf_log_detail.txt"
    if not summary_path.is_file():
        return None
    try:
        summary = parse_summary(summary_path)
        detail = detail_values(parse_detail(detail_path)) if detail_path.is_file() else {}
    except UserError:
        return None
    scenario = Scenario(summary.scenario) if summary.scenario in tuple(Scenario) else None
    latency = latency_percentiles(detail, scenario) or {k: v for k, v in summary.latency_ns.items() if k[0] == "p"}
    return {"result": {"validity": summary.result, "reasons": summary.reasons},
            "metric": {"name": summary.metric_name, "value": summary.metric_value},
            "latency_ns": latency}
