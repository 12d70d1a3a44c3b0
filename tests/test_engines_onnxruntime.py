"""OnnxRuntimeEngine against tiny real ONNX models that honour the engine contract."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from asyncbench.contract import SAMPLE_SHAPE as SHAPE
from asyncbench.engines.base import Engine, EngineError, ExecutionForm, LatencyRecorder, warmup_batch
from asyncbench.engines.onnxruntime_engine import OnnxRuntimeEngine
from asyncbench.errors import UserError

RNG = np.random.default_rng(20190611)
WEIGHTS = RNG.standard_normal((4, 1000)).astype(np.float32)
BIAS = RNG.standard_normal(1000).astype(np.float32)


def _save_model(
    path: Path,
    *,
    input_type: int = TensorProto.INT8,
    output_type: int = TensorProto.INT32,
    batch: int | str = "N",
    conv_channels: int = 0,
) -> Path:
    """int8 NHW4 -> float -> (optional conv stack) -> mean over H,W -> 1000 logits -> int32 ArgMax."""
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT)]
    inits = [numpy_helper.from_array(WEIGHTS, "w"), numpy_helper.from_array(BIAS, "b")]
    features = "xf"
    if conv_channels:
        # Enough arithmetic to keep ONNX Runtime busy for milliseconds (for the GIL test).
        kernel = RNG.standard_normal((conv_channels, 4, 3, 3)).astype(np.float32) * 0.01
        project = RNG.standard_normal((4, conv_channels, 1, 1)).astype(np.float32) * 0.1
        inits += [numpy_helper.from_array(kernel, "k"), numpy_helper.from_array(project, "p")]
        nodes += [
            helper.make_node("Transpose", ["xf"], ["nchw"], perm=[0, 3, 1, 2]),
            helper.make_node("Conv", ["nchw", "k"], ["c1"], pads=[1, 1, 1, 1]),
            helper.make_node("Conv", ["c1", "p"], ["c2"]),
            helper.make_node("Transpose", ["c2"], ["nhwc"], perm=[0, 2, 3, 1]),
        ]
        features = "nhwc"
    nodes += [
        helper.make_node("ReduceMean", [features], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["mean", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["top1"], axis=1, keepdims=0),
    ]
    nodes.append(helper.make_node("Cast", ["top1"], ["y"], to=output_type))
    graph = helper.make_graph(
        nodes,
        "contract",
        [helper.make_tensor_value_info("x", input_type, [batch, *SHAPE])],
        [helper.make_tensor_value_info("y", output_type, [batch])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def _reference_top1(batch: np.ndarray) -> np.ndarray:
    """The tiny model's computation in float64 numpy."""
    logits = batch.astype(np.float64).mean(axis=(1, 2)) @ WEIGHTS.astype(np.float64) + BIAS
    ordered = np.sort(logits, axis=1)
    # A near-tie could flip with float32 rounding; the fixed seed must not produce one.
    assert np.all(ordered[:, -1] - ordered[:, -2] > 1e-3)
    return logits.argmax(axis=1).astype(np.int32)


def _distinct_batch(n: int) -> np.ndarray:
    """Random int8 images whose channel means differ per image, so top-1 varies across the batch."""
    offsets = RNG.integers(-100, 100, size=(n, 1, 1, 4))
    noise = RNG.integers(-20, 21, size=(n, *SHAPE))
    batch = np.clip(offsets + noise, -128, 127).astype(np.int8)
    batch[..., 3] = 0  # the contract's zero padding channel
    return batch


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_model(tmp_path_factory.mktemp("models") / "tiny.onnx")


@pytest.fixture
def engine(tiny_model: Path) -> OnnxRuntimeEngine:
    with OnnxRuntimeEngine(tiny_model, max_batch_size=8, intra_op_threads=1) as eng:
        yield eng


def test_engine_satisfies_protocol(engine: OnnxRuntimeEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.device == "cpu"
    caps = engine.capabilities
    assert (caps.form, caps.slots, caps.buckets, caps.reads_input) == (ExecutionForm.BLOCKING, 2, (1, 2, 4, 8), True)
    assert engine.max_batch_size == caps.max_batch_size == 8


@pytest.mark.parametrize("n", [1, 3, 8])
def test_infer_matches_numpy_reference(engine: OnnxRuntimeEngine, n: int) -> None:
    batch = _distinct_batch(n)
    result = engine.infer(batch)
    assert result.dtype == np.int32
    assert result.shape == (n,)
    np.testing.assert_array_equal(result, _reference_top1(batch))


def test_reference_is_not_constant() -> None:
    # Guards the test data: a batch that mapped to one class would hide a broken engine.
    assert len(set(_reference_top1(_distinct_batch(16)).tolist())) > 1


def test_latency_recorded_per_batch_size(engine: OnnxRuntimeEngine) -> None:
    assert engine.latency(3) is None
    for _ in range(3):
        engine.infer(_distinct_batch(3))
    seconds = engine.latency(3)
    assert seconds is not None and 0 < seconds < 10
    assert engine.latency(2) is None


def test_warmup_returns_each_size(engine: OnnxRuntimeEngine) -> None:
    result = engine.warmup([8, 1, 1])
    assert sorted(result) == [1, 8]
    assert all(seconds > 0 for seconds in result.values())
    assert result[1] == engine.latency(1)


def test_warmup_rejects_size_beyond_max(engine: OnnxRuntimeEngine) -> None:
    with pytest.raises(ValueError, match=r"outside 1\.\.8"):
        engine.warmup([9])


def test_warmup_batch_is_deterministic_and_nonzero() -> None:
    a, b = warmup_batch(2), warmup_batch(2)
    assert a.dtype == np.int8 and a.shape == (2, *SHAPE)
    np.testing.assert_array_equal(a, b)
    assert np.count_nonzero(a) == a.size


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (np.zeros((2, *SHAPE), np.float32), "must be int8"),
        (np.zeros((2, 224, 224, 3), np.int8), "must have shape"),
        (np.zeros((224, 224, 4), np.int8), "must have shape"),
        (np.zeros((0, *SHAPE), np.int8), r"outside 1\.\.8"),
        (np.zeros((9, *SHAPE), np.int8), r"outside 1\.\.8"),
    ],
)
def test_infer_rejects_bad_batches(engine: OnnxRuntimeEngine, batch: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        engine.infer(batch)


def test_infer_accepts_non_contiguous_batch(engine: OnnxRuntimeEngine) -> None:
    batch = _distinct_batch(6)[::2]
    assert not batch.flags.c_contiguous
    np.testing.assert_array_equal(engine.infer(batch), _reference_top1(batch))


def test_closed_engine_raises_engine_error(tiny_model: Path) -> None:
    eng = OnnxRuntimeEngine(tiny_model, max_batch_size=2)
    eng.close()
    eng.close()  # idempotent
    with pytest.raises(EngineError, match="closed"):
        eng.infer(_distinct_batch(1))


def test_missing_model_is_user_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.onnx"
    with pytest.raises(UserError) as info:
        OnnxRuntimeEngine(path)
    message = str(info.value)
    assert str(path) in message and "calibrate" in message and "\n" not in message


def test_unloadable_model_is_user_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"not an onnx model")
    with pytest.raises(UserError, match="cannot load model") as info:
        OnnxRuntimeEngine(path)
    assert "\n" not in str(info.value)


def test_float_input_is_user_error_naming_expected_and_found(tmp_path: Path) -> None:
    path = _save_model(tmp_path / "float_in.onnx", input_type=TensorProto.FLOAT)
    with pytest.raises(UserError) as info:
        OnnxRuntimeEngine(path)
    message = str(info.value)
    assert "expected one int8 [N, 224, 224, 4] input" in message
    assert "found float32 [N, 224, 224, 4]" in message
    assert "\n" not in message


def test_int64_output_is_user_error_naming_expected_and_found(tmp_path: Path) -> None:
    path = _save_model(tmp_path / "int64_out.onnx", output_type=TensorProto.INT64)
    with pytest.raises(UserError) as info:
        OnnxRuntimeEngine(path)
    message = str(info.value)
    assert "expected one int32 [N] output" in message
    assert "found int64 [N]" in message


def test_fixed_batch_smaller_than_max_is_user_error(tmp_path: Path) -> None:
    path = _save_model(tmp_path / "fixed4.onnx", batch=4)
    with pytest.raises(UserError, match="fixed batch size of 4 but a max batch size of 8"):
        OnnxRuntimeEngine(path, max_batch_size=8)


def test_fixed_batch_model_pads_smaller_batches(tmp_path: Path) -> None:
    path = _save_model(tmp_path / "fixed4.onnx", batch=4)
    with OnnxRuntimeEngine(path, max_batch_size=4) as eng:
        batch = _distinct_batch(3)
        np.testing.assert_array_equal(eng.infer(batch), _reference_top1(batch))
        with pytest.raises(ValueError, match=r"outside 1\.\.4"):
            eng.infer(_distinct_batch(5))


def test_latency_recorder_keeps_a_window() -> None:
    recorder = LatencyRecorder(window=3)
    assert recorder.median(1) is None
    for seconds in [100.0, 1.0, 2.0, 3.0]:
        recorder.record(1, seconds)
    assert recorder.median(1) == 2.0  # 100.0 fell out of the window
    recorder.record(4, 5.0)
    assert recorder.median(4) == 5.0 and recorder.median(1) == 2.0


def test_infer_releases_the_gil(tmp_path: Path) -> None:
    """A Python loop on the main thread keeps most of its speed while another thread infers."""
    batch = warmup_batch(4)
    for channels in (16, 32, 64, 128):  # CPUs differ: grow the model until one call takes over 10 ms
        path = _save_model(tmp_path / f"heavy{channels}.onnx", conv_channels=channels)
        eng = OnnxRuntimeEngine(path, max_batch_size=4, intra_op_threads=1)
        eng.infer(batch)
        start = time.perf_counter()
        eng.infer(batch)
        if time.perf_counter() - start > 0.01:
            break
        eng.close()
    else:
        pytest.fail("model too light to tell a held GIL from a released one")
    with eng:

        def spin(seconds: float) -> int:
            count, deadline = 0, time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                count += 1
            return count

        alone = spin(0.4)
        stop = threading.Event()
        calls = 0

        def worker() -> None:
            nonlocal calls
            while not stop.is_set():
                eng.infer(batch)
                calls += 1

        thread = threading.Thread(target=worker)
        thread.start()
        try:
            time.sleep(0.05)
            during = spin(0.4)
        finally:
            stop.set()
            thread.join()
        assert calls >= 2
        # Were the GIL held for each call (tens of ms), the loop would get only the gaps between
        # calls: well under 20% of its speed. Released, it measures 50-100% on a busy 2-core machine.
        assert during > 0.3 * alone, f"main loop slowed to {during / alone:.0%} while infer ran"


def test_session_settings_keep_the_answers(tiny_model: Path, tmp_path: Path) -> None:
    batch = _distinct_batch(8)
    with OnnxRuntimeEngine(tiny_model, max_batch_size=8) as reference:
        expected = reference.infer(batch)
    optimized = tmp_path / "optimized.onnx"
    settings = [{"spinning": False}, {"optimization": "basic"}, {"optimized_model": optimized},
                {"optimized_model": optimized}]  # the second load reads the file the first one wrote
    for options in settings:
        with OnnxRuntimeEngine(tiny_model, max_batch_size=8, **options) as engine:
            np.testing.assert_array_equal(engine.infer(batch), expected)
        if "optimized_model" in options:
            assert optimized.is_file()
    with pytest.raises(ValueError, match="optimization must be one of"):
        OnnxRuntimeEngine(tiny_model, optimization="fastest")
