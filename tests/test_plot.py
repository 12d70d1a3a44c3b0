"""`asyncbench plot` on hand-written run and tune folders: the PNGs appear, and bad input is one UserError line."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from asyncbench.errors import UserError
from asyncbench.harness.plot import plot_path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TRIAL_COLUMNS = ("trial", "phase", "scenario", "target_qps", "max_batch_size", "max_queue_delay_us", "validity",
                 "reasons", "metric", "p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "early_stopping_met",
                 "early_stopping", "batch_sizes", "seconds", "log_dir")


@pytest.fixture
def mpl() -> None:
    """Drawing tests need matplotlib (the optional plot extra); the error tests run without it."""
    pytest.importorskip("matplotlib")


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 5_000, (path, len(data))  # a drawn chart, not an empty canvas


def histogram(median_ms: float, sigma_decades: float, samples: int, overflow: int = 0) -> dict[str, object]:
    """A log-normal latency histogram in result.json's shape (20 bins per decade, 1 us .. 100 s)."""
    edges = [round(1_000 * 10 ** (k / 20)) for k in range(8 * 20 + 1)]
    centre = math.log10(median_ms * 1e6)
    weights = [math.exp(-((math.log10(math.sqrt(lo * hi)) - centre) / sigma_decades) ** 2 / 2)
               for lo, hi in zip(edges, edges[1:], strict=False)]
    scale = (samples - overflow) / sum(weights)
    bins: list[list[object]] = [[lo, hi, round(w * scale, 3)] for lo, hi, w in zip(edges, edges[1:], weights,
                                                                                   strict=False) if w * scale > 1e-3]
    if overflow:
        bins.append([edges[-1], None, float(overflow)])
    return {"samples": samples, "bins_per_decade": 20, "bins": bins}


def write_run(folder: Path, scenario: str = "Server", *, validity: str = "VALID",
              batch_sizes: dict[str, int] | None = None, harness: dict[str, object] | None = None,
              latency_ns: dict[str, int] | None = None,
              target_ns: int | None = 15_000_000) -> Path:
    """A result.json with the fields the plots read (and a few beside them, as a real one has)."""
    folder.mkdir(parents=True, exist_ok=True)
    effective: dict[str, object] = {"scenario": scenario, "min_duration_ms": 60_000}
    if target_ns is not None:
        effective["target_latency_ns"] = target_ns
    result: dict[str, Any] = {
        "schema_version": 1,
        "log_dir": str(folder),
        "config": {"scenario": scenario, "benchmark": "mobilenet"},
        "engine": {"name": "onnxruntime-cuda-int8", "device": "cuda:0"},
        "loadgen_effective": effective,
        "result": {"validity": validity, "reasons": [], "early_stopping": {"met": True, "verdict": []}},
        "metric": {"name": "Scheduled samples per second", "value": 4000.0},
        "latency_ns": latency_ns if latency_ns is not None else
        {"p50": 2_100_000, "p90": 3_900_000, "p95": 4_600_000, "p99": 7_800_000, "p99.9": 12_000_000},
        "samples": {"issued": 240_000, "completed": 240_000},
        "batch_sizes": batch_sizes if batch_sizes is not None else {"1": 120, "2": 340, "4": 900, "8": 2100,
                                                                    "16": 5300, "32": 2400},
        "harness_latency": harness if harness is not None else histogram(2.2, 0.25, 240_000),
    }
    (folder / "result.json").write_text(json.dumps(result, indent=1))
    return folder


def write_trials(folder: Path, rows: list[dict[str, object]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "trials.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, TRIAL_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return folder


def trial(number: int, phase: str, scenario: str, validity: str, p99_ms: float | None, *, qps: float | None = None,
          max_batch: int = 32, delay_us: int | None = 500, log_dir: str = "") -> dict[str, object]:
    return {"trial": number, "phase": phase, "scenario": scenario, "target_qps": qps, "max_batch_size": max_batch,
            "max_queue_delay_us": delay_us, "validity": validity, "reasons": "" if validity == "VALID" else "p99 high",
            "metric": qps, "p50_ms": None if p99_ms is None else round(p99_ms / 3, 4), "p90_ms": None,
            "p99_ms": p99_ms, "p99.9_ms": None, "early_stopping_met": validity == "VALID", "early_stopping": "",
            "batch_sizes": "1x10 8x90", "seconds": 65.2, "log_dir": log_dir}


def server_tune(folder: Path, *, record_dir: Path | None = None) -> Path:
    """A Server search: doubling, bisection, confirmation; one FAILED trial; an INVALID trial without p99."""
    plan = [(1, "search", 2000.0, "VALID", 4.1), (2, "search", 4000.0, "VALID", 6.9),
            (3, "search", 8000.0, "INVALID", 480.0), (4, "search", 6000.0, "INVALID", 38.0),
            (5, "search", 5000.0, "VALID", 11.2), (6, "search", 5500.0, "INVALID", None),
            (7, "search", 5200.0, "VALID", 13.9), (8, "search-confirm", 5200.0, "FAILED", None),
            (9, "search-confirm", 5200.0, "VALID", 14.2), (10, "search-confirm", 5200.0, "FAILED", 25.0),
            (11, "search-confirm", 5200.0, "VALID", 13.1)]
    rows = []
    for number, phase, qps, validity, p99 in plan:
        label = f"{number:03d}_{phase}_{qps:g}qps"
        rows.append(trial(number, phase, "Server", validity, p99, qps=qps, log_dir=str(folder / "trials" / label)))
    write_trials(folder, rows)
    best_dir = folder / "trials" / "011_search-confirm_5200qps"
    write_run(best_dir, "Server")
    recorded = record_dir if record_dir is not None else best_dir
    (folder / "tuned.json").write_text(json.dumps({
        "engine": "onnxruntime-cuda-int8", "scenario": "Server", "target_latency_ms": 15.0,
        "best": {"trial": 11, "target_qps": 5200.0, "p99_ms": 13.1, "log_dir": str(recorded)}}))
    return folder


def test_run_folder_writes_both_plots(tmp_path: Path, mpl: None) -> None:
    run = write_run(tmp_path / "run")
    written = plot_path(run)
    assert written == [run / "latency_cdf.png", run / "batch_sizes.png"]
    for png in written:
        assert_png(png)


def test_run_folder_also_from_its_result_json(tmp_path: Path, mpl: None) -> None:
    run = write_run(tmp_path / "run")
    assert plot_path(run / "result.json") == [run / "latency_cdf.png", run / "batch_sizes.png"]


def test_run_without_harness_bins_skips_the_cdf(tmp_path: Path, mpl: None) -> None:
    run = write_run(tmp_path / "run", harness={"samples": 0, "bins_per_decade": 20, "bins": []})
    assert plot_path(run) == [run / "batch_sizes.png"]
    assert not (run / "latency_cdf.png").exists()
    assert_png(run / "batch_sizes.png")


def test_wide_batch_sizes_and_overflow_bin(tmp_path: Path, mpl: None) -> None:
    """Sizes spanning 256x (log2 axis, many close sizes), an overflow bin, no LoadGen percentiles."""
    sizes = {str(s): 1 + (s * 37) % 400 for s in [1, 2, 3, 5, 8, *range(100, 129), 256]}
    run = write_run(tmp_path / "run", "Offline", batch_sizes=sizes, latency_ns={},
                    harness=histogram(900.0, 0.6, 50_000, overflow=12))
    for png in plot_path(run):
        assert_png(png)


def test_multistream_run(tmp_path: Path, mpl: None) -> None:
    run = write_run(tmp_path / "run", "MultiStream", validity="INVALID", batch_sizes={"8": 27_000},
                    target_ns=None, latency_ns={"p99": 9_300_000})
    assert [p.name for p in plot_path(run)] == ["latency_cdf.png", "batch_sizes.png"]


def test_server_tune_folder_plots_the_best_trial_too(tmp_path: Path, mpl: None) -> None:
    tune = server_tune(tmp_path / "tune")
    best = tune / "trials" / "011_search-confirm_5200qps"
    written = plot_path(tune)
    assert written == [tune / "tune_qps_p99.png", best / "latency_cdf.png", best / "batch_sizes.png"]
    for png in written:
        assert_png(png)


def test_tune_folder_moved_finds_the_best_trial_inside_it(tmp_path: Path, mpl: None) -> None:
    tune = server_tune(tmp_path / "tune", record_dir=Path("/nowhere/trials/011_search-confirm_5200qps"))
    assert len(plot_path(tune)) == 3


def test_multistream_tune_without_tuned_json(tmp_path: Path, mpl: None) -> None:
    rows = [trial(1, "grid", "MultiStream", "VALID", 9.8, max_batch=8), trial(2, "grid", "MultiStream", "VALID", 8.7,
                                                                             max_batch=4),
            trial(3, "grid", "MultiStream", "INVALID", None, max_batch=2),
            trial(4, "grid", "MultiStream", "FAILED", None, max_batch=1),
            trial(5, "confirm", "MultiStream", "VALID", 8.9, max_batch=4)]
    tune = write_trials(tmp_path / "tune", rows)
    written = plot_path(tune)
    assert written == [tune / "tune_qps_p99.png"]
    assert_png(written[0])


def test_multistream_tune_with_delay_grid_and_best(tmp_path: Path, mpl: None) -> None:
    rows = [trial(n, "grid", "MultiStream", "VALID", 5.0 + n, max_batch=b, delay_us=d)
            for n, (b, d) in enumerate([(b, d) for b in (8, 4) for d in (0, 1000)], start=1)]
    tune = write_trials(tmp_path / "tune", rows)
    (tune / "tuned.json").write_text(json.dumps({"target_latency_ms": None,
                                                 "best": {"trial": 1, "log_dir": str(tune / "trials" / "gone")}}))
    assert plot_path(tune) == [tune / "tune_qps_p99.png"]  # the best trial's folder is gone: the tune plot only


def test_empty_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"neither result\.json .* nor trials\.csv"):
        plot_path(tmp_path)


def test_missing_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such folder"):
        plot_path(tmp_path / "absent")


@pytest.mark.parametrize("text", ['{"config": {"scen', "[1, 2]", '{"config": {}}', "\x00\xff"])
def test_corrupt_result_json_is_one_line(tmp_path: Path, text: str) -> None:
    (tmp_path / "result.json").write_text(text, encoding="latin-1")
    with pytest.raises(UserError) as info:
        plot_path(tmp_path)
    assert "result.json" in str(info.value) and "\n" not in str(info.value)


def test_malformed_histogram_is_a_user_error(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", harness={"samples": 3, "bins": [[0, "x", 3]]})
    with pytest.raises(UserError, match="not a usable asyncbench result.json"):
        plot_path(run)


@pytest.mark.parametrize("text, match", [
    (b"trial,validity\n1,VALID\n", "no column"),
    (",".join(TRIAL_COLUMNS).encode() + b"\n", "no trials yet"),
    (",".join(TRIAL_COLUMNS).encode() + b"\n1,search,Server,fast,32,500,VALID,,,,,,,,,,,\n",
     "line 2: target_qps 'fast' is not a number"),
    (b"\x89PNG\r\n\x1a\n\xff\xfe", "cannot read"),
])
def test_corrupt_trials_csv_is_one_line(tmp_path: Path, text: bytes, match: str) -> None:
    (tmp_path / "trials.csv").write_bytes(text)
    with pytest.raises(UserError, match=match) as info:
        plot_path(tmp_path)
    assert "\n" not in str(info.value)


def test_corrupt_tuned_json_is_a_user_error(tmp_path: Path) -> None:
    tune = server_tune(tmp_path / "tune")
    (tune / "tuned.json").write_text("{")
    with pytest.raises(UserError, match="cannot read .*tuned.json"):
        plot_path(tune)


def test_without_matplotlib_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(UserError, match=r"plotting needs matplotlib: pip install '\.\[plot\]'"):
        plot_path(write_run(tmp_path / "run"))


def test_importing_the_module_does_not_import_matplotlib() -> None:
    code = "import sys, asyncbench.harness.plot; assert 'matplotlib' not in sys.modules, 'imported at module load'"
    subprocess.run([sys.executable, "-c", code], check=True)
