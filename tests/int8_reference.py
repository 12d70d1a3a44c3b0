"""The integer body (asyncbench.model.int8chain) in exact numpy integers, small random bodies to test
with, and onnxruntime's INT8 body on real photos at a reduced size.

The int8 kernels must agree with this bit for bit: the same int32 sums, the same fp32 multiply
and round-to-nearest-even, the same clamp.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from asyncbench.data.dataset import VAL_LAYOUT, read_map, resolve_dataset
from asyncbench.model.calibrate import ensure_signed_int8_model
from asyncbench.model.convchain import Activation, ConvChain, FirstConv, SeparableBlock
from asyncbench.model.int8chain import Int8Chain, QuantConv, quantize_conv
from asyncbench.paths import BuildPaths

RELU6 = Activation(0.0, 6.0)


def taps(x: np.ndarray, stride: int, pad_top: int) -> list[np.ndarray]:
    """The nine shifted NHWC views a 3x3 TF SAME window reads, in (kh, kw) order (zero padding)."""
    h, w = x.shape[1:3]
    out_h, out_w = -(-h // stride), -(-w // stride)
    ph, pw = max((out_h - 1) * stride + 3 - h, 0), max((out_w - 1) * stride + 3 - w, 0)
    p = np.pad(x, ((0, 0), (pad_top, ph - pad_top), (pad_top, pw - pad_top), (0, 0)))
    return [p[:, kh:kh + stride * out_h:stride, kw:kw + stride * out_w:stride] for kh in range(3) for kw in range(3)]


def requant(acc: np.ndarray, conv: QuantConv) -> np.ndarray:
    """int8 clamp(rint((acc + b_q) * m), lo, hi), in fp32 as the kernels compute it."""
    v = (acc + conv.bias).astype(np.float32) * conv.multiplier
    return np.rint(np.clip(v, np.float32(conv.low), np.float32(conv.high))).astype(np.int8)


def stem(q: Int8Chain, x: np.ndarray) -> np.ndarray:
    f, w = q.chain.first, q.stem.weight.astype(np.int64)
    acc = sum(t.astype(np.int64) @ w[k] for k, t in enumerate(taps(x, f.stride, f.pad_top)))
    return requant(acc, q.stem)


def depthwise(q: Int8Chain, i: int, x: np.ndarray) -> np.ndarray:
    b, dw = q.chain.blocks[i], q.blocks[i][0]
    acc = sum(t.astype(np.int64) * dw.weight[k].astype(np.int64) for k, t in enumerate(taps(x, b.stride, b.pad_top)))
    return requant(acc, dw)


def pointwise(q: Int8Chain, i: int, x: np.ndarray) -> np.ndarray:
    return requant(x.astype(np.int64) @ q.blocks[i][1].weight.astype(np.int64), q.blocks[i][1])


def body(q: Int8Chain, x: np.ndarray) -> np.ndarray:
    """The body's int8 NHWC output for an int8 NHWC batch."""
    y = stem(q, x)
    for i in range(len(q.blocks)):
        y = pointwise(q, i, depthwise(q, i, y))
    return y


def random_chain(rng: np.random.Generator, widths: list[int], strides: list[int], cin: int = 4,
                 input_hw: tuple[int, int] = (12, 12)) -> Int8Chain:
    """A random float body (stem to widths[0], then one separable block per further width) quantized
    with random activation scales the way quantize_chain does it."""
    def pads(stride: int) -> tuple[int, int]:
        return (1, 1) if stride == 1 else (0, 0)  # TF SAME for a 3x3 window on even sizes

    first = FirstConv((rng.standard_normal((9, cin, widths[0])) * 0.002).astype(np.float32),
                      rng.standard_normal(widths[0]).astype(np.float32), strides[0], *pads(strides[0]), RELU6)
    blocks = []
    for c, cout, stride in zip(widths, widths[1:], strides[1:], strict=False):
        blocks.append(SeparableBlock(
            (rng.standard_normal((9, c)) * 0.3).astype(np.float32), rng.standard_normal(c).astype(np.float32) * 0.5,
            stride, *pads(stride), RELU6,
            (rng.standard_normal((c, cout)) / np.sqrt(c)).astype(np.float32),
            rng.standard_normal(cout).astype(np.float32) * 0.5, RELU6))
    chain = ConvChain(input_hw, first, tuple(blocks), "out", ())
    scales = rng.uniform(0.02, 6.0 / 127.0, size=2 * len(blocks) + 1)
    q_stem = quantize_conv(first.weight, first.bias, 1.0, scales[0], first.act)
    q_blocks = tuple((quantize_conv(b.dw_weight, b.dw_bias, scales[2 * i], scales[2 * i + 1], b.dw_act),
                      quantize_conv(b.pw_weight, b.pw_bias, scales[2 * i + 1], scales[2 * i + 2], b.pw_act))
                     for i, b in enumerate(blocks))
    return Int8Chain(chain, q_stem, q_blocks)


def reduced_photos(paths: BuildPaths, count: int = 2) -> np.ndarray:
    """The first embedded photos, every third pixel of the central 192 x 192: int8 NHW4 64 x 64."""
    dataset = resolve_dataset(paths)
    folder = dataset.preprocessed_dir(paths.preprocessed, VAL_LAYOUT)
    x = np.stack([np.load(folder / f"{e.name}.npy") for e in read_map(dataset.val_map)[:count]])
    return np.ascontiguousarray(x[:, 16:208:3, 16:208:3])


def signed_body(paths: BuildPaths, q: Int8Chain, x: np.ndarray) -> np.ndarray:
    """onnxruntime's int8 body output (in output integers) for int8 NHW4 ``x`` of any size."""
    model = onnx.load(str(ensure_signed_int8_model(paths, log=lambda _: None)))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[1].dim_value, dims[2].dim_value = x.shape[1:3]
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(q.chain.output))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the tail's fixed 7 x 7 shapes warn at other sizes
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    out = session.run(None, {model.graph.input[0].name: x})[0].transpose(0, 2, 3, 1)
    return np.rint(out / q.out_scale).astype(np.int32)
