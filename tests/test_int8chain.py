"""The integer body the GPU's int8 kernels run is the INT8 QDQ model onnxruntime runs (and TensorRT builds).

quantize_chain rebuilds, from the fp32 model and the calibration cache alone, the int8 weights and
int32 biases the signed QDQ model (mobilenet_int8_nhw4_signed.onnx) stores, and the integer body
(tests/int8_reference.py, which the kernels match bit for bit) computes exactly what onnxruntime
computes with that model, on real photos at a reduced size (the body is fully convolutional).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from int8_reference import body, reduced_photos, signed_body
from onnx import numpy_helper

from asyncbench.errors import UserError
from asyncbench.model.calibrate import (
    CalibrationCache,
    default_weight_bits,
    ensure_engine_models,
    ensure_signed_int8_model,
)
from asyncbench.model.int8chain import Int8Chain, quantize_chain
from asyncbench.paths import BuildPaths


@pytest.fixture(scope="module")
def q(calibrated: BuildPaths) -> Int8Chain:
    fp32, _ = ensure_engine_models(calibrated, log=lambda _: None)
    chain = quantize_chain(onnx.load(str(fp32)), CalibrationCache.load(calibrated.calibration_cache))
    assert chain is not None
    return chain


def test_weights_and_biases_are_the_signed_models(calibrated: BuildPaths, q: Int8Chain) -> None:
    model = onnx.load(str(ensure_signed_int8_model(calibrated, log=lambda _: None)))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {out: n for n in model.graph.node for out in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"][:1 + 2 * len(q.blocks)]
    layers = [q.stem] + [conv for pair in q.blocks for conv in pair]
    for node, layer in zip(convs, layers, strict=True):
        weight = inits[producers[node.input[1]].input[0]]  # (cout, cin / group, 3, 3) int8
        bias = inits[producers[node.input[2]].input[0]]
        ours = layer.weight
        if ours.ndim == 3:  # stem (9, cin, cout): its pad channel is the one the signed model does not have
            ours = ours[:, :weight.shape[1]].reshape(3, 3, weight.shape[1], -1).transpose(3, 2, 0, 1)
        elif weight.shape[2:] == (3, 3):  # depthwise (9, c)
            ours = ours.T.reshape(-1, 1, 3, 3)
        else:  # pointwise (c, cout)
            ours = ours.T[:, :, None, None]
        assert ours.dtype == weight.dtype == np.int8 and np.array_equal(ours, weight), node.name
        assert bias.dtype == np.int32 and np.array_equal(layer.bias, bias), node.name
    assert 0 < q.out_scale < 1


def test_integer_body_is_onnxruntimes(calibrated: BuildPaths, q: Int8Chain) -> None:
    if default_weight_bits() < 8:
        pytest.skip("onnxruntime is no exact int8 reference on this CPU: on x86 without VNNI its int8 convolutions "
                    "add u8*s8 pairs in int16, which 8-bit weights overflow (why the CPU engine uses 7-bit ones)")
    x = reduced_photos(calibrated)
    want = signed_body(calibrated, q, x)
    got = body(q, x)
    assert got.shape == want.shape == (2, 2, 2, 1024)
    assert np.array_equal(got, want), f"{(got != want).mean():.2%} of the outputs differ"
    assert got.any()


def test_a_cache_without_the_graphs_scales_is_refused(calibrated: BuildPaths, q: Int8Chain) -> None:
    fp32, _ = ensure_engine_models(calibrated, log=lambda _: None)
    cache = CalibrationCache.load(calibrated.calibration_cache)
    del cache.scales[q.chain.tensors[5]]
    with pytest.raises(UserError, match="no scale for"):
        quantize_chain(onnx.load(str(fp32)), cache)
