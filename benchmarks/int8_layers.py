"""Layer by layer, the INT8 body's kernels and their candidates: time, bandwidth, same bits.

Rerun: python benchmarks/int8_layers.py [--batches 8,64,256] [--baseline OLD_triton_int8.py]

On the real weights and calibration cache (asyncbench.model.int8chain), with real activations
(a random int8 NHW4 batch carried through the body), for the stem, each separable block's
depthwise and pointwise kernels, the fused form and the pooled tail, at each batch size: the time
of one call (its CUDA graph replayed back to back) and the bytes it must move over that time.
Depthwise candidates, each checked bit for bit against the engine's kernel:
- int32: the engine's kernel, products accumulated in int32 (int8 -> int32 per product);
- fp32: the same kernel with float32 weights (exact: |sum| < 2**24), on the wider fp32 lanes;
- mma: each tap as an int8 tensor-core product with the tap's diagonal weight matrix
  (BLOCK_C x BLOCK_C, 1/BLOCK_C of it useful), accumulated in int32;
- baseline: the depthwise kernel of another version of asyncbench/engines/triton_int8.py
  (``--baseline FILE``, e.g. ``git show REV:asyncbench/engines/triton_int8.py > FILE``).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import triton
import triton.language as tl

from asyncbench.engines import triton_int8
from asyncbench.engines.torch_engine import use_cache_dir
from asyncbench.model.calibrate import CalibrationCache, ensure_engine_models
from asyncbench.model.int8chain import quantize_chain
from asyncbench.paths import BuildPaths

from engine_variants import graph_seconds

ROOT = Path(__file__).resolve().parent.parent


@triton.jit
def depthwise_mma_kernel(x_ptr, w_ptr, b_ptr, m_ptr, y_ptr, M, H, W, OH, OW, C, lo, hi,
                         STRIDE: tl.constexpr, PAD_T: tl.constexpr, PAD_L: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """The depthwise 3x3 with each tap as (BLOCK_M, BLOCK_C) x diag(w_tap) on the int8 tensor cores.

    ``w_ptr``: (C // BLOCK_C, 9, BLOCK_C, BLOCK_C) int8, the diagonal matrices per channel group."""
    tiles_c = C // BLOCK_C
    pid_c = tl.program_id(0) % tiles_c
    pid_m = tl.program_id(0) // tiles_c
    start_m = pid_m * BLOCK_M
    mask_m = start_m + tl.arange(0, BLOCK_M) < M
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    x_img, pix0, ih0, iw0 = triton_int8.tap_origin(x_ptr, start_m, H, W, OH, OW, C, STRIDE, PAD_T, PAD_L, BLOCK_M)
    kk = tl.arange(0, BLOCK_C)
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.int32)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            xv = triton_int8.tap_load(x_img, pix0, ih0, iw0, mask_m, offs_c, H, W, C, kh, kw)
            diag = tl.load(w_ptr + ((pid_c * 9 + kh * 3 + kw) * BLOCK_C + kk[:, None]) * BLOCK_C + kk[None, :])
            acc = tl.dot(xv, diag, acc, out_dtype=tl.int32)
    d = triton_int8._requant(acc, tl.load(b_ptr + offs_c), tl.load(m_ptr + offs_c), lo, hi)
    triton_int8.store_tile(y_ptr, start_m, C, offs_c, d, mask_m, BLOCK_M)


@triton.jit
def _taps_tile(x_img, pix0, mask_m, ih0, iw0, c0, H, W, C, TAP0: tl.constexpr, TAPS: tl.constexpr,
               BLOCK_C: tl.constexpr):
    """(BLOCK_M, TAPS * BLOCK_C) int8: taps TAP0.. of each pixel side by side (k = tap * BLOCK_C + c), one load."""
    k = tl.arange(0, TAPS * BLOCK_C)
    tap = TAP0 + k // BLOCK_C
    kh = tap // 3
    kw = tap % 3
    ih = ih0[:, None] + kh[None, :]
    iw = iw0[:, None] + kw[None, :]
    ok = mask_m[:, None] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W) & (tap < 9)[None, :]
    offs = (pix0[:, None] + (kh * W + kw)[None, :]) * C + (k % BLOCK_C + c0)[None, :]
    return tl.load(x_img + offs, mask=ok, other=0)


@triton.jit
def depthwise_mma8_kernel(x_ptr, w_ptr, b_ptr, m_ptr, y_ptr, M, H, W, OH, OW, C, lo, hi,
                          STRIDE: tl.constexpr, PAD_T: tl.constexpr, PAD_L: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """The depthwise 3x3 as two tensor-core products: taps 0-7 (K = 8 * BLOCK_C) and tap 8 against the
    stacked diagonal weight matrices; each A operand gathered by one load.

    ``w_ptr``: (C // BLOCK_C, 9 * BLOCK_C, BLOCK_C) int8, the diagonals of the taps stacked along K."""
    tiles_c = C // BLOCK_C
    pid_c = tl.program_id(0) % tiles_c
    pid_m = tl.program_id(0) // tiles_c
    start_m = pid_m * BLOCK_M
    mask_m = start_m + tl.arange(0, BLOCK_M) < M
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    x_img, pix0, ih0, iw0 = triton_int8.tap_origin(x_ptr, start_m, H, W, OH, OW, C, STRIDE, PAD_T, PAD_L, BLOCK_M)
    kk = tl.arange(0, 8 * BLOCK_C)
    nn = tl.arange(0, BLOCK_C)
    group = w_ptr + pid_c * (9 * BLOCK_C * BLOCK_C)
    a = _taps_tile(x_img, pix0, mask_m, ih0, iw0, pid_c * BLOCK_C, H, W, C, 0, 8, BLOCK_C)
    acc = tl.dot(a, tl.load(group + kk[:, None] * BLOCK_C + nn[None, :]), out_dtype=tl.int32)
    last = _taps_tile(x_img, pix0, mask_m, ih0, iw0, pid_c * BLOCK_C, H, W, C, 8, 1, BLOCK_C)
    acc = tl.dot(last, tl.load(group + (8 * BLOCK_C + nn[:, None]) * BLOCK_C + nn[None, :]), acc, out_dtype=tl.int32)
    d = triton_int8._requant(acc, tl.load(b_ptr + offs_c), tl.load(m_ptr + offs_c), lo, hi)
    triton_int8.store_tile(y_ptr, start_m, C, offs_c, d, mask_m, BLOCK_M)


_DW_KEY = ["M", "C", "STRIDE"]
_mma = triton_int8.tuned([triton.Config({"BLOCK_M": m, "BLOCK_C": 32}, num_warps=w)
                          for m, w in [(64, 4), (128, 4), (256, 8)]],
                         _DW_KEY, triton_int8._prune_depthwise, depthwise_mma_kernel)
_mma8 = triton_int8.tuned([triton.Config({"BLOCK_M": m, "BLOCK_C": 32}, num_warps=w, num_stages=1)
                           for m, w in [(64, 4), (128, 4), (128, 8), (256, 8)]],
                          _DW_KEY, triton_int8._prune_depthwise, depthwise_mma8_kernel)


def load_baseline(path: Path) -> ModuleType:
    """Another version of triton_int8.py, imported under its own name."""
    spec = importlib.util.spec_from_file_location("baseline_triton_int8", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def diagonals(weight: np.ndarray, block_c: int) -> np.ndarray:
    """(C // block_c, 9, block_c, block_c) int8: per channel group and tap, diag of the tap's weights."""
    taps, c = weight.shape
    out = np.zeros((c // block_c, taps, block_c, block_c), np.int8)
    for g in range(c // block_c):
        for t in range(taps):
            np.fill_diagonal(out[g, t], weight[t, g * block_c:(g + 1) * block_c])
    return out


class Layers:
    """One batch size's timings, layer by layer, with the running sums per column."""

    def __init__(self, kernels: Any, q: Any, base_kernel: Any, repeats: int) -> None:
        self.kernels, self.q, self.base_kernel, self.repeats = kernels, q, base_kernel, repeats
        self.total: dict[str, float] = {}

    def cell(self, key: str, seconds: float, nbytes: float) -> str:
        """The time in microseconds with the bandwidth it implies; added to the column's sum."""
        self.total[key] = self.total.get(key, 0.0) + seconds
        return f"{seconds * 1e6:.1f} ({nbytes / seconds / 1e9:,.0f})"

    def block(self, i: int, act: Any) -> tuple[str, Any]:
        """Block ``i``'s row on activations ``act``, and its output (the next block's input)."""
        import torch

        kernels = self.kernels
        dw, _ = self.q.blocks[i]
        block = self.q.chain.blocks[i]
        layer_dw, layer_pw, _ = kernels._blocks[i]
        nn, hh, ww, c = act.shape
        oh, ow = -(-hh // block.stride), -(-ww // block.stride)
        m = nn * oh * ow
        geometry = {"STRIDE": block.stride, "PAD_T": block.pad_top, "PAD_L": block.pad_left}
        outs: dict[str, Any] = {}

        def depthwise(v: Any, weight: Any, kernel: Any, name: str) -> Any:
            d = torch.empty((nn, oh, ow, c), device=v.device, dtype=torch.int8)
            kernel[lambda meta: (c // meta["BLOCK_C"] * triton.cdiv(m, meta["BLOCK_M"]),)](
                v, weight, layer_dw.bias, layer_dw.mult, d, m, hh, ww, oh, ow, c, layer_dw.low,
                layer_dw.high, **geometry)
            outs[name] = d
            return d

        diag = torch.from_numpy(diagonals(dw.weight, 32)).to(act.device)
        candidates = {"dw int32": (layer_dw.weight, triton_int8._depthwise),
                      "dw fp32": (layer_dw.weight.float(), triton_int8._depthwise),
                      "dw mma": (diag, _mma), "dw mma8": (diag, _mma8)}
        if self.base_kernel is not None:
            candidates["dw baseline"] = (layer_dw.weight, self.base_kernel)
        dw_bytes = act.numel() + m * c
        seconds = {name: graph_seconds(lambda v, w=w, k=k, name=name: depthwise(v, w, k, name), act, self.repeats)
                   for name, (w, k) in candidates.items()}
        mid = depthwise(act, layer_dw.weight, triton_int8._depthwise, "dw int32")
        same = all(torch.equal(d, mid) for d in outs.values())
        y = kernels.block(i, act, split=True)
        pw_bytes = mid.numel() + y.numel() + layer_pw.weight.numel()
        split = graph_seconds(lambda v: kernels.block(i, v, split=True), act, self.repeats)
        fused = graph_seconds(lambda v: kernels.block(i, v, split=False), act, self.repeats)
        same = same and torch.equal(kernels.block(i, act, split=False), y)
        best = min(seconds[k] for k in ("dw int32", "dw fp32", "dw mma", "dw mma8"))
        self.total["dw best"] = self.total.get("dw best", 0.0) + best
        cells = [self.cell(name, seconds[name], dw_bytes) for name in candidates]
        pointwise = self.cell("body", split - seconds["dw int32"], pw_bytes)
        baseline_gap = "" if self.base_kernel else " | "
        row = (f"block {i + 1} | {tuple(y.shape[1:])} | {pointwise} | {' | '.join(cells)}{baseline_gap} | "
               f"{self.cell('fused', fused, dw_bytes)} | {same}")
        return row, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build")
    parser.add_argument("--batches", default="8,64,256")
    parser.add_argument("--baseline", type=Path, default=None, help="another triton_int8.py to time beside")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    import torch

    paths = BuildPaths(args.build_dir)
    use_cache_dir(paths.compile_cache)
    fp32, _ = ensure_engine_models(paths, log=lambda _: None)
    q = quantize_chain(onnx.load(str(fp32)), CalibrationCache.load(paths.calibration_cache))
    assert q is not None
    dev = torch.device("cuda", 0)
    kernels = triton_int8.Int8Kernels(q, dev)
    base_kernel = (triton_int8.tuned(triton_int8.DEPTHWISE_CONFIGS, _DW_KEY, triton_int8._prune_depthwise,
                                     load_baseline(args.baseline).depthwise_kernel) if args.baseline else None)
    print(f"GPU: {torch.cuda.get_device_name(0)}; triton {triton.__version__}", flush=True)
    h, w = q.chain.input_hw
    for n in [int(b) for b in args.batches.split(",")]:
        gen = torch.Generator(device=dev).manual_seed(n)
        x = torch.randint(-128, 128, (n, h, w, 4), device=dev, dtype=torch.int8, generator=gen)
        x[..., 3] = 0
        layers = Layers(kernels, q, base_kernel, args.repeats)
        print(f"\nbatch {n}: microseconds per call (GB/s it moves)")
        print("layer | out (h, w, c) | stem / pointwise / pool | dw int32 | dw fp32 | dw mma | dw mma8 | dw baseline | "
              "fused | same bits")
        with torch.inference_mode():
            act = kernels.stem(x)
            t = graph_seconds(kernels.stem, x, args.repeats)
            print(f"stem | {tuple(act.shape[1:])} | {layers.cell('body', t, x.numel() + act.numel())} | | | | | | |")
            for i in range(len(q.blocks)):
                row, act = layers.block(i, act)
                print(row, flush=True)
            t = graph_seconds(kernels.pool, act, args.repeats)
            print(f"pool | {tuple(kernels.pool(act).shape[1:])} | {layers.cell('body', t, act.numel())} | | | | | | |")
        total = layers.total
        parts = ", ".join(f"{k} {v * 1e6:,.0f} us" for k, v in total.items())
        print(f"sums at batch {n}: {parts}; body + pool with the int32 depthwise "
              f"{n / (total['body'] + total['dw int32']):,.0f} img/s, with the fastest depthwise of each layer "
              f"{n / (total['body'] + total['dw best']):,.0f} img/s", flush=True)


if __name__ == "__main__":
    main()
