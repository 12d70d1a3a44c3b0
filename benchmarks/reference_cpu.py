"""asyncbench on the CPU beside MLCommons' reference Python harness, same machine, alternating run by run.

Rerun:
    python benchmarks/reference_cpu.py --reference DIR [--runs 5] [--scenario Offline|Server] [--server-qps 60]

DIR is a checkout's ``vision/classification_and_detection/python`` folder of github.com/mlcommons/inference,
run unmodified with its onnxruntime backend, its defaults (batch 32, 2 threads) and this project's fp32
MobileNet v1 ONNX (``--profile mobilenet-onnxruntime --data-format NHWC``); it needs ``opencv-python-headless``
and ``pycocotools`` importable (``--reference-pythonpath`` adds a folder holding them). Both read the same
104 embedded photos. asyncbench runs its defaults (the INT8 model built for this CPU). Each run is a fresh
process; asyncbench's figures come from its result.json, the reference's from LoadGen's logs read into the
same keys (benchmarks/trial.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asyncbench.host import cpu_flags, cpu_model

from trial import REPO, latency_ms, loadgen_record, metric_value, run_trial, validity

ROOT = REPO

REFERENCE_OFFLINE_QPS = 200  # the reference's expected QPS: above what it reaches, so its query lasts the duration


def _verdict(record: dict[str, Any] | None) -> str:
    return "none" if record is None else validity(record)


def summary_figures(record: dict[str, Any] | None) -> tuple[str, float | None, float | None]:
    """(VALID/INVALID, samples per second or completed samples per second, p99 ms) of a result record."""
    return _verdict(record), metric_value(record), latency_ms(record, "p99")


def summary_latencies(record: dict[str, Any] | None) -> tuple[str, float | None, float | None]:
    """(VALID/INVALID, p50 ms, p99 ms) of a result record."""
    return _verdict(record), latency_ms(record, "p50"), latency_ms(record, "p99")


def run_asyncbench(scenario: str, qps: float, duration: float) -> tuple[str, float | None, float | None]:
    extra = ["--target-qps", str(qps)] if scenario == "Server" else []
    t = run_trial(["--scenario", scenario, "--min-duration", str(duration), "--no-progress", *extra],
                  timeout=duration * 10 + 300, check=True)
    return summary_figures(t.record)


def run_reference(reference: Path, pythonpath: str, data: Path, scenario: str, qps: float,
                  duration: float, backend: str = "onnxruntime",
                  read: Callable[[dict[str, Any] | None], tuple[str, float | None, float | None]] = summary_figures
                  ) -> tuple[str, float | None, float | None]:
    """One run of the reference harness; ``backend="null"`` is its own do-nothing backend (harness cost only).

    With the null backend main.py fails after the test, in its own scoring of the (empty) results;
    LoadGen's logs are written by then, so its exit status is not checked. The figures come from
    LoadGen's logs in the output folder (``trial.loadgen_record``: result.json's keys).
    """
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "main.py", "--profile", "mobilenet-onnxruntime", "--backend", backend,
                        "--model", str(ROOT / "build/models/MobileNet/mobilenet_v1_1.0_224.onnx"),
                        "--dataset-path", str(data),
                        "--scenario", scenario, "--time", str(int(duration)), "--data-format", "NHWC",
                        "--qps", str(int(REFERENCE_OFFLINE_QPS if scenario == "Offline" else qps)),
                        "--user_conf", str(data / "user.conf"), "--output", out, "--cache_dir", str(Path(out) / "c")],
                       cwd=reference, capture_output=True, text=True, timeout=duration * 10 + 300,
                       env={**os.environ, "PYTHONPATH": pythonpath}, check=backend != "null")
        return read(loadgen_record(Path(out)))


def dataset_folder(tmp: Path) -> Path:
    """The embedded photos and their val map in the layout the reference reads (and an empty user.conf)."""
    data = tmp / "data"
    data.mkdir()
    val_map = ROOT / "data_maps/embedded/val_map.txt"
    (data / "val_map.txt").write_text(val_map.read_text())
    for line in val_map.read_text().splitlines():
        name = line.split()[0]
        (data / name).symlink_to(ROOT / "build/data/embedded" / name)
    (data / "user.conf").write_text("")
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="vision/classification_and_detection/python")
    parser.add_argument("--reference-pythonpath", default="", help="a folder with cv2 and pycocotools")
    parser.add_argument("--scenario", choices=("Offline", "Server"), default="Offline")
    parser.add_argument("--server-qps", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {' '.join(cpu_flags())}")
    print(f"command: python benchmarks/reference_cpu.py {' '.join(sys.argv[1:])}\n")
    print("| run | harness | result | samples/s | p99 ms |\n|---|---|---|---|---|")
    results: dict[str, list[tuple[str, float | None, float | None]]] = {"asyncbench": [], "reference": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = dataset_folder(Path(tmp))
        for n in range(args.runs):
            for name in results:
                if name == "asyncbench":
                    figures = run_asyncbench(args.scenario, args.server_qps, args.duration)
                else:
                    figures = run_reference(args.reference, args.reference_pythonpath, data, args.scenario,
                                            args.server_qps, args.duration)
                results[name].append(figures)
                rate, p99 = figures[1], figures[2]
                print(f"| {n + 1} | {name} | {figures[0]} | {rate if rate is not None else '-'} | "
                      f"{f'{p99:.2f}' if p99 is not None else '-'} |", flush=True)
    print(f"\n| harness | VALID of {args.runs} | median samples/s | median p99 ms |\n|---|---|---|---|")
    for name, runs in results.items():
        rates = [r for _, r, _ in runs if r is not None]
        p99s = [p for _, _, p in runs if p is not None]
        print(f"| {name} | {sum(v == 'VALID' for v, _, _ in runs)} | "
              f"{statistics.median(rates) if rates else float('nan'):.1f} | "
              f"{statistics.median(p99s) if p99s else float('nan'):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
