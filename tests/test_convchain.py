"""The MobileNet body read out of the engine graph: its layers compute what the graph computes.

The GPU engine's fused kernels run exactly what `match_chain` returns, so a wrong weight layout,
pad or scale here would be a wrong engine. Checked on the CPU against onnxruntime running the
same graph up to the body's output, on a real photo.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from asyncbench.data.dataset import VAL_LAYOUT, read_map, resolve_dataset
from asyncbench.model.calibrate import ensure_engine_models
from asyncbench.model.convchain import ConvChain, match_chain
from asyncbench.model.gpu_rewrite import fold_pad_channel
from asyncbench.paths import BuildPaths


def _same_pad(x: np.ndarray, stride: int, pad_top: int) -> np.ndarray:
    """NHWC zero padding for a 3x3 window, TF SAME (the pad after makes ceil(size / stride))."""
    h, w = x.shape[1:3]
    ph = max((-(-h // stride) - 1) * stride + 3 - h, 0)
    pw = max((-(-w // stride) - 1) * stride + 3 - w, 0)
    return np.pad(x, ((0, 0), (pad_top, ph - pad_top), (pad_top, pw - pad_top), (0, 0)))


def _taps(x: np.ndarray, stride: int, pad_top: int) -> list[np.ndarray]:
    """The nine shifted views a 3x3 window reads, in (kh, kw) order."""
    out_h, out_w = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
    p = _same_pad(x, stride, pad_top)
    return [p[:, kh:kh + stride * out_h:stride, kw:kw + stride * out_w:stride] for kh in range(3) for kw in range(3)]


def run_body(chain: ConvChain, x: np.ndarray) -> np.ndarray:
    """The body in float64 numpy, NHWC, from the chain record alone."""
    f = chain.first
    y = sum(t @ f.weight[k] for k, t in enumerate(_taps(x.astype(np.float64), f.stride, f.pad_top)))
    y = np.clip(y + f.bias, f.act.low, f.act.high)
    for b in chain.blocks:
        d = sum(t * b.dw_weight[k] for k, t in enumerate(_taps(y, b.stride, b.pad_top)))
        d = np.clip(d + b.dw_bias, b.dw_act.low, b.dw_act.high)
        y = np.clip(d @ b.pw_weight + b.pw_bias, b.pw_act.low, b.pw_act.high)
    return y


@pytest.fixture(scope="module")
def graph(calibrated: BuildPaths) -> onnx.ModelProto:
    fp32, _ = ensure_engine_models(calibrated, log=lambda _: None)
    return fold_pad_channel(onnx.load(str(fp32)))


def test_the_body_is_mobilenet_v1(graph: onnx.ModelProto) -> None:
    chain = match_chain(graph)
    assert chain is not None
    assert len(chain.blocks) == 13
    assert [b.stride for b in chain.blocks] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    assert chain.first.weight.shape == (9, 4, 32) and not chain.first.weight[:, 3].any()  # pad channel: zero
    assert chain.out_shape() == (7, 7, 1024)
    assert [n.op_type for n in chain.tail][:2] == ["GlobalAveragePool", "Conv"]
    assert all((b.dw_act.low, b.pw_act.high) == (0.0, 6.0) for b in chain.blocks)


def test_the_body_computes_what_the_graph_computes(calibrated: BuildPaths, graph: onnx.ModelProto) -> None:
    chain = match_chain(graph)
    assert chain is not None
    dataset = resolve_dataset(calibrated)
    folder = dataset.preprocessed_dir(calibrated.preprocessed, VAL_LAYOUT)
    photo = np.load(folder / f"{read_map(dataset.val_map)[0].name}.npy")[None]
    probe = onnx.ModelProto.FromString(graph.SerializeToString())
    probe.graph.output.append(onnx.helper.make_tensor_value_info(chain.output, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run([chain.output], {graph.graph.input[0].name: photo})[0].transpose(0, 2, 3, 1)
    got = run_body(chain, photo)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4


def test_other_graphs_are_not_matched(calibrated: BuildPaths, graph: onnx.ModelProto) -> None:
    fp32, _ = ensure_engine_models(calibrated, log=lambda _: None)
    assert match_chain(onnx.load(str(fp32))) is None  # the pad-channel Slice still in place
    broken = onnx.ModelProto.FromString(graph.SerializeToString())
    clip = next(n for n in broken.graph.node if n.op_type == "Clip")
    clip.op_type = "Sigmoid"  # an activation the kernels do not have
    del clip.input[1:]
    assert match_chain(broken) is None
