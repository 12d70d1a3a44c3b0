"""Layer by layer: each separable block of the engine's body fused and split, error and time.

Rerun: python benchmarks/chain_layers.py [--batch 256]

For the stem and each separable block of the engine's MobileNet body (asyncbench.engines.
triton_chain), on a random input of the right kind (int8 pixels for the stem, activations in
[0, 6] for the blocks): the relative error against a float32 torch reference of the form the
engine uses, and the time of both forms of the block (one fused Triton kernel; Triton depthwise
+ cuBLAS pointwise GEMM, its clamp deferred to the next kernel), each a CUDA graph replayed back
to back, and the form the engine picks at this batch size (it times both the same way).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import onnx

from asyncbench.engines.torch_engine import use_cache_dir
from asyncbench.model.calibrate import ensure_engine_models
from asyncbench.model.convchain import match_chain
from asyncbench.model.gpu_rewrite import fold_pad_channel
from asyncbench.paths import BuildPaths

from engine_variants import graph_seconds

ROOT = Path(__file__).resolve().parent.parent


def tf_pad(x: Any, stride: int, pad_top: int) -> Any:
    """The TF SAME pads of a 3x3 window as F.pad arguments (NCHW)."""
    import torch.nn.functional as F

    h, w = x.shape[2:]
    pad_h = max((-(-h // stride) - 1) * stride + 3 - h, 0)
    pad_w = max((-(-w // stride) - 1) * stride + 3 - w, 0)
    return F.pad(x, (pad_top, pad_w - pad_top, pad_top, pad_h - pad_top))


def err(got: Any, ref_nchw: Any) -> float:
    """||got - ref|| / ||ref|| with got NHWC and the reference NCHW."""
    ref = ref_nchw.permute(0, 2, 3, 1)
    return float((got.float() - ref).norm() / ref.norm())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--build-dir", default=str(ROOT / "build"))
    args = p.parse_args()
    paths = BuildPaths(Path(args.build_dir))
    use_cache_dir(paths.compile_cache)
    import torch
    import torch.nn.functional as F

    from asyncbench.engines import triton_chain

    fp32, _ = ensure_engine_models(paths, log=lambda _: None)
    chain = match_chain(fold_pad_channel(onnx.load(str(fp32))))
    assert chain is not None
    dev = torch.device("cuda", 0)
    kernels = triton_chain.ChainKernels(chain, dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    n = args.batch
    h, w = chain.input_hw
    print(f"GPU: {torch.cuda.get_device_name(0)}; batch {n}", flush=True)
    rows = []
    with torch.inference_mode():
        x = torch.randint(-128, 128, (n, h, w, 4), device=dev, dtype=torch.int8, generator=gen)
        x[..., 3] = 0
        f = chain.first
        wt = torch.from_numpy(f.weight).to(dev).reshape(3, 3, f.weight.shape[1], -1).permute(3, 2, 0, 1)
        ref = F.conv2d(tf_pad(x.permute(0, 3, 1, 2).float(), f.stride, f.pad_top), wt,
                       torch.from_numpy(f.bias).to(dev), f.stride).clamp(f.act.low, f.act.high)
        got = kernels.stem(x)
        rows.append(("stem", tuple(got.shape[1:]), err(got, ref), graph_seconds(kernels.stem, x, 20), None))
        kernels(x)  # picks the forms at this batch size
        forms = kernels.forms[n]
        for i, b in enumerate(chain.blocks):
            c = b.pw_weight.shape[0]
            hh, ww = got.shape[1:3]
            xin = torch.rand((n, hh, ww, c), device=dev, generator=gen).mul_(6).half()
            dw = torch.from_numpy(b.dw_weight).to(dev).T.reshape(c, 1, 3, 3).contiguous()
            pw = torch.from_numpy(b.pw_weight).to(dev).T[:, :, None, None].contiguous()
            t = F.conv2d(tf_pad(xin.permute(0, 3, 1, 2).float(), b.stride, b.pad_top), dw,
                         torch.from_numpy(b.dw_bias).to(dev), b.stride, groups=c).clamp(b.dw_act.low, b.dw_act.high)
            ref = F.conv2d(t, pw, torch.from_numpy(b.pw_bias).to(dev)).clamp(b.pw_act.low, b.pw_act.high)
            errors, times = [], []
            for split in (False, True):
                out, pending = kernels.block(i, xin, split=split)
                errors.append(err(out.clamp(pending.low, pending.high) if pending else out, ref))
                times.append(graph_seconds(lambda v, i=i, split=split: kernels.block(i, v, split=split)[0], xin, 20))
            got = out
            rows.append((f"block {i + 1} ({'split' if forms[i] else 'fused'})", tuple(out.shape[1:]),
                         max(errors), *times))
    print("\nlayer (engine's form) | out (h, w, c) | max rel err | fused us | split us")
    for name, shape, e, fused, split in rows:
        cells = " | ".join(f"{v * 1e6:.1f}" if v else "-" for v in (fused, split))
        print(f"{name} | {shape} | {e:.2e} | {cells}")
    chosen = rows[0][3] + sum(r[4] if forms[i] else r[3] for i, r in enumerate(rows[1:]))
    print(f"body in the engine's forms: {chosen * 1e6:.1f} us = {n / chosen:,.0f} img/s "
          f"(all fused: {n / (rows[0][3] + sum(r[3] for r in rows[1:])):,.0f}, "
          f"all split: {n / (rows[0][3] + sum(r[4] for r in rows[1:])):,.0f})")


if __name__ == "__main__":
    main()
