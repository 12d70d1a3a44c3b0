"""INT8 calibration and the engine models built from it.

`calibrate` runs the fp32 network over the calibration set and writes a calibration cache:
one symmetric per-tensor activation scale (amax / 127) per line, plus the per-channel mean of
every convolution's input, all keyed to the sha256 of the source model. The INT8 model is built
from the cache alone (per-channel symmetric int8 weights, per-tensor symmetric int8 activations,
QDQ format), so runs use the cache, and a cache made for other weights is refused instead of
silently mis-scaling new ones.

Three choices keep MobileNet v1's accuracy (measured in docs/results/cpu.md):
- a conv feeding a ReLU6 shares the activation's scale (TensorRT's fused conv+ReLU6 semantics),
- the logits stay float up to the arg-max (8-bit logits flip near-tied classes),
- bias correction: the mean output shift that weight rounding causes, (W_q - W) E[x], is
  subtracted from each conv's bias, using the calibration means.
"""

from __future__ import annotations

import contextlib
import io
import platform
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from asyncbench.checksum import sha256_file
from asyncbench.data.dataset import CAL_LAYOUT, Dataset, read_map, require_preprocessed
from asyncbench.errors import ConfigError, UserError
from asyncbench.fileio import write_atomic
from asyncbench.host import cpu_flags
from asyncbench.model.profiles import ModelProfile, detect_profile, load_onnx, source_model_path
from asyncbench.model.wrap import ENGINE_INPUT, wrap_for_engine
from asyncbench.paths import BuildPaths

CACHE_MAGIC = "asyncbench-calibration-cache-v1"
METHODS = ("minmax", "percentile", "entropy")
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul", "Clip", "Relu", "AveragePool", "GlobalAveragePool"]
_LAYOUT_OPS = {"Identity", "Transpose", "Reshape", "Flatten"}
SOURCE_KEY = "asyncbench.source_sha256"
CACHE_KEY = "asyncbench.calibration_cache_sha256"
WEIGHT_BITS_KEY = "asyncbench.weight_bits"
ACTIVATIONS_KEY = "asyncbench.activations"
RECIPE_KEY = "asyncbench.recipe"
RECIPE = "3"  # bump when wrap_for_engine or quantize change what they build, so old models are rebuilt
Log = Callable[[str], None]


def _hex(v: float) -> str:
    return struct.pack(">f", v).hex()


def _unhex(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text))[0]


@dataclass(frozen=True)
class CalibrationCache:
    """Per-tensor activation scales, per-channel conv input means, and what they were computed from."""

    method: str
    samples: int
    source_sha256: str
    profile: str
    scales: dict[str, float]
    means: dict[str, np.ndarray] = field(default_factory=dict)

    def dumps(self) -> str:
        """Text form: a header, `tensor: <float32 bits in hex>` lines (TensorRT's notation), then `mean` lines."""
        head = (f"{CACHE_MAGIC} method={self.method} samples={self.samples} profile={self.profile} "
                f"source_sha256={self.source_sha256}\n")
        scales = "".join(f"{k}: {_hex(v)}\n" for k, v in self.scales.items())
        means = "".join(f"mean {k}: {' '.join(_hex(float(x)) for x in v)}\n" for k, v in self.means.items())
        return head + scales + means

    @classmethod
    def load(cls, path: Path) -> CalibrationCache:
        """Parse a cache file; a missing or damaged one is a one-line UserError."""
        if not path.is_file():
            raise UserError(f"no calibration cache at {path}: run `make calibrate` (python -m asyncbench calibrate)")
        try:
            lines = path.read_text().splitlines()  # random bytes fail here as a UnicodeDecodeError (a ValueError)
            magic, *fields = lines[0].split()
            if magic != CACHE_MAGIC:
                raise ValueError("unknown header")
            meta = dict(f.split("=", 1) for f in fields)
            scales, means = {}, {}
            for line in lines[1:]:
                name, sep, value = line.rpartition(": ")
                if not sep:
                    raise ValueError(line)
                if name.startswith("mean "):
                    means[name[5:]] = np.array([_unhex(v) for v in value.split()], np.float32)
                else:
                    scales[name] = _unhex(value)
            return cls(meta["method"], int(meta["samples"]), meta["source_sha256"], meta["profile"], scales, means)
        except OSError as e:
            raise UserError(f"cannot read the calibration cache {path}: {e.strerror or e}") from None
        except (ValueError, KeyError, IndexError, struct.error):
            raise UserError(f"{path} is not a calibration cache this tool wrote; delete it and run `make calibrate`") \
                from None


def _load_source(paths: BuildPaths) -> tuple[Path, onnx.ModelProto, ModelProfile]:
    src = source_model_path(paths)
    model = load_onnx(src)
    return src, model, detect_profile(model, src)


def _set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    for key, value in [*kept, *values.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _metadata(path: Path) -> dict[str, str]:
    try:
        return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception:  # noqa: BLE001 - unreadable or absent means stale: it will be rebuilt
        return {}


def calibration_batches(dataset: Dataset, preprocessed: Path, batch_size: int = 16) -> Iterator[np.ndarray]:
    """The calibration set as int8 NHW4 batches, read from the fp32 NCHW preprocessed files."""
    folder = dataset.preprocessed_dir(preprocessed, CAL_LAYOUT)
    entries = read_map(dataset.cal_map)
    require_preprocessed(folder, [e.name for e in entries], "--cal_only", preprocessed)
    for start in range(0, len(entries), batch_size):
        batch = []
        for e in entries[start:start + batch_size]:
            x = np.load(folder / f"{e.name}.npy")
            if x.shape != (3, 224, 224) or np.any(x != np.round(x)) or x.min() < -128 or x.max() > 127:
                raise UserError(f"{folder / e.name}.npy is not a [3,224,224] calibration sample of pixel - 128 values; "
                                f"preprocess it again with --cal_only --force")
            nhwc = x.transpose(1, 2, 0).astype(np.int8)
            batch.append(np.concatenate([nhwc, np.zeros((224, 224, 1), np.int8)], axis=-1))
        yield np.stack(batch)


class _Reader:
    """onnxruntime CalibrationDataReader over our batches."""

    def __init__(self, batches: Iterator[np.ndarray]) -> None:
        self._it = batches
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        if batch is None:
            return None
        self.count += len(batch)
        return {ENGINE_INPUT: batch}


def _exact_input_tensors(model: onnx.ModelProto, profile: ModelProfile) -> set[str]:
    """Tensors that are only a relayout of the sample: their scale is exact, not calibrated."""
    exact = {profile.input_name}
    for node in model.graph.node:
        if node.op_type in _LAYOUT_OPS and node.input and node.input[0] in exact:
            exact.update(node.output)
    return exact


def _fuse_activation_scales(model: onnx.ModelProto, scales: dict[str, float]) -> None:
    """A conv output read only by a Clip/Relu takes the activation's scale (TensorRT's conv+ReLU6 fusion).

    Quantizing the raw conv output with its own wide range and then the clipped output again
    loses precision twice; with the shared scale the first quantization saturates where the clip
    would, so the pair behaves as one fused conv + activation quantized once.
    """
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type in ("Clip", "Relu") and node.output[0] in scales and node.input[0] in scales:
            src = producers.get(node.input[0])
            if src is not None and src.op_type == "Conv" and readers[node.input[0]] == 1:
                scales[node.input[0]] = scales[node.output[0]]


def _logit_tensors(model: onnx.ModelProto) -> set[str]:
    """The classifier's output and its relayouts up to the arg-max: they stay float."""
    producers = {out: node for node in model.graph.node for out in node.output}
    argmax = next(n for n in model.graph.node if n.op_type == "ArgMax")
    found, name = set(), argmax.input[0]
    while name in producers:
        found.add(name)
        node = producers[name]
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            break
        name = node.input[0]
    return found


def _convs(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Convolutions whose weight and bias are initializers (the ones that get quantized)."""
    inits = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node
            if n.op_type == "Conv" and len(n.input) == 3 and n.input[1] in inits and n.input[2] in inits]


def _conv_input_means(fp32: onnx.ModelProto, batches: Iterator[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-channel mean (over samples and pixels) of each quantized conv's activation input."""
    import onnxruntime as ort

    names = list(dict.fromkeys(n.input[0] for n in _convs(fp32)))
    if not names:  # session.run([]) would return every output, not none
        return {}
    probe = onnx.ModelProto.FromString(fp32.SerializeToString())
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    sums: dict[str, np.ndarray] = {}
    count = 0
    for batch in batches:
        for name, value in zip(names, session.run(names, {ENGINE_INPUT: batch}), strict=True):
            sums[name] = sums.get(name, 0) + value.astype(np.float64).mean(axis=(2, 3)).sum(axis=0)
        count += len(batch)
    return {name: (s / count).astype(np.float32) for name, s in sums.items()} if count else {}


def calibrate(paths: BuildPaths, dataset: Dataset, method: str = "percentile", log: Log = print) -> CalibrationCache:
    """Compute activation scales and conv input means on the calibration set, write the cache, build the models."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    if method not in METHODS:
        raise ConfigError(f"unknown calibration method {method!r}: use one of {', '.join(METHODS)}")
    src, model, profile = _load_source(paths)
    fp32 = wrap_for_engine(model, profile)
    calib_methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                     "entropy": CalibrationMethod.Entropy}
    # The histogram calibrators need equally shaped batches; min-max can take them 16 at a time.
    reader = _Reader(calibration_batches(dataset, paths.preprocessed, batch_size=16 if method == "minmax" else 1))
    with tempfile.TemporaryDirectory(prefix="asyncbench-calib-") as tmp:
        fp32_path = Path(tmp) / "fp32.onnx"
        onnx.save(fp32, fp32_path)
        calibrator = create_calibrator(fp32_path, QUANTIZED_OPS, augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                       calibrate_method=calib_methods[method], extra_options={"symmetric": True})
        with contextlib.redirect_stdout(io.StringIO()):  # onnxruntime prints histogram chatter
            calibrator.collect_data(reader)
            ranges = calibrator.compute_data()
    exact = _exact_input_tensors(fp32, profile)
    scales = {}
    for name in ranges:
        lo, hi = ranges[name].range_value
        amax = max(abs(float(np.max(lo))), abs(float(np.max(hi))), abs(float(np.min(lo))))
        scales[name] = profile.input_scale if name in exact else max(amax, 1e-8) / 127.0
    _fuse_activation_scales(fp32, scales)
    means = _conv_input_means(fp32, calibration_batches(dataset, paths.preprocessed))
    cache = CalibrationCache(method, reader.count, sha256_file(src), profile.name, scales, means)
    paths.calibration_cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(paths.calibration_cache, lambda p: p.write_text(cache.dumps()))
    log(f"calibrate: {reader.count} samples ({dataset.name} cal map), {len(scales)} tensor scales ({method}), "
        f"{len(means)} conv input means -> {paths.calibration_cache}")
    ensure_engine_models(paths, log=log)
    return cache


def default_weight_bits() -> int:
    """8, or 7 on x86 CPUs without VNNI, whose u8s8 int8 kernels saturate 16-bit sums with 8-bit weights.

    onnxruntime's fused int8 convolutions on AVX2 without VNNI add pairs of u8*s8 products in
    int16; with full 8-bit weights those sums overflow and top-1 collapses (measured: 39%
    agreement with fp32). 7-bit weights keep every pair sum in range.
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return 8
    flags = cpu_flags()
    return 8 if ("avx512_vnni" in flags or "avx_vnni" in flags) else 7


def bias_correct(model: onnx.ModelProto, means: dict[str, np.ndarray], qmax: int) -> None:
    """Subtract (W_q - W) E[x] from each conv bias, W_q rounded exactly as the quantizer will round it."""
    inits = {i.name: i for i in model.graph.initializer}
    for conv in _convs(model):
        mean = means.get(conv.input[0])
        if mean is None:
            continue
        w = numpy_helper.to_array(inits[conv.input[1]])
        b = numpy_helper.to_array(inits[conv.input[2]])
        scale = np.abs(w).reshape(w.shape[0], -1).max(axis=1) / qmax
        scale = np.where(scale > 0, scale, 1.0).reshape(-1, 1, 1, 1)
        err = (np.clip(np.rint(w / scale), -qmax, qmax) * scale - w).sum(axis=(2, 3))  # (O, I/group)
        group = next((a.i for a in conv.attribute if a.name == "group"), 1)
        shift = err @ mean if group == 1 else err[:, 0] * mean.reshape(group, -1)[:, 0].repeat(w.shape[0] // group)
        inits[conv.input[2]].CopyFrom(numpy_helper.from_array((b - shift).astype(np.float32), conv.input[2]))


def _strip_qdq(model: onnx.ModelProto, tensors: set[str]) -> None:
    """Remove the Quantize/Dequantize pairs on `tensors`, rewiring their readers to the float tensor."""
    g = model.graph
    q_nodes = {n.output[0]: n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] in tensors}
    dq_nodes = {n.output[0]: n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in q_nodes}
    rename = {dq_out: q_nodes[dq.input[0]].input[0] for dq_out, dq in dq_nodes.items()}
    drop = {id(n) for n in [*q_nodes.values(), *dq_nodes.values()]}
    kept = [n for n in g.node if id(n) not in drop]
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
    del g.node[:]
    g.node.extend(kept)
    used = {name for n in kept for name in n.input}
    dead = [i for i in g.initializer if i.name not in used]
    for init in dead:
        g.initializer.remove(init)


def _activation_ranges(model: onnx.ModelProto, scales: dict[str, float], unsigned: bool
                       ) -> dict[str, tuple[float, float]]:
    """(low, high) per quantized tensor: symmetric, or with ``unsigned`` [0, min(6, range)] after a ReLU6/ReLU.

    Unsigned (uint8) activations start at zero point 0 after ReLU6 and end at most at 6, so the
    quantization itself clips: onnxruntime drops the Clip and fuses each
    DequantizeLinear -> Conv -> Clip -> QuantizeLinear into one QLinearConv (u8 activations x s8
    weights, the form VNNI and AMX run natively), and the whole body stays int8 with no float
    round trip per layer. Measured on a 2-core AVX-512 VNNI CPU: 2.0-2.6x fp32, where signed
    symmetric activations (which keep a float Clip between the layers) gave 1.5x. With the 7-bit
    weights of CPUs without VNNI it cost accuracy (96% top-1 agreement with fp32 on the 100
    ai-benchmark photos, against 99% signed), so those keep signed activations (docs/results/cpu.md).
    """
    producers = {out: n for n in model.graph.node for out in n.output}
    ranges = {}
    for name, scale in scales.items():
        high = float(scale * 127.0)
        node = producers.get(name)
        if unsigned and node is not None and node.op_type in ("Clip", "Relu"):
            ranges[name] = (0.0, min(high, 6.0) if node.op_type == "Clip" else high)
        else:
            ranges[name] = (-high, high)
    return ranges


def quantize(fp32: onnx.ModelProto, cache: CalibrationCache, weight_bits: int,
             unsigned: bool | None = None) -> onnx.ModelProto:
    """The QDQ INT8 model for `fp32` (an engine-contract model) from the cache's scales and means.

    ``unsigned``: uint8 activations (see ``_activation_ranges``); default with 8-bit weights. TensorRT
    takes only symmetric signed int8, so its model is built with ``unsigned=False``.
    """
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    unsigned = weight_bits == 8 if unsigned is None else unsigned
    corrected = onnx.ModelProto.FromString(fp32.SerializeToString())
    # onnxruntime's 7-bit ("reduce_range") symmetric int8 weights span [-64, 64].
    bias_correct(corrected, cache.means, qmax=127 if weight_bits == 8 else 64)
    with tempfile.TemporaryDirectory(prefix="asyncbench-quant-") as tmp:
        path = Path(tmp) / "fp32.onnx"
        onnx.save(corrected, path)
        model = load_model_with_shape_infer(path)
    missing = [n for n in _convs(corrected) if n.input[0] not in cache.scales]
    if missing:
        raise UserError(f"the calibration cache has no scale for {missing[0].input[0]!r}: run `make calibrate`")
    ranges = TensorsData(CalibrationMethod.MinMax, {
        k: TensorData(lowest=np.float32(low), highest=np.float32(high))
        for k, (low, high) in _activation_ranges(corrected, cache.scales, unsigned).items()})
    quantizer = QDQQuantizer(model, True, weight_bits < 8, QuantType.QInt8,
                             QuantType.QUInt8 if unsigned else QuantType.QInt8, ranges, None, None, QUANTIZED_OPS,
                             {"ActivationSymmetric": not unsigned, "WeightSymmetric": True})
    quantizer.quantize_model()
    out = quantizer.model.model
    _strip_qdq(out, _logit_tensors(corrected))
    return out


def ensure_engine_models(paths: BuildPaths, weight_bits: int | None = None, log: Log = print) -> tuple[Path, Path]:
    """(fp32, int8) engine models, rebuilt when the source model, the cache or the weight precision changed."""
    src, model, profile = _load_source(paths)
    source_sha = sha256_file(src)
    fp32 = wrap_for_engine(model, profile)
    fp32_meta = {SOURCE_KEY: source_sha, RECIPE_KEY: RECIPE}
    _set_metadata(fp32, fp32_meta)
    current = _metadata(paths.fp32_nhw4_model)
    if any(current.get(k) != v for k, v in fp32_meta.items()):
        paths.fp32_nhw4_model.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(paths.fp32_nhw4_model, lambda p: onnx.save(fp32, p))
        log(f"calibrate: built {paths.fp32_nhw4_model} ({profile.name}, int8 NHW4 in, int32 top-1 out)")
    cache = CalibrationCache.load(paths.calibration_cache)
    if cache.source_sha256 != source_sha:
        raise UserError(f"{paths.calibration_cache} was made for another model (sha256 {cache.source_sha256[:12]}..., "
                        f"{src} is {source_sha[:12]}...): run `make calibrate` for the new weights")
    bits = weight_bits or default_weight_bits()
    _ensure_int8(paths.int8_model, fp32, fp32_meta, cache, paths, bits, None, "for this CPU", log)
    return paths.fp32_nhw4_model, paths.int8_model


def ensure_signed_int8_model(paths: BuildPaths, log: Log = print) -> Path:
    """The INT8 model TensorRT reads (8-bit weights, symmetric signed activations), rebuilt when stale."""
    fp32_path, _ = ensure_engine_models(paths, log=log)
    fp32 = onnx.load(str(fp32_path))
    fp32_meta = {k: v for k, v in _metadata(fp32_path).items() if k in (SOURCE_KEY, RECIPE_KEY)}
    cache = CalibrationCache.load(paths.calibration_cache)
    _ensure_int8(paths.int8_signed_model, fp32, fp32_meta, cache, paths, 8, False, "for TensorRT", log)
    return paths.int8_signed_model


def _ensure_int8(path: Path, fp32: onnx.ModelProto, fp32_meta: dict[str, str], cache: CalibrationCache,
                 paths: BuildPaths, bits: int, unsigned: bool | None, purpose: str, log: Log) -> None:
    """Write the INT8 model to ``path`` unless one built from the same inputs and recipe is there."""
    unsigned = bits == 8 if unsigned is None else unsigned
    want = {**fp32_meta, CACHE_KEY: sha256_file(paths.calibration_cache), WEIGHT_BITS_KEY: str(bits),
            ACTIVATIONS_KEY: "uint8" if unsigned else "int8"}
    meta = _metadata(path)
    if all(meta.get(k) == v for k, v in want.items()):
        return
    int8 = quantize(fp32, cache, bits, unsigned)
    _set_metadata(int8, want)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda p: onnx.save(int8, p))
    activations = "uint8 per-tensor activations with ReLU6 folded into the quantization" if unsigned else \
        "signed int8 per-tensor activations"
    log(f"calibrate: built {path} from {paths.calibration_cache} ({bits}-bit per-channel weights {purpose}, "
        f"{activations}, bias-corrected)")
