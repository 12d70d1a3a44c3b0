"""The pad-channel fold used by the torch engine is exact: same outputs, pad channel ignored."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from asyncbench.data.dataset import VAL_LAYOUT, read_map, resolve_dataset
from asyncbench.model.calibrate import ensure_engine_models
from asyncbench.model.gpu_rewrite import fold_pad_channel
from asyncbench.paths import BuildPaths


def _run(model: onnx.ModelProto, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": batch})[0]


def test_fold_keeps_every_top1_and_ignores_the_pad_channel(calibrated: BuildPaths) -> None:
    fp32, _ = ensure_engine_models(calibrated, log=lambda _: None)
    model = onnx.load(str(fp32))
    folded = fold_pad_channel(model)
    onnx.checker.check_model(folded)
    assert [n.op_type for n in model.graph.node].count("Slice") - 1 == [n.op_type for n in folded.graph.node].count(
        "Slice")
    dataset = resolve_dataset(calibrated)
    folder = dataset.preprocessed_dir(calibrated.preprocessed, VAL_LAYOUT)
    batch = np.stack([np.load(folder / f"{e.name}.npy") for e in read_map(dataset.val_map)][:32])
    want = _run(model, batch)
    assert np.array_equal(_run(folded, batch), want)
    noisy = batch.copy()
    noisy[..., 3] = np.random.default_rng(0).integers(-128, 128, noisy.shape[:-1])
    assert np.array_equal(_run(folded, noisy), want)  # the fourth channel has zero weights


def test_fold_leaves_other_graphs_alone(calibrated: BuildPaths) -> None:
    _, int8 = ensure_engine_models(calibrated, log=lambda _: None)
    model = onnx.load(str(int8))  # the QDQ graph: the slice feeds a QuantizeLinear, not a Conv
    assert fold_pad_channel(model).SerializeToString() == model.SerializeToString()
