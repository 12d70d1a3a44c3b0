"""Triton kernels for a depthwise-separable body (asyncbench.model.convchain), NHWC fp16.

Why: node by node, a MobileNet body is 27 convolutions and 27 clamps, each writing its whole
activation to device memory and reading it back; the depthwise ones are also poor cuDNN cases.
Here the stem reads the int8 input directly (cast and scale folded into its weights). Each
separable block then runs in one of two forms:
- fused: the depthwise 3x3 + clamp is computed in registers as the prologue of the pointwise
  GEMM that consumes it, bias and clamp in the GEMM's epilogue, so the block reads its input
  once and writes its output once (wins on narrow blocks, where the GEMM is cheap);
- split: a depthwise kernel, then the pointwise layer as one cuBLAS GEMM with the bias in its
  epilogue (wins on wide blocks, where the fused kernel recomputes the depthwise part for every
  tile of output channels). Its clamp is not a pass of its own: the next kernel applies it to
  what it loads (the body's last clamp runs on the small final activation).
The form of each block is chosen per batch size by timing both (each as a CUDA graph) on first
use; benchmarks/chain_layers.py prints both. Block sizes are tuned per layer shape and batch on
first use (triton.autotune); those choices and the compiled kernels are cached on disk under
Triton's cache folder, so later runs start fast.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

from asyncbench.model.convchain import Activation, ConvChain


def _prune_separable(configs: list[triton.Config], named_args: dict[str, Any], **_: Any) -> list[triton.Config]:
    """Keep block shapes that tile the layer exactly (the kernels do not mask channels)."""
    kept = [c for c in configs
            if named_args["COUT"] % c.kwargs["BLOCK_N"] == 0 and named_args["C"] % c.kwargs["BLOCK_K"] == 0]
    return kept or configs[:1]


def _prune_depthwise(configs: list[triton.Config], named_args: dict[str, Any], **_: Any) -> list[triton.Config]:
    kept = [c for c in configs if named_args["C"] % c.kwargs["BLOCK_C"] == 0]
    return kept or configs[:1]


@triton.jit
def _pixels(offs_m, OH, OW):
    """(image as int64, output row, output column) of flat NHWC output-pixel indices."""
    rest = offs_m // OW
    return (rest // OH).to(tl.int64), rest % OH, offs_m % OW


@triton.jit
def _depthwise_tile(x_ptr, w_ptr, b_ptr, offs_c, n, oh, ow, mask_m, H, W, C, in_lo, in_hi, lo, hi,
                    STRIDE: tl.constexpr, PAD_T: tl.constexpr, PAD_L: tl.constexpr, CLAMP_IN: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """clamp(depthwise3x3(x) + bias) for these output pixels and channels, float32 in registers."""
    d = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for kh in tl.static_range(3):
        ih = oh * STRIDE - PAD_T + kh
        row_ok = mask_m & (ih >= 0) & (ih < H)
        row = (n * H + ih) * W
        for kw in tl.static_range(3):
            iw = ow * STRIDE - PAD_L + kw
            ok = row_ok & (iw >= 0) & (iw < W)
            xv = tl.load(x_ptr + (row + iw)[:, None] * C + offs_c[None, :], mask=ok[:, None], other=0.0)
            xv = xv.to(tl.float32)
            if CLAMP_IN:  # the previous layer's activation, deferred to here (zero padding stays zero)
                xv = tl.where(ok[:, None], tl.minimum(tl.maximum(xv, in_lo), in_hi), 0.0)
            d += xv * tl.load(w_ptr + (kh * 3 + kw) * C + offs_c)[None, :]
    d += tl.load(b_ptr + offs_c)[None, :]
    return tl.minimum(tl.maximum(d, lo), hi)


@triton.autotune(
    configs=[triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=2)
             for m, n, k, w in [(64, 64, 32, 4), (128, 64, 32, 4), (128, 64, 64, 4), (64, 128, 32, 4),
                                (128, 128, 32, 8), (128, 128, 64, 8), (256, 64, 32, 8)]],
    key=["M", "C", "COUT", "STRIDE"], prune_configs_by={"early_config_prune": _prune_separable}, cache_results=True)
@triton.jit
def _separable(x_ptr, dw_w_ptr, dw_b_ptr, pw_w_ptr, pw_b_ptr, y_ptr,
               M, H, W, OH, OW, C, COUT, in_lo, in_hi, dw_lo, dw_hi, pw_lo, pw_hi,
               STRIDE: tl.constexpr, PAD_T: tl.constexpr, PAD_L: tl.constexpr, CLAMP_IN: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One output tile of pointwise(clamp(depthwise3x3(x))): (BLOCK_M pixels) x (BLOCK_N channels)."""
    tiles_n = COUT // BLOCK_N
    pid_n = tl.program_id(0) % tiles_n  # the fast index: tiles sharing input pixels run together (L2 reuse)
    pid_m = tl.program_id(0) // tiles_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    n, oh, ow = _pixels(offs_m, OH, OW)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        d = _depthwise_tile(x_ptr, dw_w_ptr, dw_b_ptr, offs_k, n, oh, ow, mask_m, H, W, C, in_lo, in_hi,
                            dw_lo, dw_hi, STRIDE, PAD_T, PAD_L, CLAMP_IN, BLOCK_M, BLOCK_K)
        b = tl.load(pw_w_ptr + offs_k[:, None] * COUT + offs_n[None, :])
        acc = tl.dot(d.to(tl.float16), b, acc)
    acc += tl.load(pw_b_ptr + offs_n)[None, :]
    acc = tl.minimum(tl.maximum(acc, pw_lo), pw_hi)
    out = y_ptr + offs_m.to(tl.int64)[:, None] * COUT + offs_n[None, :]
    tl.store(out, acc.to(tl.float16), mask=mask_m[:, None])


@triton.autotune(
    configs=[triton.Config({"BLOCK_M": m, "BLOCK_C": c}, num_warps=w)
             for m, c, w in [(64, 32, 4), (128, 32, 4), (64, 64, 4), (32, 128, 4), (128, 64, 8), (64, 128, 8)]],
    key=["M", "C", "STRIDE"], prune_configs_by={"early_config_prune": _prune_depthwise}, cache_results=True)
@triton.jit
def _depthwise(x_ptr, w_ptr, b_ptr, y_ptr, M, H, W, OH, OW, C, in_lo, in_hi, lo, hi,
               STRIDE: tl.constexpr, PAD_T: tl.constexpr, PAD_L: tl.constexpr, CLAMP_IN: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """clamp(depthwise3x3(x) + bias) for BLOCK_M output pixels x BLOCK_C channels, fp16 NHWC."""
    tiles_c = C // BLOCK_C
    pid_c = tl.program_id(0) % tiles_c
    pid_m = tl.program_id(0) // tiles_c
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    n, oh, ow = _pixels(offs_m, OH, OW)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    d = _depthwise_tile(x_ptr, w_ptr, b_ptr, offs_c, n, oh, ow, mask_m, H, W, C, in_lo, in_hi, lo, hi,
                        STRIDE, PAD_T, PAD_L, CLAMP_IN, BLOCK_M, BLOCK_C)
    tl.store(y_ptr + offs_m.to(tl.int64)[:, None] * C + offs_c[None, :], d.to(tl.float16), mask=mask_m[:, None])


@triton.autotune(configs=[triton.Config({"BLOCK_M": m}, num_warps=w) for m, w in [(64, 4), (128, 4), (256, 8)]],
                 key=["M"], cache_results=True)
@triton.jit
def _stem(x_ptr, w_ptr, b_ptr, y_ptr, M, H, W, OH, OW, lo, hi,
          CIN: tl.constexpr, COUT: tl.constexpr, STRIDE: tl.constexpr, PAD_T: tl.constexpr, PAD_L: tl.constexpr,
          BLOCK_M: tl.constexpr):
    """clamp(conv3x3(int8 NHWC x) + bias) for BLOCK_M output pixels, all COUT channels, fp16 out."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    n, oh, ow = _pixels(offs_m, OH, OW)
    offs_o = tl.arange(0, COUT)
    acc = tl.zeros((BLOCK_M, COUT), dtype=tl.float32)
    for kh in tl.static_range(3):
        ih = oh * STRIDE - PAD_T + kh
        row_ok = mask_m & (ih >= 0) & (ih < H)
        for kw in tl.static_range(3):
            iw = ow * STRIDE - PAD_L + kw
            ok = row_ok & (iw >= 0) & (iw < W)
            pixel = x_ptr + ((n * H + ih) * W + iw) * CIN
            for c in tl.static_range(CIN):  # one outer product per input channel
                xv = tl.load(pixel + c, mask=ok, other=0).to(tl.float32)
                wv = tl.load(w_ptr + ((kh * 3 + kw) * CIN + c) * COUT + offs_o)
                acc += xv[:, None] * wv[None, :]
    acc += tl.load(b_ptr + offs_o)[None, :]
    acc = tl.minimum(tl.maximum(acc, lo), hi)
    out = y_ptr + offs_m.to(tl.int64)[:, None] * COUT + offs_o[None, :]
    tl.store(out, acc.to(tl.float16), mask=mask_m[:, None])


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def supported(chain: ConvChain) -> str | None:
    """Why these kernels cannot run ``chain`` (None when they can)."""
    cout = chain.first.weight.shape[2]
    if not _power_of_two(cout):
        return f"the stem has {cout} output channels (the fused stem needs a power of two)"
    for i, block in enumerate(chain.blocks):
        c, co = block.pw_weight.shape
        if c % 32 or co % 64:
            return f"separable block {i + 1} has {c} -> {co} channels (the kernels need multiples of 32 and 64)"
    return None


_NO_CLAMP = Activation(float("-inf"), float("inf"))


class ChainKernels:
    """The body's weights on one device and the launches that run it (capturable in a CUDA graph)."""

    def __init__(self, chain: ConvChain, device: torch.device) -> None:
        def put(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

        first = chain.first
        self._stem = (put(first.weight, torch.float32), put(first.bias, torch.float32), first)
        self._blocks = [(put(b.dw_weight, torch.float32), put(b.dw_bias, torch.float32),
                         put(b.pw_weight, torch.float16), put(b.pw_bias, torch.float32),
                         put(b.pw_bias, torch.float16), b) for b in chain.blocks]
        self.forms: dict[int, tuple[bool, ...]] = {}  # batch size -> per block: split (else fused)

    def _pick_forms(self, x: torch.Tensor) -> tuple[bool, ...]:
        """Per block, whether the split form is faster at this batch size, each form timed as a
        CUDA graph (replay, so launch costs do not count) on this batch's own activations."""
        forms: list[bool] = []
        y, pending = self.stem(x), None
        for i in range(len(self._blocks)):
            seconds = []
            for split in (False, True):
                self.block(i, y, pending, split)  # tunes block sizes outside the capture
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    self.block(i, y, pending, split)
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
            y, pending = self.block(i, y, pending, forms[-1])
        return tuple(forms)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The stem's fp16 NHWC output (activation applied) for an int8 NHWC batch."""
        n, h, w, cin = x.shape
        weight, bias, first = self._stem
        oh, ow = -(-h // first.stride), -(-w // first.stride)
        cout = weight.shape[2]
        y = torch.empty((n, oh, ow, cout), device=x.device, dtype=torch.float16)
        m = n * oh * ow
        _stem[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),)](
            x, weight, bias, y, m, h, w, oh, ow, first.act.low, first.act.high,
            CIN=cin, COUT=cout, STRIDE=first.stride, PAD_T=first.pad_top, PAD_L=first.pad_left)
        return y

    def block(self, i: int, x: torch.Tensor, pending: Activation | None = None,
              split: bool = False) -> tuple[torch.Tensor, Activation | None]:
        """Block ``i`` on ``x`` (whose activation ``pending`` is still to apply) in the split or
        fused form: its output, and the activation still to apply to that output (None: applied)."""
        dw_w, dw_b, pw_w, pw_b, pw_b16, block = self._blocks[i]
        n, h, w, _ = x.shape
        oh, ow = -(-h // block.stride), -(-w // block.stride)
        c, cout = pw_w.shape
        m = n * oh * ow
        clamp_in = pending or _NO_CLAMP
        geometry = {"STRIDE": block.stride, "PAD_T": block.pad_top, "PAD_L": block.pad_left,
                    "CLAMP_IN": pending is not None}
        if split:
            d = torch.empty((n, oh, ow, c), device=x.device, dtype=torch.float16)
            _depthwise[lambda meta: (c // meta["BLOCK_C"] * triton.cdiv(m, meta["BLOCK_M"]),)](
                x, dw_w, dw_b, d, m, h, w, oh, ow, c, clamp_in.low, clamp_in.high,
                block.dw_act.low, block.dw_act.high, **geometry)
            return torch.addmm(pw_b16, d.view(m, c), pw_w).view(n, oh, ow, cout), block.pw_act
        y = torch.empty((n, oh, ow, cout), device=x.device, dtype=torch.float16)
        _separable[lambda meta: (cout // meta["BLOCK_N"] * triton.cdiv(m, meta["BLOCK_M"]),)](
            x, dw_w, dw_b, pw_w, pw_b, y, m, h, w, oh, ow, c, cout, clamp_in.low, clamp_in.high,
            block.dw_act.low, block.dw_act.high, block.pw_act.low, block.pw_act.high, **geometry)
        return y, None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """fp16 (n, h, w, c) activations of the body for an int8 (n, H, W, cin) batch.

        The first call at a batch size picks each block's form (never call it first inside a
        CUDA graph capture: the runtime's warm-up calls come first)."""
        n = x.shape[0]
        if n not in self.forms:
            self.forms[n] = self._pick_forms(x)
        y, pending = self.stem(x), None
        for i, split in enumerate(self.forms[n]):
            y, pending = self.block(i, y, pending, split)
        return y.clamp_(pending.low, pending.high) if pending is not None else y
