"""Triton kernels for the body in integers (asyncbench.model.int8chain): TensorRT's INT8 recipe, NHWC.

Why: int8 activations halve the body's memory traffic against fp16 (memory traffic bounds this
network on an H200), and ``tl.dot`` on int8 operands runs on the int8 tensor cores. Every layer
reads int8 NHWC and writes int8 NHWC; between them nothing is float in memory:
- stem: an implicit GEMM over the int8 NHW4 sample, K = 9 taps x 4 channels padded to 64
  (the pad channel's weights are zero), int32 accumulation;
- depthwise 3x3: int8 loads, int32 multiply-accumulate (exact), requantised to int8;
- pointwise 1x1: int8 x int8 -> int32 GEMM (``tl.dot``), weights stored K-major (the int8
  tensor-core operand layout);
- every epilogue: ``clamp(rint((acc + b_q) * m), lo, hi)`` with the fp32 multiplier ``m`` per
  output channel, round-to-nearest-even, the activation as the int8 clamp.
Each separable block runs in one of two forms, chosen per batch size by timing both as CUDA
graphs on first use (as asyncbench.engines.triton_chain does):
- fused: the depthwise layer computed in registers, requantised to int8 there and fed as the A
  tile of the pointwise GEMM (its output never reaches memory);
- split: the depthwise kernel writes int8, then the pointwise GEMM kernel reads it (wins on wide
  blocks, where the fused form recomputes the depthwise layer for each tile of output channels).
Block sizes are tuned per layer shape and batch (triton.autotune, cached on disk); only block
shapes that tile the channel counts exactly are kept. Triton's interpreter (TRITON_INTERPRET=1)
cannot time, so there the first fitting block shape runs.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

from asyncbench.engines.triton_chain import _pixels
from asyncbench.model.int8chain import Int8Chain, QuantConv

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def _fitting(configs: list[triton.Config], fits: Any) -> list[triton.Config]:
    """The configs whose blocks tile the layer; one of them when nothing can be timed."""
    kept = [c for c in configs if fits(c.kwargs)] or configs[:1]
    return kept[:1] if _INTERPRETED else kept


def _prune_gemm(configs: list[triton.Config], named_args: dict[str, Any], **_: Any) -> list[triton.Config]:
    """Keep block shapes that tile the channels exactly (the kernels mask pixels only)."""
    return _fitting(configs, lambda k: named_args["COUT"] % k["BLOCK_N"] == 0 and named_args["C"] % k["BLOCK_K"] == 0)


def _prune_depthwise(configs: list[triton.Config], named_args: dict[str, Any], **_: Any) -> list[triton.Config]:
    return _fitting(configs, lambda k: named_args["C"] % k["BLOCK_C"] == 0)


def _prune_stem(configs: list[triton.Config], named_args: dict[str, Any], **_: Any) -> list[triton.Config]:
    return _fitting(configs, lambda k: True)


@triton.jit
def _requant(acc, bias, mult, lo, hi):
    """int8 clamp(rint((acc + bias) * mult), lo, hi) per output channel (bias, mult: the tile's columns).

    Adding and subtracting 1.5 * 2**23 rounds an fp32 value below 2**22 in magnitude to the
    nearest integer, ties to even, in plain fp32 arithmetic; the clamp to int8's range first
    keeps it in range (and the bounds are integers, so clamping before rounding is the same)."""
    v = (acc + bias[None, :]).to(tl.float32) * mult[None, :]
    v = tl.minimum(tl.maximum(v, lo), hi)
    return ((v + 12582912.0) - 12582912.0).to(tl.int8)


@triton.jit
def tap_origin(x_ptr, start_m, H, W, OH, OW, C, STRIDE: tl.constexpr, PAD_T: tl.constexpr, PAD_L: tl.constexpr,
               BLOCK_M: tl.constexpr):
    """Where the 3x3 windows of output pixels ``start_m`` + [0, BLOCK_M) start, with hoisted 32-bit arithmetic:
    (the 64-bit base of the first pixel's image, each window's tap (0, 0) input pixel as an int32 offset
    from it, the window's first input row, its first input column).

    So each tap (tap_load) costs one add and one masked load; a tile spans a few images at most, so
    the offsets stay far inside int32."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    rest = offs_m // OW
    first = start_m // (OH * OW)
    ih0 = rest % OH * STRIDE - PAD_T
    iw0 = offs_m % OW * STRIDE - PAD_L
    pix0 = ((rest // OH - first) * H + ih0) * W + iw0
    return x_ptr + first.to(tl.int64) * (H * W * C), pix0, ih0, iw0


@triton.jit
def tap_load(x_img, pix0, ih0, iw0, mask_m, offs_c, H, W, C, KH: tl.constexpr, KW: tl.constexpr):
    """The (BLOCK_M, channels) int8 input under tap (KH, KW) of each window from tap_origin; zero in the pads."""
    ih = ih0 + KH
    iw = iw0 + KW
    ok = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    rows = (pix0 + (KH * W + KW)) * C
    return tl.load(x_img + rows[:, None] + offs_c[None, :], mask=ok[:, None], other=0)


@triton.jit
def store_tile(y_ptr, start_m, C, offs_c, y, mask_m, BLOCK_M: tl.constexpr):
    """Store an int8 NHWC tile of output pixels ``start_m`` + [0, BLOCK_M): one 64-bit base, 32-bit offsets."""
    tile = y_ptr + start_m.to(tl.int64) * C
    tl.store(tile + (tl.arange(0, BLOCK_M) * C)[:, None] + offs_c[None, :], y, mask=mask_m[:, None])


@triton.jit
def _depthwise_tile(x_ptr, w_ptr, b_ptr, m_ptr, offs_c, start_m, mask_m, H, W, OH, OW, C, lo, hi,
                    STRIDE: tl.constexpr, PAD_T: tl.constexpr, PAD_L: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """The requantised int8 depthwise 3x3 of output pixels ``start_m`` + [0, BLOCK_M) and these channels.

    The products accumulate in the weights' type: the engine's int32 weights, or float32, which is
    exact here (|sum| <= 9 * 127 * 127 < 2**24) but measured slower on the H200 (the int8 -> float
    conversions cost more than the wider lanes gain; benchmarks/int8_layers.py times both)."""
    x_img, pix0, ih0, iw0 = tap_origin(x_ptr, start_m, H, W, OH, OW, C, STRIDE, PAD_T, PAD_L, BLOCK_M)
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=w_ptr.dtype.element_ty)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            xv = tap_load(x_img, pix0, ih0, iw0, mask_m, offs_c, H, W, C, kh, kw)
            wv = tl.load(w_ptr + (kh * 3 + kw) * C + offs_c)
            acc += xv.to(wv.dtype) * wv[None, :]
    return _requant(acc.to(tl.int32), tl.load(b_ptr + offs_c), tl.load(m_ptr + offs_c), lo, hi)


_GEMM_CONFIGS = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
                 for m, n, k, w, s in [(128, 64, 32, 4, 4), (128, 64, 64, 4, 3), (128, 128, 64, 8, 3),
                                       (128, 128, 128, 8, 3), (256, 64, 64, 8, 3), (64, 128, 64, 4, 3),
                                       (128, 256, 64, 8, 3), (64, 256, 128, 8, 2), (256, 128, 64, 8, 3)]]
_FUSED_CONFIGS = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
                  for m, n, k, w, s in [(64, 64, 32, 4, 2), (128, 64, 32, 4, 2), (64, 128, 32, 4, 2),
                                        (128, 128, 32, 8, 2), (64, 128, 64, 4, 2), (128, 128, 64, 8, 2),
                                        (64, 256, 32, 8, 2), (64, 256, 64, 8, 2), (128, 256, 32, 8, 2)]]


@triton.jit
def separable_kernel(x_ptr, dw_w_ptr, dw_b_ptr, dw_m_ptr, pw_w_ptr, pw_b_ptr, pw_m_ptr, y_ptr,
                      M, H, W, OH, OW, C, COUT, dw_lo, dw_hi, pw_lo, pw_hi,
                      STRIDE: tl.constexpr, PAD_T: tl.constexpr, PAD_L: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One int8 output tile of pointwise(depthwise3x3(x)): the depthwise int8 tile is the GEMM's A operand."""
    tiles_n = COUT // BLOCK_N
    pid_n = tl.program_id(0) % tiles_n  # the fast index: tiles sharing input pixels run together (L2 reuse)
    pid_m = tl.program_id(0) // tiles_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, C, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = _depthwise_tile(x_ptr, dw_w_ptr, dw_b_ptr, dw_m_ptr, offs_k, pid_m * BLOCK_M, mask_m, H, W, OH, OW, C,
                            dw_lo, dw_hi, STRIDE, PAD_T, PAD_L, BLOCK_M, BLOCK_K)
        b = tl.load(pw_w_ptr + offs_n[None, :] * C + offs_k[:, None])  # (BLOCK_K, BLOCK_N) of K-major weights
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    y = _requant(acc, tl.load(pw_b_ptr + offs_n), tl.load(pw_m_ptr + offs_n), pw_lo, pw_hi)
    tl.store(y_ptr + offs_m.to(tl.int64)[:, None] * COUT + offs_n[None, :], y, mask=mask_m[:, None])


@triton.jit
def pointwise_kernel(x_ptr, w_ptr, b_ptr, m_ptr, y_ptr, M, C, COUT, lo, hi,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One int8 output tile of the 1x1 convolution: (M, C) int8 x (C, COUT) int8 -> int32, requantised."""
    tiles_n = COUT // BLOCK_N
    pid_n = tl.program_id(0) % tiles_n
    pid_m = tl.program_id(0) // tiles_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = x_ptr + offs_m.to(tl.int64)[:, None] * C
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, C, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(rows + offs_k[None, :], mask=mask_m[:, None], other=0)
        b = tl.load(w_ptr + offs_n[None, :] * C + offs_k[:, None])
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    y = _requant(acc, tl.load(b_ptr + offs_n), tl.load(m_ptr + offs_n), lo, hi)
    tl.store(y_ptr + offs_m.to(tl.int64)[:, None] * COUT + offs_n[None, :], y, mask=mask_m[:, None])


@triton.jit
def depthwise_kernel(x_ptr, w_ptr, b_ptr, m_ptr, y_ptr, M, H, W, OH, OW, C, lo, hi,
                      STRIDE: tl.constexpr, PAD_T: tl.constexpr, PAD_L: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """BLOCK_M output pixels x BLOCK_C channels of the int8 depthwise 3x3, int8 NHWC out."""
    tiles_c = C // BLOCK_C
    pid_c = tl.program_id(0) % tiles_c
    pid_m = tl.program_id(0) // tiles_c
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    d = _depthwise_tile(x_ptr, w_ptr, b_ptr, m_ptr, offs_c, pid_m * BLOCK_M, mask_m, H, W, OH, OW, C, lo, hi,
                        STRIDE, PAD_T, PAD_L, BLOCK_M, BLOCK_C)
    store_tile(y_ptr, pid_m * BLOCK_M, C, offs_c, d, mask_m, BLOCK_M)


@triton.jit
def stem_kernel(x_ptr, w_ptr, b_ptr, m_ptr, y_ptr, M, H, W, OH, OW, lo, hi,
                 CIN: tl.constexpr, COUT: tl.constexpr, K_PAD: tl.constexpr,
                 STRIDE: tl.constexpr, PAD_T: tl.constexpr, PAD_L: tl.constexpr, BLOCK_M: tl.constexpr):
    """BLOCK_M output pixels of the stem as an implicit GEMM: the A tile gathers the 9 taps x CIN
    channels of each pixel straight from the int8 sample (K padded to K_PAD with zeros)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    n, oh, ow = _pixels(offs_m, OH, OW)
    k = tl.arange(0, K_PAD)
    tap = k // CIN
    ih = (oh * STRIDE - PAD_T)[:, None] + (tap // 3)[None, :]
    iw = (ow * STRIDE - PAD_L)[:, None] + (tap % 3)[None, :]
    ok = mask_m[:, None] & (tap < 9)[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    a = tl.load(x_ptr + ((n[:, None] * H + ih) * W + iw) * CIN + (k % CIN)[None, :], mask=ok, other=0)
    offs_o = tl.arange(0, COUT)
    b = tl.load(w_ptr + offs_o[None, :] * K_PAD + k[:, None])  # (K_PAD, COUT) of K-major weights
    acc = tl.dot(a, b, tl.zeros((BLOCK_M, COUT), dtype=tl.int32), out_dtype=tl.int32)
    y = _requant(acc, tl.load(b_ptr + offs_o), tl.load(m_ptr + offs_o), lo, hi)
    tl.store(y_ptr + offs_m.to(tl.int64)[:, None] * COUT + offs_o[None, :], y, mask=mask_m[:, None])


@triton.jit
def pool_kernel(x_ptr, y_ptr, HW, C, scale, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """BLOCK_C channels of one image's global average pool over its int8 NHWC map, dequantized to fp32:
    the int32 sum times ``scale`` (the map's scale over HW), so the tail reads C floats, not the map."""
    n = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    hw = tl.arange(0, BLOCK_HW)
    x = tl.load(x_ptr + n * HW * C + (hw * C)[:, None] + offs_c[None, :], mask=(hw < HW)[:, None], other=0)
    tl.store(y_ptr + n * C + offs_c, tl.sum(x.to(tl.int32), axis=0).to(tl.float32) * scale)


def _quick_bench(fn: Any, quantiles: Any) -> Any:
    """Times a block shape over 5 ms of warm-up and 25 ms of repeats (Triton's default is 25 / 100 ms):
    a first run tunes every layer shape at every bucket, and the ranking holds at these lengths."""
    return triton.testing.do_bench(fn, warmup=5, rep=25, quantiles=quantiles)


# The engine launches these autotuned wrappers; the plain kernels above take explicit block sizes.
def tuned(configs: list[triton.Config], key: list[str], prune: Any, kernel: Any) -> Any:
    """``kernel`` autotuned over the ``configs`` that ``prune`` keeps, timed by _quick_bench, cached on disk."""
    return triton.autotune(configs=configs, key=key, cache_results=True, do_bench=_quick_bench,
                           prune_configs_by={"early_config_prune": prune})(kernel)


_separable = tuned(_FUSED_CONFIGS, ["M", "C", "COUT", "STRIDE"], _prune_gemm, separable_kernel)
_pointwise = tuned(_GEMM_CONFIGS, ["M", "C", "COUT"], _prune_gemm, pointwise_kernel)
DEPTHWISE_CONFIGS = [triton.Config({"BLOCK_M": m, "BLOCK_C": c}, num_warps=w)
                     for m, c, w in [(64, 32, 4), (128, 32, 4), (64, 64, 4), (32, 128, 4), (128, 64, 8), (64, 128, 8)]]
_depthwise = tuned(DEPTHWISE_CONFIGS, ["M", "C", "STRIDE"], _prune_depthwise, depthwise_kernel)
_stem = tuned([triton.Config({"BLOCK_M": m}, num_warps=w, num_stages=s)
                for m, w, s in [(128, 4, 2), (64, 4, 2), (256, 8, 2), (128, 8, 3)]],
               ["M"], _prune_stem, stem_kernel)


def _stem_k_pad(cin: int) -> int:
    """K of the stem's implicit GEMM: 9 * cin rounded up to a power of two, at least 32 (int8 MMA's K)."""
    return max(32, 1 << (9 * cin - 1).bit_length())


def supported(q: Int8Chain) -> str | None:
    """Why these kernels cannot run ``q`` (None when they can)."""
    cout = q.stem.weight.shape[2]
    if cout < 16 or cout & (cout - 1):
        return f"the stem has {cout} output channels (the int8 stem needs a power of two, at least 16)"
    for i, (_, pw) in enumerate(q.blocks):
        c, co = pw.weight.shape
        if c % 32 or co % 64:
            return f"separable block {i + 1} has {c} -> {co} channels (the int8 kernels need multiples of 32 and 64)"
    return None


class _Layer:
    """One QuantConv's tensors on the device, in the layouts the kernels read."""

    def __init__(self, conv: QuantConv, weight: np.ndarray, device: torch.device) -> None:
        self.weight = torch.from_numpy(np.ascontiguousarray(weight)).to(device)
        self.bias = torch.from_numpy(conv.bias).to(device)
        self.mult = torch.from_numpy(conv.multiplier).to(device)
        self.low, self.high = float(conv.low), float(conv.high)


class Int8Kernels:
    """The integer body's weights on one device and the launches that run it (capturable in a CUDA graph)."""

    def __init__(self, q: Int8Chain, device: torch.device) -> None:
        first = q.chain.first
        w = q.stem.weight  # (9, cin, cout)
        self._cin = w.shape[1]
        k_pad = _stem_k_pad(self._cin)
        stem_w = np.zeros((w.shape[2], k_pad), np.int8)  # (cout, K): K-major
        stem_w[:, :9 * self._cin] = w.reshape(9 * self._cin, -1).T
        self._stem = _Layer(q.stem, stem_w, device)
        self._stem_geometry = (first.stride, first.pad_top, first.pad_left, k_pad)
        self._blocks = [(_Layer(dw, dw.weight.astype(np.int32), device), _Layer(pw, pw.weight.T, device), b)
                        for (dw, pw), b in zip(q.blocks, q.chain.blocks, strict=True)]
        self.out_scale = q.out_scale
        self.forms: dict[int, tuple[bool, ...]] = {}  # batch size -> per block: split (else fused)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The stem's int8 NHWC output for an int8 NHWC batch."""
        n, h, w, cin = x.shape
        stride, pad_t, pad_l, k_pad = self._stem_geometry
        layer = self._stem
        oh, ow = -(-h // stride), -(-w // stride)
        cout = layer.weight.shape[0]
        y = torch.empty((n, oh, ow, cout), device=x.device, dtype=torch.int8)
        m = n * oh * ow
        _stem[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),)](
            x, layer.weight, layer.bias, layer.mult, y, m, h, w, oh, ow, layer.low, layer.high,
            CIN=cin, COUT=cout, K_PAD=k_pad, STRIDE=stride, PAD_T=pad_t, PAD_L=pad_l)
        return y

    def block(self, i: int, x: torch.Tensor, split: bool) -> torch.Tensor:
        """Separable block ``i`` on int8 NHWC ``x``, fused or split: its int8 NHWC output."""
        dw, pw, block = self._blocks[i]
        n, h, w, c = x.shape
        oh, ow = -(-h // block.stride), -(-w // block.stride)
        cout = pw.weight.shape[0]
        m = n * oh * ow
        geometry = {"STRIDE": block.stride, "PAD_T": block.pad_top, "PAD_L": block.pad_left}
        y = torch.empty((n, oh, ow, cout), device=x.device, dtype=torch.int8)
        if split:
            d = torch.empty((n, oh, ow, c), device=x.device, dtype=torch.int8)
            _depthwise[lambda meta: (c // meta["BLOCK_C"] * triton.cdiv(m, meta["BLOCK_M"]),)](
                x, dw.weight, dw.bias, dw.mult, d, m, h, w, oh, ow, c, dw.low, dw.high, **geometry)
            _pointwise[lambda meta: (cout // meta["BLOCK_N"] * triton.cdiv(m, meta["BLOCK_M"]),)](
                d, pw.weight, pw.bias, pw.mult, y, m, c, cout, pw.low, pw.high)
            return y
        _separable[lambda meta: (cout // meta["BLOCK_N"] * triton.cdiv(m, meta["BLOCK_M"]),)](
            x, dw.weight, dw.bias, dw.mult, pw.weight, pw.bias, pw.mult, y, m, h, w, oh, ow, c, cout,
            dw.low, dw.high, pw.low, pw.high, **geometry)
        return y

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The fp32 (n, c, 1, 1) global average of the body's int8 NHWC output, dequantized."""
        n, h, w, c = x.shape
        y = torch.empty((n, c, 1, 1), device=x.device, dtype=torch.float32)
        pool_kernel[(n, c // 64)](x, y, h * w, c, self.out_scale / (h * w),  # c: a multiple of 64 (supported)
                                  BLOCK_HW=triton.next_power_of_2(h * w), BLOCK_C=64)
        return y

    def run(self, x: torch.Tensor, forms: tuple[bool, ...]) -> torch.Tensor:
        """int8 NHWC body output for an int8 NHWC batch, each block in the given form (True: split)."""
        y = self.stem(x)
        for i, split in enumerate(forms):
            y = self.block(i, y, split)
        return y

    def _pick_forms(self, x: torch.Tensor) -> tuple[bool, ...]:
        """Per block, whether the split form is faster at this batch size, each form timed as a
        CUDA graph (replay, so launch costs do not count) on this batch's own activations."""
        forms: list[bool] = []
        y = self.stem(x)
        for i in range(len(self._blocks)):
            seconds = []
            for split in (False, True):
                self.block(i, y, split)  # tunes block sizes outside the capture
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    self.block(i, y, split)
                graph.replay()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(5):
                    graph.replay()
                end.record()
                end.synchronize()
                seconds.append(start.elapsed_time(end))
                del graph
            forms.append(seconds[1] < seconds[0])
            y = self.block(i, y, forms[-1])
        return tuple(forms)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """int8 (n, h, w, c) body output (scale ``out_scale``) for an int8 (n, H, W, cin) batch.

        The first call at a batch size picks each block's form (never call it first inside a
        CUDA graph capture: the runtime's warm-up calls come first)."""
        n = x.shape[0]
        if n not in self.forms:
            self.forms[n] = self._pick_forms(x)
        return self.run(x, self.forms[n])
