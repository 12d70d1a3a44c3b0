"""The torch engine's per-op builders on the CPU: same top-1 as onnxruntime (skipped without torch)."""

from __future__ import annotations

import numpy as np
import pytest

from asyncbench.data.dataset import VAL_LAYOUT, read_map, resolve_dataset
from asyncbench.engines.onnxruntime_engine import OnnxRuntimeEngine
from asyncbench.model.calibrate import ensure_engine_models
from asyncbench.paths import BuildPaths

torch = pytest.importorskip("torch")


def test_interpreter_matches_onnxruntime_on_real_photos(calibrated: BuildPaths) -> None:
    import onnx

    from asyncbench.model.torch_ops import GraphModule

    fp32, _ = ensure_engine_models(calibrated, log=lambda _: None)
    dataset = resolve_dataset(calibrated)
    folder = dataset.preprocessed_dir(calibrated.preprocessed, VAL_LAYOUT)
    batch = np.stack([np.load(folder / f"{e.name}.npy") for e in read_map(dataset.val_map)])
    ort = OnnxRuntimeEngine(fp32, max_batch_size=len(batch))
    try:
        want = ort.infer(batch)
    finally:
        ort.close()
    module = GraphModule(onnx.load(str(fp32)), torch.float32).eval()
    with torch.inference_mode():
        got = module(torch.from_numpy(batch)).numpy()
    assert got.dtype == np.int32
    assert np.array_equal(got, want), np.flatnonzero(got != want)
