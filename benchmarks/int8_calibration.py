"""INT8 vs fp32 top-1 agreement for each calibration choice, measured side by side in one run.

Rerun: python benchmarks/int8_calibration.py   (after `make calibrate`; restores the default cache at the end)

For each activation range method (minmax, percentile, entropy), weight precision (8-bit, and the
7-bit weights that onnxruntime's int8 kernels need on x86 CPUs without VNNI) and with/without bias
correction, it builds the INT8 model from a fresh calibration cache and reports agreement with the
fp32 model on the 100 ai-benchmark photos, computed two ways: with onnxruntime's fused int8
kernels (what the CPU engine runs) and with the QDQ arithmetic evaluated exactly (optimizations
limited to BASIC, so Q/DQ stay explicit: what a GPU engine such as TensorRT approximates).
"""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from asyncbench.data.dataset import VAL_LAYOUT, read_map, resolve_dataset
from asyncbench.model.calibrate import METHODS, CalibrationCache, calibrate, quantize
from asyncbench.paths import BuildPaths


def _top1(model: bytes, x: np.ndarray, exact: bool) -> np.ndarray:
    opts = ort.SessionOptions()
    if exact:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=Path, default=Path("build"))
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    ort.set_default_logger_severity(3)
    paths = BuildPaths(args.build_dir)
    dataset = resolve_dataset(paths)
    entries = [e for e in read_map(dataset.val_map) if e.name.startswith("aibench_")]
    folder = dataset.preprocessed_dir(paths.preprocessed, VAL_LAYOUT)
    x = np.stack([np.load(folder / f"{e.name}.npy") for e in entries])
    fp32 = onnx.load(str(paths.fp32_nhw4_model))
    reference = _top1(fp32.SerializeToString(), x, exact=False)
    print(f"# INT8 vs fp32 top-1 agreement on {len(entries)} ai-benchmark photos")
    print(f"machine: {platform.processor() or platform.machine()}, onnxruntime {ort.__version__}")
    print("command: python benchmarks/int8_calibration.py\n")
    print("| method | weights | bias correction | fused int8 kernels | exact QDQ arithmetic |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "calibration.cache"
        shutil.copy(paths.calibration_cache, saved)
        try:
            for method in METHODS:
                calibrate(paths, dataset, method=method, log=lambda _: None)
                cache = CalibrationCache.load(paths.calibration_cache)
                for bits in (8, 7):
                    for corrected in (False, True):
                        used = cache if corrected else CalibrationCache(
                            cache.method, cache.samples, cache.source_sha256, cache.profile, cache.scales, {})
                        model = quantize(fp32, used, bits).SerializeToString()
                        fused = (_top1(model, x, exact=False) == reference).mean()
                        exact = (_top1(model, x, exact=True) == reference).mean()
                        print(f"| {method} | {bits}-bit | {'yes' if corrected else 'no'} | {fused:.0%} | {exact:.0%} |",
                              flush=True)
        finally:
            shutil.copy(saved, paths.calibration_cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
