"""One frozen RunConfig per run, and the per-scenario presets behind its defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SCENARIOS = ("SingleStream", "MultiStream", "Server", "Offline")
TEST_MODES = ("PerformanceOnly", "AccuracyOnly", "SubmissionRun", "FindPeakPerformance")
ENGINES = ("auto", "onnxruntime", "torch", "tensorrt", "null")
LOOPS = ("uvloop", "asyncio")
PRECISIONS = ("int8", "fp16", "fp32")
# Which precisions each engine runs; the first is its default.
ENGINE_PRECISIONS = {"onnxruntime": ("int8", "fp32"), "torch": ("fp16", "fp32"), "tensorrt": ("int8",),
                     "null": ("int8", "fp16", "fp32")}
COMPLETIONS = ("thread", "hostfunc")
TORCH_COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "none")


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
    precision: str | None = None  # None: the engine's best (onnxruntime int8, torch fp16, tensorrt int8)
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
    inflight: int | None = None  # batches in flight: CPU engines 2, GPU engines 3 per device
    threads: int | None = None
    engine_timeout_s: float = 60.0
    gil_switch_us: int = 500  # sys.setswitchinterval during a run (see runner.gil_switch_interval)
    null_spec: str = ""
    gpus: int | None = None  # use the first N visible GPUs (default: all of them)
    start_from_device: bool = False  # mirror the QSL arena to each GPU (no host-to-device copy per batch)
    completion: str = "thread"  # how the loop learns a GPU batch finished: "thread" or "hostfunc"
    torch_compile: str = "default"  # torch.compile mode, or "none" for eager + CUDA graphs
    trace: bool = False
    submission_length: bool = False  # True: do not shorten the run to the quick preset
    audit_config: Path | None = None  # None: LoadGen reads no audit.config (never the working directory's)
    loadgen_memory_mb: float = 1024.0  # budget for the queries LoadGen generates from derived values
    strict: bool = False  # user.conf keys LoadGen would ignore are an error, not a note

    @property
    def preset(self) -> ScenarioPreset:
        """This scenario's defaults."""
        return PRESETS[self.scenario]
