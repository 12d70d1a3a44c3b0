"""One frozen RunConfig per run, and the per-scenario presets behind its defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SCENARIOS = ("SingleStream", "MultiStream", "Server", "Offline")
TEST_MODES = ("PerformanceOnly", "AccuracyOnly", "SubmissionRun", "FindPeakPerformance")
ENGINES = ("auto", "onnxruntime", "torch", "tensorrt", "null")
LOOPS = ("uvloop", "asyncio")


@dataclass(frozen=True)
class ScenarioPreset:
    """How a scenario is batched and how long a quick run lasts when the user says nothing."""

    max_batch_size: int | None  # None: the engine's own maximum
    max_queue_delay_us: int | None  # None: derived from the latency target and the engine's latency
    quick_min_duration_s: float
    quick_min_query_count: int


PRESETS = {
    # SingleStream: one sample per query, never wait.
    "SingleStream": ScenarioPreset(1, 0, 10.0, 256),
    # MultiStream: a query's samples dispatch together at once (split only above the engine's best batch).
    "MultiStream": ScenarioPreset(None, 0, 10.0, 256),
    # Server: Triton-style delay from the oldest pending sample, sized from the p99 target.
    "Server": ScenarioPreset(None, None, 10.0, 1024),
    # Offline: everything arrives at once: full batches, no delay.
    "Offline": ScenarioPreset(None, 0, 10.0, 1),
}


@dataclass(frozen=True)
class RunConfig:
    """Everything one LoadGen run needs, validated by the CLI before anything starts."""

    scenario: str = "Offline"
    test_mode: str = "PerformanceOnly"
    engine: str = "auto"
    precision: str = "int8"
    target_qps: float | None = None
    max_batch_size: int | None = None
    max_queue_delay_us: int | None = None
    preferred_batch_sizes: tuple[int, ...] = ()
    min_duration_s: float | None = None
    min_query_count: int | None = None
    performance_sample_count: int | None = None
    user_conf: Path | None = None
    mlperf_conf: Path | None = None
    loop: str = "uvloop"
    inflight: int = 2
    threads: int | None = None
    engine_timeout_s: float = 60.0
    gil_switch_us: int = 500  # sys.setswitchinterval during a run (see runner.gil_switch_interval)
    null_spec: str = ""
    trace: bool = False
    submission_length: bool = False  # True: do not shorten the run to the quick preset

    @property
    def preset(self) -> ScenarioPreset:
        """This scenario's defaults."""
        return PRESETS[self.scenario]
