"""The int8 Triton kernels against the exact integer reference (tests/int8_reference.py), and the
integer body of the real model against onnxruntime's INT8 QDQ model.

Runs in Triton's CPU interpreter (``TRITON_INTERPRET=1``) or on a CUDA GPU; skipped elsewhere
(CI has neither torch nor triton). Shapes are small: the interpreter runs each program in numpy.
Every kernel must match the reference bit for bit: the same int32 sums, fp32 requantisation and
round-to-nearest-even.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip("needs TRITON_INTERPRET=1 (Triton's CPU interpreter) or a CUDA GPU", allow_module_level=True)

import int8_reference as ref  # noqa: E402

from asyncbench.engines import triton_int8  # noqa: E402
from asyncbench.engines.triton_int8 import Int8Kernels  # noqa: E402
from asyncbench.model.calibrate import CalibrationCache, ensure_engine_models  # noqa: E402
from asyncbench.model.int8chain import Int8Chain, quantize_chain  # noqa: E402
from asyncbench.paths import BuildPaths  # noqa: E402

DEVICE = torch.device("cpu" if INTERPRETED else "cuda")


def _dev(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(DEVICE)


def _host(t: torch.Tensor) -> np.ndarray:
    return t.cpu().numpy()


def _samples(rng: np.random.Generator, n: int, h: int, w: int, c: int = 4) -> np.ndarray:
    return rng.integers(-128, 128, size=(n, h, w, c), dtype=np.int8)


def _activations(rng: np.random.Generator, n: int, h: int, w: int, c: int) -> np.ndarray:
    """int8 activations as a ReLU6 layer leaves them: 0..127, many zeros."""
    return np.maximum(rng.integers(-40, 128, size=(n, h, w, c)), 0).astype(np.int8)


@pytest.fixture(scope="module")
def small() -> Int8Chain:
    """Stem 4 -> 32 (stride 2), then blocks 32 -> 64 (s1), 64 -> 64 (s2), 64 -> 128 (s2)."""
    return ref.random_chain(np.random.default_rng(7), [32, 64, 64, 128], [2, 1, 2, 2])


@pytest.fixture(scope="module")
def kernels(small: Int8Chain) -> Int8Kernels:
    return Int8Kernels(small, DEVICE)


@pytest.mark.parametrize("hw", [(12, 12), (11, 9)])
def test_stem_is_exact(small: Int8Chain, kernels: Int8Kernels, hw: tuple[int, int]) -> None:
    x = _samples(np.random.default_rng(1), 2, *hw)
    got = _host(kernels.stem(_dev(x)))
    want = ref.stem(small, x)
    assert got.dtype == np.int8 and got.shape == want.shape
    assert np.array_equal(got, want), np.argwhere(got != want)[:5]
    assert 0 < (want > 0).mean() < 1  # the test exercises both sides of the clamp


@pytest.mark.parametrize("block_m", [16, 64])
def test_stem_tilings(small: Int8Chain, block_m: int) -> None:
    """Explicit block sizes (the engine's autotuner picks among such): masked tails of the last tile."""
    x = _samples(np.random.default_rng(2), 1, 10, 10)
    first, conv = small.chain.first, small.stem
    k_pad = triton_int8._stem_k_pad(4)
    w = np.zeros((conv.weight.shape[2], k_pad), np.int8)
    w[:, :36] = conv.weight.reshape(36, -1).T
    y = torch.empty((1, 5, 5, w.shape[0]), dtype=torch.int8, device=DEVICE)
    triton_int8.stem_kernel[(triton.cdiv(25, block_m),)](
        _dev(x), _dev(w), _dev(conv.bias), _dev(conv.multiplier), y, 25, 10, 10, 5, 5, float(conv.low),
        float(conv.high), CIN=4, COUT=w.shape[0], K_PAD=k_pad, STRIDE=first.stride, PAD_T=first.pad_top,
        PAD_L=first.pad_left, BLOCK_M=block_m)
    assert np.array_equal(_host(y), ref.stem(small, x))


@pytest.mark.parametrize("mac", [np.int32, np.float32])
@pytest.mark.parametrize("block", [0, 1])
def test_depthwise_is_exact(small: Int8Chain, kernels: Int8Kernels, block: int, mac: type) -> None:
    """Block 0 has stride 1 (pads 1, 1), block 1 stride 2 (pads 0, 0, TF SAME); tiles that span two
    images; products accumulated in int32 or float32 (the weights' type), the same bits."""
    b = small.chain.blocks[block]
    c = b.dw_weight.shape[1]
    x = _activations(np.random.default_rng(3), 2, 6, 6, c)
    dw = small.blocks[block][0]
    oh = -(-6 // b.stride)
    m = 2 * oh * oh
    for block_m, block_c in [(16, 32), (32, c)]:
        y = torch.empty((2, oh, oh, c), dtype=torch.int8, device=DEVICE)
        triton_int8.depthwise_kernel[(c // block_c * triton.cdiv(m, block_m),)](
            _dev(x), _dev(dw.weight.astype(mac)), _dev(dw.bias), _dev(dw.multiplier), y, m, 6, 6, oh, oh, c,
            float(dw.low), float(dw.high), STRIDE=b.stride, PAD_T=b.pad_top, PAD_L=b.pad_left,
            BLOCK_M=block_m, BLOCK_C=block_c)
        assert np.array_equal(_host(y), ref.depthwise(small, block, x)), (block_m, block_c)


@pytest.mark.parametrize(("block_m", "block_n", "block_k"), [(16, 64, 32), (32, 32, 64), (64, 128, 32)])
def test_pointwise_is_exact(small: Int8Chain, block_m: int, block_n: int, block_k: int) -> None:
    """The last block (64 -> 128): several K steps, several N tiles, a masked last M tile (M = 50)."""
    pw = small.blocks[2][1]
    c, cout = pw.weight.shape
    x = _activations(np.random.default_rng(4), 2, 5, 5, c)
    y = torch.empty((2, 5, 5, cout), dtype=torch.int8, device=DEVICE)
    triton_int8.pointwise_kernel[(cout // block_n * triton.cdiv(50, block_m),)](
        _dev(x), _dev(pw.weight.T), _dev(pw.bias), _dev(pw.multiplier), y, 50, c, cout, float(pw.low), float(pw.high),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    want = ref.pointwise(small, 2, x)
    assert 0 < (want == pw.high).mean() < 0.5 and 0 < (want == 0).mean() < 0.9
    assert np.array_equal(_host(y), want)


@pytest.mark.parametrize(("block", "tiles"), [(0, (16, 32, 32)), (1, (32, 64, 32)), (2, (16, 64, 64))])
def test_fused_block_is_exact(small: Int8Chain, block: int, tiles: tuple[int, int, int]) -> None:
    """The depthwise prologue requantised to int8 in registers as the A tile: same bits as the split form."""
    b = small.chain.blocks[block]
    dw, pw = small.blocks[block]
    c, cout = pw.weight.shape
    x = _activations(np.random.default_rng(5), 2, 7, 7, c)
    oh = -(-7 // b.stride)
    m = 2 * oh * oh
    block_m, block_n, block_k = tiles
    y = torch.empty((2, oh, oh, cout), dtype=torch.int8, device=DEVICE)
    triton_int8.separable_kernel[(cout // block_n * triton.cdiv(m, block_m),)](
        _dev(x), _dev(dw.weight.astype(np.int32)), _dev(dw.bias), _dev(dw.multiplier), _dev(pw.weight.T),
        _dev(pw.bias), _dev(pw.multiplier), y, m, 7, 7, oh, oh, c, cout, float(dw.low), float(dw.high),
        float(pw.low), float(pw.high), STRIDE=b.stride, PAD_T=b.pad_top, PAD_L=b.pad_left,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    assert np.array_equal(_host(y), ref.pointwise(small, block, ref.depthwise(small, block, x)))


@pytest.mark.parametrize("forms", [(False, False, False), (True, True, True), (True, False, True)])
def test_small_chain_end_to_end(small: Int8Chain, kernels: Int8Kernels, forms: tuple[bool, ...]) -> None:
    """The whole random body through the engine's launches (autotuned wrappers), fused, split and mixed."""
    x = _samples(np.random.default_rng(6), 2, 12, 12)
    got = _host(kernels.run(_dev(x), forms))
    want = ref.body(small, x)
    assert got.shape == want.shape == (2, 2, 2, 128)
    assert np.array_equal(got, want)
    assert kernels.out_scale == small.blocks[-1][1].out_scale


def test_real_model_body_matches_onnxruntime(calibrated: BuildPaths) -> None:
    """The real weights and cache: the kernels' int8 body output equals onnxruntime's signed INT8 model's
    on two real photos at 64 x 64 (the body is fully convolutional). The narrow blocks run fused, the
    wide ones split (the fused form is slow in the interpreter where it recomputes the depthwise layer)."""
    fp32, _ = ensure_engine_models(calibrated, log=lambda _: None)
    q = quantize_chain(onnx.load(str(fp32)), CalibrationCache.load(calibrated.calibration_cache))
    assert q is not None and triton_int8.supported(q) is None
    x = ref.reduced_photos(calibrated)
    forms = tuple(pw.weight.shape[1] > 128 for _, pw in q.blocks)
    got = _host(Int8Kernels(q, DEVICE).run(_dev(x), forms)).astype(np.int32)
    want = ref.signed_body(calibrated, q, x)
    assert np.array_equal(got, want), f"{(got != want).mean():.2%} of the outputs differ"


@pytest.mark.parametrize("hw", [(2, 2), (7, 7)])
def test_pool_is_the_dequantized_mean(kernels: Int8Kernels, hw: tuple[int, int]) -> None:
    """The tail's global average pool over the int8 map: int32 sums, times the map's scale over h * w."""
    x = _activations(np.random.default_rng(8), 3, *hw, 128)
    got = _host(kernels.pool(_dev(x)))
    want = x.astype(np.int64).sum(axis=(1, 2)).astype(np.float32) * np.float32(kernels.out_scale / (hw[0] * hw[1]))
    assert got.shape == (3, 128, 1, 1)
    np.testing.assert_allclose(got[:, :, 0, 0], want, rtol=1e-6)
