"""NullEngine: its latency model, injected failures and stalls, GIL release, and its CLI spec."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from asyncbench.engines.base import Engine, EngineError
from asyncbench.engines.null import NullEngine, parse_null_spec
from asyncbench.errors import ConfigError


def _batch(n: int) -> np.ndarray:
    return np.ones((n, 224, 224, 4), np.int8)


def _timed_infer(engine: NullEngine, n: int) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    result = engine.infer(_batch(n))
    return result, time.perf_counter() - start


def test_is_an_engine_answering_class_zero() -> None:
    engine = NullEngine(max_batch_size=8)
    assert isinstance(engine, Engine)
    assert (engine.name, engine.device) == ("null", "cpu")
    result = engine.infer(_batch(3))
    assert result.dtype == np.int32 and result.shape == (3,) and not result.any()


def test_latency_model_is_honoured() -> None:
    engine = NullEngine(fixed_s=0.004, per_sample_s=0.002)
    assert engine.expected_latency(4) == pytest.approx(0.012)
    _, elapsed = _timed_infer(engine, 4)
    assert 0.012 <= elapsed < 0.012 + 0.2  # sleeping never ends early; a loaded machine may wake it late
    recorded = engine.latency(4)
    assert recorded is not None and 0.012 <= recorded <= elapsed
    assert engine.latency(5) is None


def test_zero_latency_is_fast_and_warmup_works() -> None:
    engine = NullEngine(max_batch_size=4)
    _, elapsed = _timed_infer(engine, 1)
    assert elapsed < 0.1
    assert set(engine.warmup([1, 4])) == {1, 4}


@pytest.mark.parametrize(
    ("batch", "error"),
    [
        (np.ones((2, 224, 224, 4), np.uint8), ValueError),
        (np.ones((2, 224, 224, 3), np.int8), ValueError),
        (np.ones((3, 224, 224, 4), np.int8), ValueError),  # above max_batch_size
        ([[0]], TypeError),
    ],
)
def test_rejects_bad_batches(batch: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        NullEngine(max_batch_size=2).infer(batch)  # type: ignore[arg-type]


def test_failure_is_injected_at_the_given_batch_only() -> None:
    engine = NullEngine(fail_after_batches=2)
    engine.infer(_batch(1))
    engine.infer(_batch(1))
    with pytest.raises(EngineError, match="injected failure on batch 2"):
        engine.infer(_batch(1))
    assert engine.infer(_batch(1)).shape == (1,)


def test_bad_batches_do_not_count() -> None:
    engine = NullEngine(max_batch_size=2, fail_after_batches=0)
    with pytest.raises(ValueError):
        engine.infer(_batch(3))
    with pytest.raises(EngineError):
        engine.infer(_batch(1))


def test_short_stall_delays_one_batch() -> None:
    engine = NullEngine(stall_after_batches=1, stall_s=0.05)
    assert _timed_infer(engine, 1)[1] < 0.05
    result, elapsed = _timed_infer(engine, 1)
    assert elapsed >= 0.05 and result.shape == (1,)
    assert _timed_infer(engine, 1)[1] < 0.05


def test_close_releases_a_stalled_batch() -> None:
    engine = NullEngine(stall_after_batches=0, stall_s=60)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            engine.infer(_batch(1))
        except EngineError as e:
            errors.append(e)

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.05)
    assert worker.is_alive()
    start = time.perf_counter()
    engine.close()
    worker.join(timeout=5)
    assert not worker.is_alive() and time.perf_counter() - start < 1
    assert len(errors) == 1 and "closed while batch 0" in str(errors[0])
    with pytest.raises(EngineError, match="closed"):
        engine.infer(_batch(1))


def test_wait_releases_the_gil() -> None:
    engine = NullEngine(fixed_s=0.2)
    started = threading.Event()

    def call() -> None:
        started.set()
        engine.infer(_batch(1))

    worker = threading.Thread(target=call)
    worker.start()
    started.wait()
    spins = 0
    while worker.is_alive():  # a wait that held the GIL would freeze this loop for 0.2 s
        spins += 1
    worker.join()
    assert spins > 10_000


def test_constructor_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        NullEngine(max_batch_size=0)
    with pytest.raises(ValueError, match="per_sample_s"):
        NullEngine(per_sample_s=-1)
    with pytest.raises(ValueError, match="fail_after_batches"):
        NullEngine(fail_after_batches=-1)


def test_spec_parses_into_engine_arguments() -> None:
    spec = parse_null_spec("fixed_us=50, per_sample_us=2,fail_after=10,stall_after=5,stall_s=1.5")
    assert spec == {
        "fixed_s": pytest.approx(50e-6),
        "per_sample_s": pytest.approx(2e-6),
        "fail_after_batches": 10,
        "stall_after_batches": 5,
        "stall_s": 1.5,
    }
    engine = NullEngine(**spec)
    assert engine.expected_latency(10) == pytest.approx(70e-6)
    assert parse_null_spec("") == {}


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("fixed_ms=5", ["'fixed_ms'", "fixed_us, per_sample_us"]),
        ("fixed_us=abc", ["fixed_us", "'abc'"]),
        ("per_sample_us=-1", ["per_sample_us", ">= 0"]),
        ("fixed_us=nan", ["fixed_us"]),
        ("fail_after=1.5", ["fail_after", "integer"]),
        ("fixed_us", ["key=value"]),
        ("fixed_us=1,fixed_us=2", ["twice"]),
    ],
)
def test_spec_errors_name_the_problem(text: str, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_null_spec(text)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message
