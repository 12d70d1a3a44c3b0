"""tensorrt_form: the engine model rewritten for TensorRT computes the same top-1 (onnxruntime, CPU)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import tiny_sym_no_bn_model
from onnx import TensorProto, helper, numpy_helper
from test_profiles_wrap import tiny_classifier

from asyncbench.data.dataset import VAL_LAYOUT, read_map, resolve_dataset
from asyncbench.model.calibrate import calibrate, ensure_signed_int8_model
from asyncbench.model.profiles import MOBILENET_V1, PROFILES, SYM_NO_BN, ModelProfile
from asyncbench.model.trt_onnx import tensorrt_form
from asyncbench.model.wrap import ENGINE_INPUT, ENGINE_OUTPUT, wrap_for_engine
from asyncbench.paths import BuildPaths


def _samples(paths: BuildPaths) -> np.ndarray:
    """The preprocessed validation photos as one int8 NHW4 batch."""
    dataset = resolve_dataset(paths)
    folder = dataset.preprocessed_dir(paths.preprocessed, VAL_LAYOUT)
    return np.stack([np.load(folder / f"{e.name}.npy") for e in read_map(dataset.val_map)])


def _nchw(nhw4: np.ndarray) -> np.ndarray:
    """What TensorRT sees in the same bytes (CHW4 of int8 [N,3,224,224]), as a plain NCHW array."""
    return np.ascontiguousarray(nhw4[..., :3].transpose(0, 3, 1, 2))


def _top1(model: onnx.ModelProto, batch: np.ndarray) -> np.ndarray:
    """onnxruntime's top-1 with graph optimizations off: every node runs as the ONNX spec defines it.

    The rewrite is exact under those semantics; optimized sessions may pick integer kernels for
    one graph and float kernels for the other, whose rounding differs on near-ties.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {ENGINE_INPUT: batch})[0]


def _input_dims(model: onnx.ModelProto) -> tuple[int, list[int | str]]:
    tensor = model.graph.input[0].type.tensor_type
    return tensor.elem_type, [d.dim_value or d.dim_param for d in tensor.shape.dim]


def _assert_trt_form(model: onnx.ModelProto) -> None:
    """int8 NCHW in, int32 top-1 out, no wrap/ head node left, no int32 dequantization."""
    assert _input_dims(model) == (TensorProto.INT8, ["N", 3, 224, 224])
    out = model.graph.output[0].type.tensor_type
    assert (model.graph.output[0].name, out.elem_type) == (ENGINE_OUTPUT, TensorProto.INT32)
    names = {n.name for n in model.graph.node}
    assert not names & {"wrap/cast", "wrap/drop_pad_channel", "wrap/scale", "wrap/to_nchw", "wrap/model_input"}
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            assert inits[node.input[0]].data_type != TensorProto.INT32, node.name
    onnx.checker.check_model(model)


def _first_layer_reads_int8_input(model: onnx.ModelProto, scale: float, layer: str) -> None:
    """The input goes through exactly one DequantizeLinear (the sample scale, zero point 0) into ``layer``."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    readers = [n for n in model.graph.node if ENGINE_INPUT in n.input]
    assert [n.op_type for n in readers] == ["DequantizeLinear"]
    dq = readers[0]
    assert inits[dq.input[1]] == np.float32(scale) and inits[dq.input[2]] == 0
    assert inits[dq.input[2]].dtype == np.int8
    assert [n.op_type for n in model.graph.node if dq.output[0] in n.input] == [layer]


def test_real_int8_model_same_top1(calibrated: BuildPaths) -> None:
    model = onnx.load(str(ensure_signed_int8_model(calibrated, log=lambda _: None)))
    before = model.SerializeToString()
    trt = tensorrt_form(model)
    assert model.SerializeToString() == before, "the input model must not be modified"
    _assert_trt_form(trt)
    _first_layer_reads_int8_input(trt, MOBILENET_V1.input_scale, "Conv")  # NHWC transposes and Q/DQ cancelled
    x = _samples(calibrated)
    assert len(x) >= 100
    expected = _top1(model, x)
    assert len(set(expected.tolist())) > 10  # real photos, not a constant answer
    np.testing.assert_array_equal(_top1(trt, _nchw(x)), expected)


def test_nchw_profile_int8_model_same_top1(calibrated: BuildPaths, tmp_build: BuildPaths) -> None:
    """A network with NVIDIA's sym_no_bn contract (NCHW, scale 1), calibrated and quantized for real, rewritten."""
    tmp_build.preprocessed.symlink_to(calibrated.preprocessed.resolve())
    onnx.save(tiny_sym_no_bn_model(seed=3), tmp_build.sym_no_bn_model)
    cache = calibrate(tmp_build, resolve_dataset(tmp_build), method="minmax", log=lambda _: None)
    assert cache.profile == SYM_NO_BN.name
    model = onnx.load(str(ensure_signed_int8_model(tmp_build, log=lambda _: None)))
    trt = tensorrt_form(model)
    _assert_trt_form(trt)
    _first_layer_reads_int8_input(trt, SYM_NO_BN.input_scale, "Conv")
    x = _samples(calibrated)
    expected = _top1(model, x)
    assert len(set(expected.tolist())) > 3
    np.testing.assert_array_equal(_top1(trt, _nchw(x)), expected)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_float_models_of_both_profiles(profile: ModelProfile) -> None:
    """Without Q/DQ nothing folds: input -> DequantizeLinear -> [Transpose to NHWC] -> the network."""
    model = wrap_for_engine(tiny_classifier(profile)[0], profile)
    trt = tensorrt_form(model)
    _assert_trt_form(trt)
    first = next(n for n in trt.graph.node if ENGINE_INPUT in n.input)
    assert first.op_type == "DequantizeLinear"
    after = [n.op_type for n in trt.graph.node if first.output[0] in n.input]
    assert after == (["Transpose"] if profile.layout == "NHWC" else ["Identity"])
    rng = np.random.default_rng(7)
    x = (rng.integers(-128, 128, (16, 224, 224, 4)) + rng.integers(-60, 60, (16, 1, 1, 4))).clip(-128, 127)
    x = x.astype(np.int8)
    x[..., 3] = 0
    expected = _top1(model, x)
    assert len(set(expected.tolist())) > 1
    np.testing.assert_array_equal(_top1(trt, _nchw(x)), expected)


def _mutated(edit: str) -> onnx.ModelProto:
    model = wrap_for_engine(tiny_classifier(MOBILENET_V1)[0], MOBILENET_V1)
    g = model.graph
    nodes = {n.name: n for n in g.node}
    if edit == "keeps pad channel":
        g.initializer.append(numpy_helper.from_array(np.array([4], np.int64), "four"))
        nodes["wrap/drop_pad_channel"].input[2] = "four"
    elif edit == "no scale":
        nodes["wrap/model_input"].input[0] = "wrap/rgb"
        g.node.remove(nodes["wrap/scale"])
    elif edit == "renamed cast":
        nodes["wrap/cast"].name = "cast"
    elif edit == "second reader":
        g.node.append(helper.make_node("Identity", ["wrap/f32"], ["spy"], name="spy"))
    return model


@pytest.mark.parametrize("edit, message", [
    ("keeps pad channel", "channels 0..2"),
    ("no scale", "expects NHWC x 0.0078125"),
    ("renamed cast", "not Cast 'wrap/cast'"),
    ("second reader", "read by 2 nodes"),
])
def test_foreign_heads_are_refused(edit: str, message: str) -> None:
    with pytest.raises(ValueError, match="not an engine model this rewrite knows") as info:
        tensorrt_form(_mutated(edit))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_model_without_engine_input_is_refused() -> None:
    with pytest.raises(ValueError, match="no graph input 'input'"):
        tensorrt_form(tiny_sym_no_bn_model(seed=3))  # the bare network, not wrapped to the engine contract
