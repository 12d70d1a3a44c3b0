"""asyncbench on the CPU beside MLCommons' reference Python harness, same machine, alternating run by run.

Rerun:
    python benchmarks/reference_cpu.py --reference DIR [--runs 5] [--scenario Offline|Server] [--server-qps 60]

DIR is a checkout's ``vision/classification_and_detection/python`` folder of github.com/mlcommons/inference,
run unmodified with its onnxruntime backend, its defaults (batch 32, 2 threads) and this project's fp32
MobileNet v1 ONNX (``--profile mobilenet-onnxruntime --data-format NHWC``); it needs ``opencv-python-headless``
and ``pycocotools`` importable (``--reference-pythonpath`` adds a folder holding them). Both read the same
104 embedded photos. asyncbench runs its defaults (the INT8 model built for this CPU). Each run is a fresh
process; LoadGen's own summary gives every figure.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout, no install

from asyncbench.host import cpu_flags, cpu_model  # noqa: E402

REFERENCE_OFFLINE_QPS = 200  # the reference's expected QPS: above what it reaches, so its query lasts the duration


def summary_figures(path: Path) -> tuple[str, float | None, float | None]:
    """(VALID/INVALID, samples per second or completed samples per second, p99 ms) of a LoadGen summary."""
    text = path.read_text()
    result = re.search(r"Result is : (\w+)", text)
    rate = re.search(r"(?:Samples per second|Completed samples per second)\s*:\s*([\d.]+)", text)
    p99 = re.search(r"99\.00 percentile latency \(ns\)\s*:\s*(\d+)", text)
    return (result.group(1) if result else "none", float(rate.group(1)) if rate else None,
            int(p99.group(1)) / 1e6 if p99 else None)


def summary_latencies(path: Path) -> tuple[str, float | None, float | None]:
    """(VALID/INVALID, p50 ms, p99 ms) of a LoadGen summary."""
    text = path.read_text()
    result = re.search(r"Result is : (\w+)", text)
    found = [re.search(rf"{q} percentile latency \(ns\)\s*:\s*(\d+)", text) for q in ("50\\.00", "99\\.00")]
    p50, p99 = (int(m.group(1)) / 1e6 if m else None for m in found)
    return result.group(1) if result else "none", p50, p99


def run_asyncbench(scenario: str, qps: float, duration: float) -> tuple[str, float | None, float | None]:
    with tempfile.TemporaryDirectory() as logs:
        extra = ["--target-qps", str(qps)] if scenario == "Server" else []
        subprocess.run([sys.executable, "-m", "asyncbench", "--scenario", scenario, "--min-duration", str(duration),
                        "--log-dir", logs, "--no-progress", *extra], cwd=ROOT, capture_output=True, text=True,
                       timeout=duration * 10 + 300, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
        return summary_figures(next(Path(logs).glob("*/mlperf_log_summary.txt")))


def run_reference(reference: Path, pythonpath: str, data: Path, scenario: str, qps: float,
                  duration: float, backend: str = "onnxruntime",
                  read: Callable[[Path], tuple[str, float | None, float | None]] = summary_figures
                  ) -> tuple[str, float | None, float | None]:
    """One run of the reference harness; ``backend="null"`` is its own do-nothing backend (harness cost only).

    With the null backend main.py fails after the test, in its own scoring of the (empty) results;
    LoadGen's summary is written by then, so only the summary's presence is checked.
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
        return read(Path(out) / "mlperf_log_summary.txt")


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
