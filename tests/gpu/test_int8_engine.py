"""The torch engine's int8 path on a GPU, on the real model and photos: TensorRT's INT8 recipe in Triton.

Bars (the product's): top-1 equal to the fp32 model's on at least 97% of the 100 ai-benchmark
photos, the 4 labelled photos right, and top-1 equal to onnxruntime running the signed INT8 model
(the one TensorRT builds from, same cache) on at least 95 of the 104 photos. The int8 body itself
must equal onnxruntime's bit for bit (it does on the CPU, tests/test_int8chain.py); the tails
differ (ours is fp32, the QDQ model quantizes the classifier), hence the 95.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from gpu_support import torch_or_skip
from int8_reference import signed_body
from test_model_real import KNOWN

from asyncbench.data.dataset import VAL_LAYOUT, read_map, resolve_dataset
from asyncbench.engines.gpu import GpuEngine
from asyncbench.engines.onnxruntime_engine import OnnxRuntimeEngine
from asyncbench.model.calibrate import CalibrationCache, ensure_engine_models, ensure_signed_int8_model
from asyncbench.paths import BuildPaths

pytestmark = pytest.mark.gpu
BUCKETS = [1, 8, 64, 128]


def _photos(paths: BuildPaths) -> tuple[list[str], np.ndarray]:
    dataset = resolve_dataset(paths)
    names = [e.name for e in read_map(dataset.val_map)]
    folder = dataset.preprocessed_dir(paths.preprocessed, VAL_LAYOUT)
    return names, np.stack([np.load(folder / f"{n}.npy") for n in names])


def _onnxruntime(model: Path, batch: np.ndarray) -> np.ndarray:
    engine = OnnxRuntimeEngine(model, max_batch_size=len(batch))
    try:
        return engine.infer(batch)
    finally:
        engine.close()


@pytest.fixture(scope="module")
def top1(calibrated: BuildPaths) -> dict[str, np.ndarray]:
    """Top-1 on the 104 photos: int8 engine (batches of 64 and a 1), onnxruntime fp32 and signed INT8."""
    torch_or_skip()
    from asyncbench.engines.torch_engine import TorchBackend

    fp32, _ = ensure_engine_models(calibrated, log=lambda _: None)
    _, batch = _photos(calibrated)
    backend = TorchBackend(fp32, 0, BUCKETS, "int8", calibration=calibrated.calibration_cache)
    assert backend.path.startswith("int8 Triton body")
    engine = GpuEngine([backend], 2)
    try:
        got = np.concatenate([engine.infer(batch[i:i + 64]) for i in range(0, len(batch), 64)])
        single = engine.infer(batch[7:8])
    finally:
        engine.close()
    assert got.dtype == np.int32 and single[0] == got[7]
    signed = ensure_signed_int8_model(calibrated, log=lambda _: None)
    return {"int8": got, "fp32": _onnxruntime(fp32, batch), "signed": _onnxruntime(signed, batch)}


def test_int8_agrees_with_fp32_on_the_ai_benchmark_photos(calibrated: BuildPaths, top1: dict[str, np.ndarray]) -> None:
    names, _ = _photos(calibrated)
    aibench = [i for i, n in enumerate(names) if n.startswith("aibench_")]
    assert len(aibench) == 100
    agreement = float(np.mean(top1["int8"][aibench] == top1["fp32"][aibench]))
    assert agreement >= 0.97, f"INT8/fp32 top-1 agreement {agreement:.2%}"


def test_the_labelled_photos_are_right(calibrated: BuildPaths, top1: dict[str, np.ndarray]) -> None:
    names, _ = _photos(calibrated)
    for name, classes in KNOWN.items():
        assert int(top1["int8"][names.index(name)]) in classes, name


def test_top1_matches_onnxruntimes_signed_int8_model(top1: dict[str, np.ndarray]) -> None:
    same = int((top1["int8"] == top1["signed"]).sum())
    assert same >= 95, f"top-1 equal to onnxruntime's signed INT8 model on {same}/104 photos"


def test_the_int8_body_is_onnxruntimes_bit_for_bit(calibrated: BuildPaths) -> None:
    """Full-size photos through the kernels (each form) against the signed model's body output."""
    torch_or_skip()
    import torch

    from asyncbench.engines.triton_int8 import Int8Kernels
    from asyncbench.model.int8chain import quantize_chain

    fp32, _ = ensure_engine_models(calibrated, log=lambda _: None)
    q = quantize_chain(onnx.load(str(fp32)), CalibrationCache.load(calibrated.calibration_cache))
    assert q is not None
    _, batch = _photos(calibrated)
    x = batch[:16]
    want = signed_body(calibrated, q, x)
    kernels = Int8Kernels(q, torch.device("cuda", 0))
    with torch.inference_mode():
        for forms in [(False,) * len(q.blocks), (True,) * len(q.blocks)]:
            got = kernels.run(torch.from_numpy(x).cuda(), forms).cpu().numpy().astype(np.int32)
            assert np.array_equal(got, want), f"{(got != want).mean():.3%} of the outputs differ (split={forms[0]})"
