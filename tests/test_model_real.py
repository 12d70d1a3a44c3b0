"""Known answers on real weights and real photos, and the calibration cache's guarantees."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from asyncbench.data.dataset import VAL_LAYOUT, read_map, resolve_dataset
from asyncbench.data.preprocess import load_image
from asyncbench.engines.onnxruntime_engine import OnnxRuntimeEngine
from asyncbench.errors import UserError
from asyncbench.model.calibrate import CACHE_KEY, CalibrationCache, _metadata, ensure_engine_models
from asyncbench.model.prepare import prepare
from asyncbench.paths import BuildPaths

# 0-based ImageNet classes (background dropped) that count as right for scikit-image's photos.
KNOWN = {"skimage_chelsea.png": {281, 282, 285}, "skimage_coffee.png": {967},
         "skimage_rocket.jpg": {657, 744}, "skimage_motorcycle_left.png": {665, 670}}


def test_fp32_model_known_answers(real_build: BuildPaths) -> None:
    session = ort.InferenceSession(str(real_build.fp32_model), providers=["CPUExecutionProvider"])
    for name, classes in KNOWN.items():
        x = load_image(real_build.embedded_images / name).astype(np.float32)[None] / 128.0
        probs = session.run(None, {"input:0": x})[0][0]
        assert probs.shape == (1001,)
        assert abs(float(probs.sum()) - 1.0) < 1e-4
        assert int(np.argmax(probs)) - 1 in classes, name


def test_second_prepare_does_nothing(real_build: BuildPaths) -> None:
    said: list[str] = []
    assert prepare(real_build, log=said.append) is False
    assert said and "nothing to do" in said[0]


def _val_predictions(paths: BuildPaths, model: str) -> dict[str, int]:
    dataset = resolve_dataset(paths)
    entries = read_map(dataset.val_map)
    folder = dataset.preprocessed_dir(paths.preprocessed, VAL_LAYOUT)
    x = np.stack([np.load(folder / f"{e.name}.npy") for e in entries])
    with OnnxRuntimeEngine(paths.int8_model if model == "int8" else paths.fp32_nhw4_model, max_batch_size=len(x)) as e:
        top1 = e.infer(x)
    return {entry.name: int(c) for entry, c in zip(entries, top1, strict=True)}


def test_int8_agrees_with_fp32_on_real_photos(calibrated: BuildPaths) -> None:
    fp32 = _val_predictions(calibrated, "fp32")
    int8 = _val_predictions(calibrated, "int8")
    for name in ("skimage_chelsea.png", "skimage_coffee.png"):
        assert fp32[name] in KNOWN[name] and int8[name] in KNOWN[name], name
    aibench = [n for n in fp32 if n.startswith("aibench_")]
    assert len(aibench) == 100
    agreement = sum(fp32[n] == int8[n] for n in aibench) / len(aibench)
    assert agreement >= 0.97, f"INT8/fp32 top-1 agreement {agreement:.2%} on the ai-benchmark photos"


def test_int8_model_is_really_quantized(calibrated: BuildPaths) -> None:
    model = onnx.load(str(calibrated.int8_model))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "ArgMax"} <= ops
    weights = [numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("_quantized")]
    assert weights and all(w.dtype in (np.int8, np.int32) for w in weights)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT8
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.INT32


def test_cache_round_trip(calibrated: BuildPaths, tmp_path) -> None:
    cache = CalibrationCache.load(calibrated.calibration_cache)
    assert cache.samples == len(read_map(resolve_dataset(calibrated).cal_map))
    assert len(cache.scales) > 50 and all(s > 0 for s in cache.scales.values())
    assert len(cache.means) == 28  # one per MobileNet v1 convolution
    copy = tmp_path / "c.cache"
    copy.write_text(cache.dumps())
    again = CalibrationCache.load(copy)
    assert again.scales == cache.scales
    assert all(np.array_equal(again.means[k], v) for k, v in cache.means.items())


def test_cache_for_other_weights_is_refused(calibrated: BuildPaths, tmp_build: BuildPaths) -> None:
    model = onnx.load(str(calibrated.fp32_model))
    bias = next(i for i in model.graph.initializer if i.name.endswith("folded_bias"))
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 0.01, bias.name))
    tmp_build.fp32_model.unlink()
    onnx.save(model, tmp_build.fp32_model)
    shutil.copy(calibrated.calibration_cache, tmp_build.calibration_cache)
    with pytest.raises(UserError, match="made for another model.*make calibrate"):
        ensure_engine_models(tmp_build, log=lambda _: None)


@pytest.mark.parametrize("text", ["", "garbage\n", "asyncbench-calibration-cache-v1 method=x\nname: zz\n"])
def test_damaged_cache_is_one_line(tmp_path, text: str) -> None:
    path = tmp_path / "calibration.cache"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        CalibrationCache.load(path)
    assert "\n" not in str(err.value) and "make calibrate" in str(err.value)


def test_int8_model_rebuilt_from_changed_cache(calibrated: BuildPaths, tmp_build: BuildPaths) -> None:
    shutil.copy(calibrated.calibration_cache, tmp_build.calibration_cache)
    _, int8 = ensure_engine_models(tmp_build, log=lambda _: None)
    first = _metadata(int8)[CACHE_KEY]
    cache = CalibrationCache.load(tmp_build.calibration_cache)
    name = next(iter(cache.scales))
    cache.scales[name] *= 2
    tmp_build.calibration_cache.write_text(cache.dumps())
    said: list[str] = []
    ensure_engine_models(tmp_build, log=said.append)
    assert _metadata(int8)[CACHE_KEY] != first
    assert any("built" in s and "int8" in s for s in said)
    said.clear()
    ensure_engine_models(tmp_build, log=said.append)
    assert said == []  # up to date: nothing rebuilt
