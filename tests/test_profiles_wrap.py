"""Model profiles (detect_profile, load_onnx, source_model_path) and wrap_for_engine on tiny ONNX models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from asyncbench.errors import UserError
from asyncbench.model.profiles import (
    MOBILENET_V1,
    PROFILES,
    SYM_NO_BN,
    ModelProfile,
    detect_profile,
    load_onnx,
    source_model_path,
)
from asyncbench.model.wrap import ENGINE_INPUT, ENGINE_OUTPUT, wrap_for_engine
from asyncbench.paths import BuildPaths

POOL = 28  # 224 / 28 = 8x8 pooled map, so the features keep where each pixel came from
GRID = 224 // POOL
FEATURES = 3 * GRID * GRID


def tiny_classifier(profile: ModelProfile, seed: int = 0, *, opset: int = 13, background_bias: float = 0.0,
                    input_name: str | None = None, output_name: str | None = None,
                    input_dims: list[int | str] | None = None, classes: int | None = None,
                    ) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """A small network with the profile's contract: [Transpose] -> AveragePool -> Flatten -> Gemm [-> Softmax].

    Returns the model and its Gemm weights (classes, FEATURES; features in NCHW-flatten order) and bias.
    """
    rng = np.random.default_rng(seed)
    classes = classes or profile.num_classes
    w = (rng.standard_normal((classes, FEATURES)) / np.sqrt(FEATURES)).astype(np.float32)
    b = (rng.standard_normal(classes) * 0.3).astype(np.float32)
    b[0] += background_bias
    in_name, out_name = input_name or profile.input_name, output_name or profile.output_name
    x = in_name
    nodes = []
    if profile.layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    nodes += [
        helper.make_node("AveragePool", [x], ["pooled"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
    ]
    softmax = profile.class_offset == 1
    nodes.append(helper.make_node("Gemm", ["flat", "w", "b"], ["logits" if softmax else out_name], transB=1))
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], [out_name], axis=-1 if opset >= 13 else 1))
    if input_dims is None:
        input_dims = ["N", 224, 224, 3] if profile.layout == "NHWC" else ["N", 3, 224, 224]
    graph = helper.make_graph(
        nodes, f"tiny_{profile.name}",
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, input_dims)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, w, b


def reference_top1(sample: np.ndarray, profile: ModelProfile, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What the wrapped tiny model must return, computed in float64 numpy from the int8 NHW4 batch."""
    x = sample[..., :3].astype(np.float64) * profile.input_scale  # drop the pad channel, scale
    n = x.shape[0]
    # 28x28 average pooling, then NCHW flatten order (channel, row, column), as the model sees it.
    pooled = x.reshape(n, GRID, POOL, GRID, POOL, 3).mean(axis=(2, 4)).transpose(0, 3, 1, 2).reshape(n, -1)
    logits = pooled @ w.T.astype(np.float64) + b  # no softmax: argmax is the same
    logits = logits[:, profile.class_offset : profile.class_offset + 1000]  # drop background
    ordered = np.sort(logits, axis=1)
    assert np.all(ordered[:, -1] - ordered[:, -2] > 1e-4), "near-tie in the reference: pick another seed"
    return logits.argmax(axis=1).astype(np.int32)


def random_samples(n: int, seed: int) -> np.ndarray:
    """int8 [n,224,224,4] images of 8x8 flat blocks (full int8 range); channel 3 random, not zero."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(-128, 128, size=(n, GRID, GRID, 4), dtype=np.int16)
    return np.repeat(np.repeat(blocks, POOL, axis=1), POOL, axis=2).astype(np.int8)


def run_wrapped(model: onnx.ModelProto, sample: np.ndarray) -> np.ndarray:
    """Run a wrapped model in onnxruntime."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [ENGINE_INPUT]
    assert [o.name for o in sess.get_outputs()] == [ENGINE_OUTPUT]
    (top1,) = sess.run([ENGINE_OUTPUT], {ENGINE_INPUT: sample})
    return top1


# --- detect_profile ------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_detect_profile(profile: ModelProfile, tmp_path: Path) -> None:
    model, _, _ = tiny_classifier(profile)
    assert detect_profile(model, tmp_path / "m.onnx") == profile


def test_detect_profile_ignores_initializers_listed_as_inputs(tmp_path: Path) -> None:
    # Older exporters (NVIDIA's sym_no_bn among them) also list every weight as a graph input.
    model, _, _ = tiny_classifier(SYM_NO_BN, opset=9)
    model.graph.input.extend([helper.make_tensor_value_info("w", TensorProto.FLOAT, [1000, FEATURES]),
                              helper.make_tensor_value_info("b", TensorProto.FLOAT, [1000])])
    assert detect_profile(model, tmp_path / "m.onnx") == SYM_NO_BN


@pytest.mark.parametrize(
    ("kwargs", "found"),
    [
        ({"input_name": "data"}, "input 'data' ['N', 224, 224, 3]"),
        ({"output_name": "prob"}, "output 'prob' ['N', 1001]"),
        ({"input_dims": ["N", 3, 224, 224]}, "input 'input:0' ['N', 3, 224, 224]"),  # NCHW under the NHWC name
        ({"classes": 1000}, "output 'MobilenetV1/Predictions/Reshape_1:0' ['N', 1000]"),
    ],
)
def test_unknown_model_one_line_error(kwargs: dict, found: str, tmp_path: Path) -> None:
    path = tmp_path / "other.onnx"
    model, _, _ = tiny_classifier(MOBILENET_V1, **kwargs)
    with pytest.raises(UserError) as err:
        detect_profile(model, path)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    assert found in message  # what was found
    for p in PROFILES:  # what was expected
        assert p.describe() in message


def test_unknown_model_two_inputs(tmp_path: Path) -> None:
    model, _, _ = tiny_classifier(SYM_NO_BN)
    model.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))
    with pytest.raises(UserError, match=r"found input '0' \['N', 3, 224, 224\], input 'extra' \[1\]; output '169'"):
        detect_profile(model, tmp_path / "m.onnx")


# --- wrap_for_engine -----------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_wrapped_top1_matches_numpy(profile: ModelProfile) -> None:
    model, w, b = tiny_classifier(profile, seed=1)
    wrapped = wrap_for_engine(model, profile)
    sample = random_samples(8, seed=2)
    want = reference_top1(sample, profile, w, b)
    assert len(set(want.tolist())) > 4  # the batch exercises several classes
    got = run_wrapped(wrapped, sample)
    assert got.dtype == np.int32
    assert got.shape == (8,)
    np.testing.assert_array_equal(got, want)


def test_wrapped_ignores_pad_channel() -> None:
    model, _, _ = tiny_classifier(SYM_NO_BN, seed=3)
    wrapped = wrap_for_engine(model, SYM_NO_BN)
    sample = random_samples(6, seed=4)
    other = sample.copy()
    other[..., 3] = -sample[..., 3] // 2
    np.testing.assert_array_equal(run_wrapped(wrapped, sample), run_wrapped(wrapped, other))


def test_wrapped_v1_drops_background_class() -> None:
    # Class 0 (background) always wins the softmax; the engine must still answer an ImageNet class.
    model, w, b = tiny_classifier(MOBILENET_V1, seed=5, background_bias=100.0)
    sample = random_samples(4, seed=6)
    got = run_wrapped(wrap_for_engine(model, MOBILENET_V1), sample)
    assert np.all(got < 1000)
    np.testing.assert_array_equal(got, reference_top1(sample, MOBILENET_V1, w, b))


def test_wrap_upgrades_old_opset_and_leaves_original_untouched() -> None:
    model, w, b = tiny_classifier(SYM_NO_BN, seed=7, opset=9)
    before = model.SerializeToString()
    wrapped = wrap_for_engine(model, SYM_NO_BN)
    assert model.SerializeToString() == before
    assert next(o.version for o in wrapped.opset_import if o.domain in ("", "ai.onnx")) >= 13
    sample = random_samples(5, seed=8)
    np.testing.assert_array_equal(run_wrapped(wrapped, sample), reference_top1(sample, SYM_NO_BN, w, b))


def test_wrap_model_listing_weights_as_inputs() -> None:
    # Exporters of NVIDIA's era list every initializer as a graph input too; only `input` may need feeding.
    model, w, b = tiny_classifier(SYM_NO_BN, seed=9, opset=9)
    model.graph.input.extend([helper.make_tensor_value_info("w", TensorProto.FLOAT, [1000, FEATURES]),
                              helper.make_tensor_value_info("b", TensorProto.FLOAT, [1000])])
    wrapped = wrap_for_engine(model, SYM_NO_BN)
    initializers = {i.name for i in wrapped.graph.initializer}
    assert [i.name for i in wrapped.graph.input if i.name not in initializers] == [ENGINE_INPUT]
    sample = random_samples(3, seed=10)
    np.testing.assert_array_equal(run_wrapped(wrapped, sample), reference_top1(sample, SYM_NO_BN, w, b))


def test_wrapped_contract_types() -> None:
    wrapped = wrap_for_engine(tiny_classifier(MOBILENET_V1)[0], MOBILENET_V1)
    (inp,) = wrapped.graph.input
    (out,) = wrapped.graph.output
    assert inp.type.tensor_type.elem_type == TensorProto.INT8
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["N", 224, 224, 4]
    assert out.type.tensor_type.elem_type == TensorProto.INT32


# --- load_onnx / source_model_path ---------------------------------------------------------------


def test_load_onnx_roundtrip(tmp_path: Path) -> None:
    model, _, _ = tiny_classifier(SYM_NO_BN)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert detect_profile(load_onnx(path), path) == SYM_NO_BN


def test_load_onnx_missing(tmp_path: Path) -> None:
    path = tmp_path / "nope.onnx"
    with pytest.raises(UserError) as err:
        load_onnx(path)
    message = str(err.value)
    assert "\n" not in message
    assert f"{path} does not exist" in message
    assert "prepare" in message


@pytest.mark.parametrize("content", ["random", "truncated", "directory"])
def test_load_onnx_corrupt(content: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    if content == "random":
        path.write_bytes(np.random.default_rng(9).bytes(4096))
    elif content == "truncated":
        data = tiny_classifier(SYM_NO_BN)[0].SerializeToString()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.mkdir()  # a directory where the file should be: reported as missing, not a traceback
    with pytest.raises(UserError) as err:
        load_onnx(path)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    if content != "directory":
        assert "is not a valid ONNX model" in message


def test_source_model_path_prefers_sym_no_bn(tmp_path: Path) -> None:
    paths = BuildPaths(tmp_path / "build")
    assert source_model_path(paths) == paths.fp32_model  # nothing there yet: the fp32 import
    paths.models.mkdir(parents=True)
    paths.fp32_model.write_bytes(b"fp32")
    assert source_model_path(paths) == paths.fp32_model
    paths.sym_no_bn_model.write_bytes(b"sym")
    assert source_model_path(paths) == paths.sym_no_bn_model
    assert paths.sym_no_bn_model.name == "mobilenet_sym_no_bn.onnx"
