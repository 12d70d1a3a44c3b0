"""The run configuration: one nested, frozen record the CLI builds once, with an enum for every choice list.

Sections follow who reads them: ``loadgen`` (what LoadGen is told), ``batching`` (the batcher and
how many batches are in flight), ``engine``, ``gpu`` and ``process`` (event loop and interpreter
knobs). A None value means "derive it" (from the scenario preset, user.conf or the engine's
measured latencies); the module that derives it says how.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self


class Choice(enum.StrEnum):
    """A choice list whose values are what users type; parsing ignores case."""

    @classmethod
    def parse(cls, text: str) -> Self:
        """The member spelled ``text`` in any case; ValueError names the valid spellings."""
        for member in cls:
            if member.value.lower() == text.lower():
                return member
        raise ValueError(f"{text!r}: use {', '.join(m.value for m in cls)}")


class Scenario(Choice):
    SINGLE_STREAM = "SingleStream"
    MULTI_STREAM = "MultiStream"
    SERVER = "Server"
    OFFLINE = "Offline"


class TestMode(Choice):
    __test__ = False  # not a pytest class

    PERFORMANCE_ONLY = "PerformanceOnly"
    ACCURACY_ONLY = "AccuracyOnly"
    SUBMISSION_RUN = "SubmissionRun"


class EngineKind(Choice):
    AUTO = "auto"
    ONNXRUNTIME = "onnxruntime"
    TORCH = "torch"
    TENSORRT = "tensorrt"
    NULL = "null"
    TRITON = "triton"  # Triton Inference Servers over gRPC (asyncbench.engines.triton_remote)

    @property
    def on_gpu(self) -> bool:
        """Whether this engine runs on NVIDIA GPUs (device-indexed batches, stream slots)."""
        return self in (EngineKind.TORCH, EngineKind.TENSORRT)


class Precision(Choice):
    INT8 = "int8"
    FP16 = "fp16"
    FP32 = "fp32"


class Loop(Choice):
    UVLOOP = "uvloop"
    ASYNCIO = "asyncio"


class Completion(Choice):
    """How the loop learns that a GPU batch finished (asyncbench.cuda.completion)."""

    THREAD = "thread"
    HOSTFUNC = "hostfunc"


class TorchCompile(Choice):
    DEFAULT = "default"
    MAX_AUTOTUNE_NO_CUDAGRAPHS = "max-autotune-no-cudagraphs"
    NONE = "none"


# Which precisions each engine runs; the first is its default.
ENGINE_PRECISIONS: dict[EngineKind, tuple[Precision, ...]] = {
    EngineKind.ONNXRUNTIME: (Precision.INT8, Precision.FP32),
    EngineKind.TORCH: (Precision.INT8, Precision.FP16, Precision.FP32),  # int8: 1.28-1.30x fp16 on the H200
    EngineKind.TENSORRT: (Precision.INT8,),
    EngineKind.NULL: (Precision.INT8, Precision.FP16, Precision.FP32),
    EngineKind.TRITON: (Precision.INT8,),  # the served model's own: `asyncbench serve --precision` chooses it
}


@dataclass(frozen=True)
class ScenarioPreset:
    """How a scenario is batched and how long a quick run lasts when the user says nothing."""

    max_batch_size: int | None  # None: the engine's own maximum
    max_queue_delay_us: int | None  # None: derived from the latency target and the engine's latency
    quick_min_duration_s: float
    quick_min_query_count: int


PRESETS: dict[Scenario, ScenarioPreset] = {
    # SingleStream: one sample per query, never wait.
    Scenario.SINGLE_STREAM: ScenarioPreset(1, 0, 10.0, 256),
    # MultiStream: a query's samples dispatch together at once (split only above the engine's best batch).
    # 662 queries: fewer and LoadGen's early stopping cannot bound the p99 (the run is INVALID).
    Scenario.MULTI_STREAM: ScenarioPreset(None, 0, 10.0, 662),
    # Server: Triton-style delay from the oldest pending sample, sized from the p99 target.
    Scenario.SERVER: ScenarioPreset(None, None, 10.0, 1024),
    # Offline: everything arrives at once: full batches, no delay.
    Scenario.OFFLINE: ScenarioPreset(None, 0, 10.0, 1),
}


@dataclass(frozen=True)
class LoadGenConfig:
    """What LoadGen is asked for; None leaves a value to user.conf, mlperf.conf or the harness's derivation."""

    test_mode: TestMode = TestMode.PERFORMANCE_ONLY
    target_qps: float | None = None  # Server target QPS / Offline expected QPS
    server_target_latency_ms: float | None = None  # Server's p99 bound (LoadGen's default: 10 ms)
    min_duration_s: float | None = None
    # A quick run's length instead of the preset's (tune's trials): unlike min_duration_s, a quick run made
    # shorter for an SUT too fast to stop quickly, or whose queries would not fit LoadGen's memory.
    quick_duration_s: float | None = None
    min_query_count: int | None = None
    performance_sample_count: int | None = None
    user_conf: Path | None = None
    mlperf_conf: Path | None = None
    audit_config: Path | None = None  # None: LoadGen reads no audit.config (never the working directory's)
    # (qsl, sample index, schedule) RNG seeds in place of the official ones: TEST05's alternate seeds, which
    # LoadGen reads only from TestSettings (an audit.config cannot set them).
    rng_seeds: tuple[int, int, int] | None = None
    trace: bool = False
    submission_length: bool = False  # True: do not shorten the run to the quick preset
    memory_mb: float = 1024.0  # budget for the queries LoadGen generates from derived values
    strict: bool = False  # user.conf keys LoadGen would ignore are an error, not a note
    # Where the explicit values above came from when not the command line: (setting, source) pairs such as
    # ("target_qps", "tuned, <file>"), so the settings line and the errors name the right source.
    sources: tuple[tuple[str, str], ...] = ()

    def source_of(self, setting: str) -> str:
        """What set this explicit value: "command line" unless ``sources`` says otherwise."""
        return dict(self.sources).get(setting, "command line")


@dataclass(frozen=True)
class BatchingConfig:
    """The batcher's limits and the batches in flight; None: the scenario preset or the engine's latencies."""

    max_batch_size: int | None = None
    max_queue_delay_us: int | None = None
    preferred_batch_sizes: tuple[int, ...] = ()
    inflight: int | None = None  # batches in flight: CPU engines 2, GPU engines 3 per device
    idle_dispatch: bool = True  # Server: an idle engine takes what is pending at once (BatchPolicy.idle_gap_ns)
    inline: bool = True  # SingleStream/MultiStream on a GPU: run each query on LoadGen's thread (the inline driver)


TRITON_MODEL = "mobilenet"  # the model name `asyncbench serve` serves and `--engine triton` asks for
# The key of a served model's shared-memory restriction (`serve --shm-token`); gRPC clients send the token in
# Triton's header for it.
TRITON_SHM_TOKEN_KEY = "shm-token"
TRITON_SHM_TOKEN_GRPC_HEADER = f"triton-grpc-protocol-{TRITON_SHM_TOKEN_KEY}"


@dataclass(frozen=True)
class EngineConfig:
    """Which engine runs the model, and how."""

    kind: EngineKind = EngineKind.AUTO
    precision: Precision | None = None  # None: the engine's best (onnxruntime int8, torch fp16, tensorrt int8)
    threads: int | None = None  # onnxruntime intra-op threads
    timeout_s: float = 60.0  # a batch taking longer fails the run as stalled
    null_spec: str = ""  # the null engine's latency model and injected faults
    torch_compile: TorchCompile = TorchCompile.DEFAULT
    triton_urls: tuple[str, ...] = ()  # --engine triton: the servers' gRPC HOST:PORT addresses
    triton_model: str = TRITON_MODEL
    triton_shm: bool = False  # the servers are on this host: samples go through system shared memory
    triton_shm_token: str | None = None  # the servers' shared-memory token (`serve --shm-token`, or the one it printed)


@dataclass(frozen=True)
class GpuConfig:
    """GPU engines only."""

    count: int | None = None  # use the first N visible GPUs (default: all of them)
    start_from_device: bool = False  # mirror the QSL arena to each GPU (no host-to-device copy per batch)
    completion: Completion = Completion.THREAD
    cuda_graphs: bool = True  # False: every batch launches its kernels one by one (kernel-level profiles)
    inference_streams: int | None = None  # concurrent compute streams per GPU (LWIS's gpu_inference_streams); None: 2
    copy_streams: int = 1  # host-to-device copy streams per GPU (LWIS's gpu_copy_streams)


@dataclass(frozen=True)
class ProcessConfig:
    """Interpreter and event-loop knobs applied for the duration of a run (asyncbench.runtime.process)."""

    loop: Loop = Loop.UVLOOP
    gil_switch_us: int = 500


@dataclass(frozen=True)
class RunConfig:
    """Everything one scenario's run needs, validated by the CLI before anything starts."""

    scenario: Scenario = Scenario.OFFLINE
    loadgen: LoadGenConfig = field(default_factory=LoadGenConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    gpu: GpuConfig = field(default_factory=GpuConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)

    @property
    def preset(self) -> ScenarioPreset:
        """This scenario's defaults."""
        return PRESETS[self.scenario]
