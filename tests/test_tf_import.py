"""TF -> ONNX import of small MobileNet-style graphs, checked against a numpy NHWC reference of the TF ops."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from tf_graph_builder import DT_FLOAT, GraphBuilder, attr_list, attr_s, attr_type

from asyncbench.model.graphdef import parse_graphdef
from asyncbench.model.tf_import import INPUT_NAME, LOGITS_NAME, OUTPUT_NAME, ConversionError, graphdef_to_onnx

CLASSES = 11
EPS = 0.001
T = {"T": attr_type(DT_FLOAT)}


# --- numpy reference of the TensorFlow ops (NHWC, float64) -------------------------------------


def same_pads(size: int, k: int, s: int) -> tuple[int, int, int]:
    """TF's SAME rule: (output size, pad before, pad after)."""
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return out, total // 2, total - total // 2


def _pad_nhwc(x: np.ndarray, kh: int, kw: int, s: int, padding: str) -> tuple[np.ndarray, int, int]:
    """Zero-pad x for a kh x kw window with stride s; returns the padded tensor and the output size."""
    if padding == "SAME":
        oh, th, bh = same_pads(x.shape[1], kh, s)
        ow, tw, bw = same_pads(x.shape[2], kw, s)
        x = np.pad(x, ((0, 0), (th, bh), (tw, bw), (0, 0)))
    else:
        oh, ow = (x.shape[1] - kh) // s + 1, (x.shape[2] - kw) // s + 1
    return x, oh, ow


def _windows(x: np.ndarray, kh: int, kw: int, s: int, oh: int, ow: int):
    """Yield (i, j, x[:, i::s, j::s] cut to the output size) for each kernel tap."""
    for i in range(kh):
        for j in range(kw):
            yield i, j, x[:, i : i + (oh - 1) * s + 1 : s, j : j + (ow - 1) * s + 1 : s, :]


def ref_conv2d(x: np.ndarray, w: np.ndarray, s: int, padding: str) -> np.ndarray:
    """tf.nn.conv2d, NHWC input, HWIO weights."""
    kh, kw = w.shape[:2]
    xp, oh, ow = _pad_nhwc(x, kh, kw, s, padding)
    out = np.zeros((x.shape[0], oh, ow, w.shape[3]))
    for i, j, patch in _windows(xp, kh, kw, s, oh, ow):
        out += patch @ w[i, j]
    return out


def ref_depthwise(x: np.ndarray, w: np.ndarray, s: int, padding: str) -> np.ndarray:
    """tf.nn.depthwise_conv2d, weights (kh, kw, C, M): output channel c*M + m."""
    kh, kw, c, m = w.shape
    xp, oh, ow = _pad_nhwc(x, kh, kw, s, padding)
    out = np.zeros((x.shape[0], oh, ow, c, m))
    for i, j, patch in _windows(xp, kh, kw, s, oh, ow):
        out += patch[..., :, None] * w[i, j]
    return out.reshape(x.shape[0], oh, ow, c * m)


def ref_avgpool(x: np.ndarray, kh: int, kw: int, s: int, padding: str) -> np.ndarray:
    """tf.nn.avg_pool: padded positions are left out of each average."""
    xp, oh, ow = _pad_nhwc(x, kh, kw, s, padding)
    ones, _, _ = _pad_nhwc(np.ones_like(x[..., :1]), kh, kw, s, padding)
    total, count = 0.0, 0.0
    taps = zip(_windows(xp, kh, kw, s, oh, ow), _windows(ones, kh, kw, s, oh, ow), strict=True)
    for (_, _, patch), (_, _, valid) in taps:
        total, count = total + patch, count + valid
    return total / count


def ref_batch_norm(x: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """Inference batch norm from its raw parameters."""
    return (x - p["mean"]) / np.sqrt(p["var"].astype(np.float64) + EPS) * p["gamma"] + p["beta"]


def relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


# --- the test network ----------------------------------------------------------------------------


@dataclass
class Layer:
    """One conv + BN + Relu6 block."""

    name: str
    weights: np.ndarray
    stride: int
    depthwise: bool
    bn: dict[str, np.ndarray]


def make_layers(rng: np.random.Generator, multiplier: int = 1) -> list[Layer]:
    """A MobileNet-like stack: full conv, then depthwise/pointwise pairs at stride 1 and 2."""

    def bn(c: int) -> dict[str, np.ndarray]:
        return {
            "gamma": rng.uniform(0.5, 1.5, c).astype(np.float32),
            "beta": rng.normal(0.5, 1.0, c).astype(np.float32),
            "mean": rng.normal(0.0, 0.5, c).astype(np.float32),
            "var": rng.uniform(0.5, 2.0, c).astype(np.float32),
        }

    def w(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 2.0 / math.sqrt(fan_in)).astype(np.float32)

    c1 = 8 * multiplier
    return [
        Layer("MobilenetV1/Conv2d_0", w((3, 3, 3, 8), 27), 2, False, bn(8)),
        Layer("MobilenetV1/Conv2d_1_depthwise", w((3, 3, 8, multiplier), 9), 1, True, bn(c1)),
        Layer("MobilenetV1/Conv2d_1_pointwise", w((1, 1, c1, 16), c1), 1, False, bn(16)),
        Layer("MobilenetV1/Conv2d_2_depthwise", w((3, 3, 16, 1), 9), 2, True, bn(16)),
        Layer("MobilenetV1/Conv2d_2_pointwise", w((1, 1, 16, 16), 16), 1, False, bn(16)),
    ]


def out_hw(h: int, w: int, layers: list[Layer]) -> tuple[int, int]:
    """Spatial size after the SAME-padded layers."""
    for layer in layers:
        h, w = math.ceil(h / layer.stride), math.ceil(w / layer.stride)
    return h, w


def build_graph(h: int, w: int, layers: list[Layer], logits_w: np.ndarray, logits_b: np.ndarray,
                extra_pool: bool = False) -> bytes:
    """The frozen TF graph: input -> blocks -> [AvgPool SAME] -> AvgPool VALID -> 1x1 logits -> Squeeze -> Reshape."""
    g = GraphBuilder()
    x = g.placeholder("input", [1, h, w, 3])
    for layer in layers:
        x = g.conv(layer.name, x, layer.weights, layer.stride, "SAME", layer.depthwise)
        x = g.batch_norm(layer.name, x, eps=EPS, **layer.bn)
        x = g.add(f"{layer.name}/Relu6", "Relu6", [x], **T)
    ph, pw = out_hw(h, w, layers)
    if extra_pool:
        x = g.add("MobilenetV1/Logits/AvgPool_same", "AvgPool", [x], ksize=attr_list(i=[1, 3, 3, 1]),
                  strides=attr_list(i=[1, 2, 2, 1]), padding=attr_s("SAME"), data_format=attr_s("NHWC"), **T)
        ph, pw = math.ceil(ph / 2), math.ceil(pw / 2)
    x = g.add("MobilenetV1/Logits/AvgPool_1a", "AvgPool", [x], ksize=attr_list(i=[1, ph, pw, 1]),
              strides=attr_list(i=[1, 2, 2, 1]), padding=attr_s("VALID"), data_format=attr_s("NHWC"), **T)
    x = g.conv("MobilenetV1/Logits/Conv2d_1c_1x1", x, logits_w, 1, "SAME")
    bias = g.variable("MobilenetV1/Logits/Conv2d_1c_1x1/biases", logits_b)
    x = g.add("MobilenetV1/Logits/Conv2d_1c_1x1/BiasAdd", "BiasAdd", [x, bias], data_format=attr_s("NHWC"), **T)
    x = g.add("MobilenetV1/Logits/SpatialSqueeze", "Squeeze", [x], squeeze_dims=attr_list(i=[1, 2]), **T)
    shape = g.const("MobilenetV1/Predictions/Reshape/shape", np.array([-1, CLASSES], np.int32))
    x = g.add("MobilenetV1/Predictions/Reshape", "Reshape", [x, shape], **T)
    # TF's frozen graph continues to a Softmax and Reshape_1; the importer stops at the logits.
    g.add("MobilenetV1/Predictions/Softmax", "Softmax", [x], **T)
    return g.serialize()


def reference(x: np.ndarray, layers: list[Layer], logits_w: np.ndarray, logits_b: np.ndarray,
              extra_pool: bool = False) -> tuple[np.ndarray, float]:
    """Logits from the TF ops in numpy, and the fraction of pre-activations Relu6 clipped above 6."""
    y, clipped_high, total = x.astype(np.float64), 0, 0
    for layer in layers:
        conv = ref_depthwise if layer.depthwise else ref_conv2d
        y = ref_batch_norm(conv(y, layer.weights.astype(np.float64), layer.stride, "SAME"), layer.bn)
        clipped_high, total = clipped_high + int((y > 6).sum()), total + y.size
        y = relu6(y)
    if extra_pool:
        y = ref_avgpool(y, 3, 3, 2, "SAME")
    y = ref_avgpool(y, y.shape[1], y.shape[2], 2, "VALID")
    y = ref_conv2d(y, logits_w.astype(np.float64), 1, "SAME") + logits_b
    return y.reshape(-1, CLASSES), clipped_high / total


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def run_onnx(model: onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(softmax, logits) from onnxruntime; the logits tensor is exposed as an extra graph output."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.graph.output.append(helper.make_tensor_value_info(LOGITS_NAME, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    probs, logits = sess.run([OUTPUT_NAME, LOGITS_NAME], {INPUT_NAME: x.astype(np.float32)})
    return probs, logits


# --- tests ---------------------------------------------------------------------------------------


def test_same_pads_rule() -> None:
    assert same_pads(8, 3, 2) == (4, 0, 1)  # asymmetric: the extra row goes after
    assert same_pads(7, 3, 2) == (4, 1, 1)
    assert same_pads(224, 3, 2) == (112, 0, 1)
    assert same_pads(4, 3, 1) == (4, 1, 1)
    assert same_pads(5, 1, 2) == (3, 0, 0)


@pytest.mark.parametrize(
    ("h", "w", "multiplier", "extra_pool"),
    [(8, 8, 1, False), (7, 7, 1, False), (9, 6, 1, False), (8, 8, 2, False), (13, 11, 1, True)],
)
def test_converted_graph_matches_numpy_reference(h: int, w: int, multiplier: int, extra_pool: bool) -> None:
    rng = np.random.default_rng(1000 * h + w + multiplier)
    layers = make_layers(rng, multiplier)
    logits_w = (rng.standard_normal((1, 1, 16, CLASSES)) / 2).astype(np.float32)
    logits_b = rng.standard_normal(CLASSES).astype(np.float32)
    data = build_graph(h, w, layers, logits_w, logits_b, extra_pool)

    model = graphdef_to_onnx(parse_graphdef(data))

    assert [i.name for i in model.graph.input] == [INPUT_NAME]
    dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", h, w, 3]
    assert [o.name for o in model.graph.output] == [OUTPUT_NAME]
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == len(layers) + 1  # BN and BiasAdd folded away, no Mul/Add left
    assert not {"Mul", "Add", "Sub", "Sqrt", "Reciprocal"} & set(ops)
    assert ops.count("Clip") == len(layers)
    assert ops.count("Transpose") == 1

    x = rng.uniform(-1.0, 1.0, (1, h, w, 3)) * 3
    want_logits, clipped = reference(x, layers, logits_w, logits_b, extra_pool)
    assert clipped > 0.01, "weights too small for the test to exercise Relu6's upper clip"
    probs, logits = run_onnx(model, x)

    assert logits.shape == (1, CLASSES)
    scale = np.abs(want_logits).max()
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(probs, softmax(want_logits), rtol=1e-5, atol=1e-7)


def test_asymmetric_padding_is_explicit_in_onnx() -> None:
    rng = np.random.default_rng(5)
    layers = make_layers(rng)
    data = build_graph(8, 8, layers, np.ones((1, 1, 16, CLASSES), np.float32), np.zeros(CLASSES, np.float32))
    model = graphdef_to_onnx(parse_graphdef(data))
    pads = {n.name: next(list(a.ints) for a in n.attribute if a.name == "pads")
            for n in model.graph.node if n.op_type == "Conv"}
    # Stride 2, k=3 on 8 -> 4 needs one pad row/column after only; stride 1, k=3 pads one each side.
    assert sorted(pads.values()) == sorted([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 1, 1],
                                            [0, 0, 0, 0], [0, 0, 0, 0]])


def test_batched_input() -> None:
    rng = np.random.default_rng(11)
    layers = make_layers(rng)
    logits_w = rng.standard_normal((1, 1, 16, CLASSES)).astype(np.float32)
    logits_b = rng.standard_normal(CLASSES).astype(np.float32)
    model = graphdef_to_onnx(parse_graphdef(build_graph(8, 8, layers, logits_w, logits_b)))
    x = rng.uniform(-3, 3, (4, 8, 8, 3))
    want, _ = reference(x, layers, logits_w, logits_b)
    _, logits = run_onnx(model, x)
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def _nodes_with(extra: GraphBuilder | None = None, op: str | None = None) -> dict:
    """A minimal valid graph (input -> conv -> Reshape), optionally with `op` inserted after the conv."""
    g = extra or GraphBuilder()
    x = g.placeholder("input", [1, 4, 4, 3])
    x = g.conv("c", x, np.ones((1, 1, 3, CLASSES), np.float32), 1, "SAME")
    if op is not None:
        x = g.add("odd/op", op, [x], **T)
    x = g.add("pool", "AvgPool", [x], ksize=attr_list(i=[1, 4, 4, 1]), strides=attr_list(i=[1, 1, 1, 1]),
              padding=attr_s("VALID"), **T)
    x = g.add("sq", "Squeeze", [x], squeeze_dims=attr_list(i=[1, 2]), **T)
    shape = g.const("MobilenetV1/Predictions/Reshape/shape", np.array([-1, CLASSES], np.int32))
    g.add("MobilenetV1/Predictions/Reshape", "Reshape", [x, shape], **T)
    return parse_graphdef(g.serialize())


def test_minimal_graph_converts() -> None:
    model = graphdef_to_onnx(_nodes_with())
    probs, logits = run_onnx(model, np.ones((1, 4, 4, 3)))
    np.testing.assert_allclose(logits, np.full((1, CLASSES), 3.0), rtol=1e-6)
    np.testing.assert_allclose(probs, np.full((1, CLASSES), 1 / CLASSES), rtol=1e-6)


@pytest.mark.parametrize("op", ["Tanh", "MaxPool", "FusedBatchNorm"])
def test_unsupported_op_names_the_op(op: str) -> None:
    with pytest.raises(ConversionError, match=rf"unsupported TensorFlow op {op} at 'odd/op'"):
        graphdef_to_onnx(_nodes_with(op=op))


def test_missing_placeholder() -> None:
    nodes = _nodes_with()
    with pytest.raises(ConversionError, match="no Placeholder named 'image'"):
        graphdef_to_onnx(nodes, input_node="image")
    with pytest.raises(ConversionError, match="no Placeholder named 'c/weights'"):
        graphdef_to_onnx(nodes, input_node="c/weights")  # exists, but is a Const


def test_missing_output_node() -> None:
    with pytest.raises(ConversionError, match="no node named 'logits'"):
        graphdef_to_onnx(_nodes_with(), output_node="logits")


def test_reference_to_missing_node() -> None:
    g = GraphBuilder()
    x = g.placeholder("input", [1, 4, 4, 3])
    x = g.add("c/Conv2D", "Conv2D", [x, "c/weights/read"], strides=attr_list(i=[1, 1, 1, 1]),
              padding=attr_s("SAME"), **T)
    g.add("MobilenetV1/Predictions/Reshape", "Reshape", [x, "shape"], **T)
    with pytest.raises(ConversionError, match="'c/weights/read' is referenced but missing"):
        graphdef_to_onnx(parse_graphdef(g.serialize()))


def test_mul_without_a_preceding_conv() -> None:
    g = GraphBuilder()
    x = g.placeholder("input", [1, 4, 4, 3])
    k = g.const("k", np.array(2.0, np.float32))
    g.add("MobilenetV1/Predictions/Reshape", "Mul", [x, k], **T)
    with pytest.raises(ConversionError, match="does not follow a convolution"):
        graphdef_to_onnx(parse_graphdef(g.serialize()))
