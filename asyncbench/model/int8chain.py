"""The MobileNet body as integer layers: TensorRT's INT8 recipe mapped onto asyncbench.model.convchain.

Why: the GPU's int8 kernels (asyncbench.engines.triton_int8) must compute what the INT8 QDQ
model computes (the one onnxruntime runs and TensorRT would build from), from the same
calibration cache, so that a new cache changes the GPU model too. Per convolution:
- weights: per-output-channel symmetric int8, ``s_w = max|W| / 127``, ``w_q = rint(W / s_w)``,
  after the cache's bias correction (calibrate.bias_correct, as the QDQ model is built);
- activations: one symmetric scale per tensor from the cache (the conv output shares its ReLU6's);
- bias: int32 at the accumulator's scale, ``b_q = rint(b / (s_in * s_w))``;
- requantisation: ``y_q = clamp(rint((sum x_q * w_q + b_q) * m), lo, hi)`` with the fp32
  multiplier ``m = s_in * s_w / s_out`` per output channel and the activation as an int8 clamp
  (ReLU6 with the output scale ``s``: ``[0, min(127, rint(6 / s))]``).
The stem reads the int8 sample itself: its input scale is already folded into the stem's weights
by match_chain, so its input scale here is 1 and ``x_q`` is the sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from asyncbench.errors import UserError
from asyncbench.model.calibrate import CalibrationCache, bias_correct
from asyncbench.model.convchain import Activation, ConvChain, match_chain
from asyncbench.model.gpu_rewrite import fold_pad_channel


@dataclass(frozen=True)
class QuantConv:
    """One convolution in integers: int8 weights in the float chain's layout, int32 bias, fp32 multipliers."""

    weight: np.ndarray  # int8: stem (9, cin, cout), depthwise (9, c), pointwise (c, cout)
    bias: np.ndarray  # int32 (cout,), at the accumulator's scale s_in * s_w
    multiplier: np.ndarray  # float32 (cout,): s_in * s_w / s_out
    low: int  # the output's int8 clamp: the activation and int8's range in one
    high: int
    in_scale: float
    out_scale: float


@dataclass(frozen=True)
class Int8Chain:
    """The body's layers in integers, beside the (bias-corrected) float chain that gives their geometry."""

    chain: ConvChain
    stem: QuantConv
    blocks: tuple[tuple[QuantConv, QuantConv], ...]  # (depthwise, pointwise) per separable block

    @property
    def out_scale(self) -> float:
        """Scale of the body's int8 output (the tail dequantizes with it)."""
        return self.blocks[-1][1].out_scale


def activation_scale(cache_scale: float) -> float:
    """The scale the QDQ model stores for a cache entry: onnxruntime's quantizer gets the range
    +-float32(s * 127) and divides it by 127 again in float64, then stores float32."""
    high = np.float64(np.float32(cache_scale * 127.0))
    return float(np.float32(2.0 * high / 254.0))


def _clamp(act: Activation, scale: float) -> tuple[int, int]:
    """The activation's [low, high] in output integers, within int8's [-128, 127]."""
    low = -128 if not np.isfinite(act.low) else int(np.clip(np.rint(act.low / scale), -128, 127))
    high = 127 if not np.isfinite(act.high) else int(np.clip(np.rint(act.high / scale), -128, 127))
    return low, high


def quantize_conv(weight: np.ndarray, bias: np.ndarray, in_scale: float, out_scale: float,
                  act: Activation) -> QuantConv:
    """Quantize one convolution whose last weight axis is the output channel (onnxruntime's rounding)."""
    w = weight.astype(np.float32)
    axes = tuple(range(w.ndim - 1))
    absmax = np.abs(w).max(axis=axes).astype(np.float64)
    w_scale = (2.0 * absmax / 254.0).astype(np.float32)
    w_scale = np.where(w_scale > 0, w_scale, np.float32(1.0))
    # A channel whose weights are tiny next to its bias (MobileNet has dead ones) would need an int32
    # bias past int32's range: its weight scale grows until the bias fits, as onnxruntime does it.
    # (onnxruntime forms the bound in float32, then divides by the int32 range in float64.)
    smallest = (np.float32(1.0001) * (np.float32(2.0) * np.abs(bias.astype(np.float32)))) / (2.0**32 - 2.0)
    candidate = np.float64(np.float32(in_scale)) * w_scale.astype(np.float64)
    grow = (candidate < smallest) & (candidate > 0)
    w_scale = np.where(grow, (w_scale * np.where(grow, smallest / candidate, 1.0)).astype(np.float32), w_scale)
    w_q = np.clip(np.rint(w / w_scale), -127, 127).astype(np.int8)
    bias_scale = np.float32(in_scale) * w_scale
    limit = np.iinfo(np.int32)
    b_q = np.clip(np.rint(bias.astype(np.float64) / bias_scale.astype(np.float64)), limit.min, limit.max)
    multiplier = (bias_scale.astype(np.float64) / out_scale).astype(np.float32)
    low, high = _clamp(act, out_scale)
    return QuantConv(w_q, b_q.astype(np.int32), multiplier, low, high, float(in_scale), float(out_scale))


def quantize_chain(fp32: onnx.ModelProto, cache: CalibrationCache) -> Int8Chain | None:
    """The integer body of an fp32 engine model (``wrap_for_engine``'s form, before any GPU rewrite)
    from the calibration cache, or None when the graph has no depthwise-separable body.

    A tensor without a scale in the cache is a UserError (a cache made for another graph)."""
    corrected = onnx.ModelProto.FromString(fp32.SerializeToString())
    bias_correct(corrected, cache.means, qmax=127)
    chain = match_chain(fold_pad_channel(corrected))
    if chain is None:
        return None
    missing = [t for t in chain.tensors[1:] if t not in cache.scales]
    if missing:
        raise UserError(f"the calibration cache has no scale for {missing[0]!r}: run `make calibrate`")
    scales = [1.0] + [activation_scale(cache.scales[t]) for t in chain.tensors[1:]]
    first = chain.first
    stem = quantize_conv(first.weight, first.bias, scales[0], scales[1], first.act)
    blocks = []
    for i, b in enumerate(chain.blocks):
        s_in, s_mid, s_out = scales[2 * i + 1], scales[2 * i + 2], scales[2 * i + 3]
        blocks.append((quantize_conv(b.dw_weight, b.dw_bias, s_in, s_mid, b.dw_act),
                       quantize_conv(b.pw_weight, b.pw_bias, s_mid, s_out, b.pw_act)))
    return Int8Chain(chain, stem, tuple(blocks))
