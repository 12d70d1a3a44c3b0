"""Command line: thin argument parsing over the library; every user error is one line."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from asyncbench.argtypes import non_negative_int, positive_float, positive_int, rate_qps
from asyncbench.config import (
    TRITON_MODEL,
    BatchingConfig,
    Choice,
    Completion,
    EngineConfig,
    EngineKind,
    GpuConfig,
    LoadGenConfig,
    Loop,
    Precision,
    ProcessConfig,
    RunConfig,
    Scenario,
    TestMode,
    TorchCompile,
)
from asyncbench.data import preprocess as preprocess_mod
from asyncbench.engines.sizing import engine_sizing
from asyncbench.engines.triton_remote import parse_urls
from asyncbench.errors import AsyncbenchError, ConfigError
from asyncbench.harness.commands import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Inputs,
    RunOutputs,
    SubmissionOptions,
    TuneOptions,
    audit_command,
    calibrate_command,
    check_command,
    evaluate_command,
    plot_command,
    prepare_command,
    report_command,
    run_command,
    serve_command,
    submission_command,
    tune_command,
)
from asyncbench.loadgen import accuracy as accuracy_mod
from asyncbench.paths import DATA_MAPS, BuildPaths
from asyncbench.serving.tritonserver import Endpoints, ServedModel, shm_token_for

BENCHMARKS = ("mobilenet",)


def exit_code(error: AsyncbenchError) -> int:
    """The process exit status for a deliberate error (every command line maps them the same way)."""
    return EXIT_USAGE if isinstance(error, ConfigError) else EXIT_FAILED


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad value in one line (usage stays in --help)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message} (see --help)")


def _benchmarks(text: str) -> str:
    names = [b.strip().lower() for b in text.split(",") if b.strip()]
    bad = [b for b in names if b not in BENCHMARKS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unsupported benchmark {','.join(bad) or text!r}: only 'mobilenet' exists")
    return ",".join(names)


def _scenarios(text: str) -> list[Scenario]:
    try:
        names = [Scenario.parse(n.strip()) for n in text.split(",") if n.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"unknown scenario {e}") from None
    if not names:
        raise argparse.ArgumentTypeError(f"no scenario in {text!r}: use {', '.join(Scenario)}")
    return names


def _choice(kind: type[Choice], what: str) -> Callable[[str], Choice]:
    """An argparse type for one enum's values, case-insensitive."""

    def parse(text: str) -> Choice:
        try:
            return kind.parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"unknown {what} {e}") from None

    return parse


def _urls(text: str) -> tuple[str, ...]:
    try:
        return parse_urls(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} does not exist or is not a file")
    return path


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(t) for t in text.split(",") if t.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes must be at least 1")
    return sizes


def _seeds(text: str) -> tuple[int, int, int]:
    """``v0.5`` (that round's official seeds) or three integers: qsl, sample index, schedule."""
    from asyncbench.harness.submission import V05_SEEDS

    if text.strip().lower() in ("v0.5", "0.5"):
        return V05_SEEDS
    try:
        qsl, index, schedule = (int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not v0.5 or QSL,SAMPLE_INDEX,SCHEDULE seeds") from None
    if min(qsl, index, schedule) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: seeds are 0 or more")
    return qsl, index, schedule


def _ignore(*args: object, **kwargs: object) -> None:
    """An option a command leaves out (see ``_add_run_arguments``)."""


def _add_run_arguments(p: argparse.ArgumentParser, for_tune: bool = False) -> None:
    """`run`: LoadGen scenarios; seed spellings (--scenarios=A,B, --test_mode) are accepted too.

    ``for_tune``: only the options a tuning run uses (its trials set the duration and the mode; it writes no
    JSON, timeline or trace); the others keep their run defaults so one RunConfig builder serves both.
    """
    _common(p)
    run_only: Callable[..., object] = _ignore if for_tune else p.add_argument
    p.add_argument("--scenario", "--scenarios", dest="scenarios", type=_scenarios, default=[Scenario.OFFLINE],
                   help="SingleStream, MultiStream, Server, Offline, or a comma list run one after another")
    run_only("--test-mode", "--test_mode", dest="test_mode", type=_choice(TestMode, "test mode"),
             default=TestMode.PERFORMANCE_ONLY, help=", ".join(TestMode))
    p.add_argument("--target-qps", type=rate_qps,  # tune refuses it with a hint, so it stays, unlisted
                   help=argparse.SUPPRESS if for_tune else "Server target QPS / Offline expected QPS")
    p.add_argument("--p99-ms", type=positive_float, help="Server p99 latency target in ms (LoadGen's default 10)")
    run_only("--config", type=_file,
             help="tuned settings from `asyncbench tune` (build/tune/systems/<system>.json); without it the "
                  "file for this system is used when there is one")
    p.add_argument("--engine", type=_choice(EngineKind, "engine"), default=EngineKind.AUTO,
                   help=", ".join(EngineKind))
    p.add_argument("--precision", type=_choice(Precision, "precision"),
                   help="default: the engine's best (onnxruntime int8, torch fp16, tensorrt int8)")
    p.add_argument("--max-batch-size", type=positive_int, help="largest batch the batcher forms")
    p.add_argument("--max-queue-delay-us", type=non_negative_int, help="batcher delay from the oldest pending sample")
    p.add_argument("--preferred-batch-sizes", type=_sizes, default=(), help="e.g. 8,16: dispatched as soon as formed")
    p.add_argument("--no-idle-dispatch", dest="idle_dispatch", action="store_false",
                   help="Server: wait out the queue delay even when the engine is idle (default: an idle engine "
                        "takes what is pending at once)")
    p.add_argument("--no-inline", dest="inline", action="store_false",
                   help="SingleStream/MultiStream on a GPU: send queries through the event loop like the other "
                        "scenarios (default: run each on LoadGen's issue thread and complete it there)")
    run_only("--min-duration", type=positive_float, help="seconds (default: a quick 10 s run)")
    p.add_argument("--min-query-count", type=positive_int)
    p.add_argument("--performance-sample-count", type=positive_int)
    p.add_argument("--user-conf", type=_file, help="user.conf applied after mlperf.conf")
    p.add_argument("--mlperf-conf", type=_file, help="mlperf.conf (default: LoadGen's built-in)")
    run_only("--log-dir", type=Path, help="root of run folders (default <build>/logs)")
    p.add_argument("--loop", type=_choice(Loop, "event loop"), default=Loop.UVLOOP, help="uvloop (default) or asyncio")
    p.add_argument("--inflight", type=positive_int,
                   help="batches in flight: CPU engines (default 2), or slots per GPU (default: inference "
                        "streams + 2; the null engine's modelled device: 4)")
    p.add_argument("--gpus", type=positive_int, help="use the first N visible GPUs (default: all)")
    p.add_argument("--inference-streams", type=positive_int,
                   help="GPU engines: concurrent compute streams per GPU, each with its own slots and CUDA graphs; "
                        "a batch goes to the least loaded one (default 2: the best Server result on an H200)")
    p.add_argument("--copy-streams", type=positive_int, default=1,
                   help="GPU engines: host-to-device copy streams per GPU (default 1)")
    p.add_argument("--start-from-device", action="store_true",
                   help="keep the QSL samples on each GPU instead of copying every batch from pinned host memory")
    p.add_argument("--completion", type=_choice(Completion, "completion"), default=Completion.THREAD,
                   help="how a finished GPU batch reaches the loop: thread (event synchronize, default) or hostfunc")
    p.add_argument("--cuda-graphs", choices=("on", "off"), default="on",
                   help="GPU engines: replay one CUDA graph per batch (on, default), or launch every kernel "
                        "(off: slower, but Nsight Compute and Nsight Systems see each kernel)")
    p.add_argument("--torch-compile", type=_choice(TorchCompile, "torch.compile mode"),
                   default=TorchCompile.DEFAULT,
                   help="torch engine: torch.compile mode, or none (eager + CUDA graphs, quick start)")
    p.add_argument("--threads", type=positive_int, help="onnxruntime intra-op threads")
    p.add_argument("--engine-timeout", type=positive_float, default=60.0,
                   help="seconds a batch may take before the run fails as stalled")
    p.add_argument("--gil-switch-us", type=positive_int, default=500,
                   help="Python's GIL time slice during the run, in us (default 500; Python's own is 5000)")
    p.add_argument("--triton-url", dest="triton_urls", type=_urls, default=(), metavar="HOST:PORT[,HOST:PORT]",
                   help="--engine triton: the Triton servers' gRPC addresses; each batch goes to the least loaded")
    p.add_argument("--triton-model", default=TRITON_MODEL, help="--engine triton: the served model's name "
                                                                "(default mobilenet, as `asyncbench serve` names it)")
    p.add_argument("--triton-shm", action="store_true",
                   help="--engine triton, servers on this host: pass samples through system shared memory")
    p.add_argument("--triton-shm-token", metavar="TOKEN",
                   help="--triton-shm with servers that restrict their shared memory (serve --shm-token, or the "
                        "token serve printed)")
    p.add_argument("--null", dest="null_spec", default="",
                   help="null engine model, e.g. fixed_us=50,per_sample_us=2,fail_after=10,stall_after=5; planted "
                        "faults for the audits: drift=1 (answers change run to run), cache=N (form=device)")
    run_only("--trace", action="store_true", help="write LoadGen's (large) trace log")
    run_only("--submission-length", action="store_true",
             help="use mlperf.conf's durations instead of the quick defaults")
    run_only("--audit-config", type=_file,
             help="apply this audit.config (a compliance test); LoadGen never reads ./audit.config otherwise")
    p.add_argument("--rng-seeds", type=_seeds, metavar="v0.5|QSL,INDEX,SCHEDULE",
                   help="LoadGen's RNG seeds instead of its official ones (v0.5: that round's, which `submission "
                        "--layout v0.5` uses)")
    p.add_argument("--loadgen-memory-mb", type=positive_float, default=1024.0,
                   help="memory the queries LoadGen generates may take when the harness derives the target or "
                        "expected latency (default 1024)")
    p.add_argument("--strict", action="store_true",
                   help="user.conf keys that LoadGen would ignore are an error (exit 2), an INVALID result exits 3, "
                        "accuracy below the target exits 4")
    run_only("--json", dest="json_out", metavar="FILE|-",
             help="also write every scenario's result.json record: to FILE (a JSON list), or - for stdout "
                  "(one line each)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines during the run")
    run_only("--nvtx", action="store_true",
             help="NVTX ranges per batch in the 'asyncbench' domain, for Nsight Systems (needs the nvtx package)")
    run_only("--timeline", type=Path, metavar="FILE.json",
             help="write a Chrome/Perfetto trace of every batch (several scenarios: FILE_<scenario>.json)")
    p.add_argument("--progress-every", type=positive_float, metavar="S",
                   help="seconds between progress lines (default: 1 on a terminal, 60 otherwise)")
    if for_tune:
        p.set_defaults(test_mode=TestMode.PERFORMANCE_ONLY, config=None, min_duration=None, trace=False,
                       submission_length=False, audit_config=None, json_out=None, nvtx=False, timeline=None,
                       log_dir=None)


def _common(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.add_argument("--build-dir", type=Path, default=Path("build"), help="build root (default: build)")
    if data:
        p.add_argument("--data-dir", type=Path, default=None, help="image root (default: <build>/data)")
        p.add_argument("--data-maps", type=Path, default=DATA_MAPS, help="folder holding imagenet/ and embedded/ maps")
        p.add_argument("--benchmarks", type=_benchmarks, default="mobilenet", help="seed compatibility: mobilenet")


def build_parser() -> argparse.ArgumentParser:
    """The full CLI (subcommands)."""
    parser = _Parser(prog="asyncbench", description="MLPerf Inference v0.5 MobileNet harness (asyncio).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("prepare", help="download the pinned wheels; build the fp32 model and the embedded photos")
    _common(p, data=False)
    p = sub.add_parser("preprocess", help="preprocess images (same as scripts/preprocess_data.py)")
    preprocess_mod.add_arguments(p)
    p = sub.add_parser("calibrate", help="calibrate INT8 on the calibration map; build the engine models")
    _common(p)
    p.add_argument("--method", default="percentile", choices=("minmax", "percentile", "entropy"),
                   help="activation range estimator (default percentile: best INT8/fp32 agreement measured)")
    p = sub.add_parser("evaluate", help="accuracy of the engine models on the validation map, without LoadGen")
    _common(p)
    p.add_argument("--model", choices=("int8", "fp32", "both"), default="both")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--threads", type=positive_int, default=None, help="onnxruntime intra-op threads")
    p = sub.add_parser("accuracy", help="top-1 from LoadGen's mlperf_log_accuracy.json")
    accuracy_mod.add_arguments(p)
    p = sub.add_parser("run", help="run LoadGen scenarios through the asyncio pipeline (the default command)")
    _add_run_arguments(p)
    p = sub.add_parser("tune", help="find the best Server QPS or MultiStream batching with repeated LoadGen tests")
    _add_run_arguments(p, for_tune=True)
    p.add_argument("--trial-duration", type=positive_float, default=10.0, help="seconds per trial (default 10)")
    p.add_argument("--grid", nargs="+", default=[], metavar="KEY=N,N",
                   help="batching settings to try: max_batch=32,64,128 delay_us=500,1000,2000")
    p.add_argument("--start-qps", type=rate_qps, help="Server: first rate tried (default: half the peak)")
    p.add_argument("--repeats", type=positive_int, default=3, help="VALID trials the reported setting needs")
    p.add_argument("--search-precision", type=positive_float, default=0.01,
                   help="Server: stop bisecting when VALID and INVALID rates are this close (default 0.01)")
    p.add_argument("--confirm", action="store_true", help="finish with one submission-length run at the best")
    p.add_argument("--tune-dir", type=Path, help="root of tuning folders (default <build>/tune)")
    p = sub.add_parser("audit", help="run one compliance test (TEST01, TEST04, TEST04-A, TEST04-B, TEST05) and "
                                     "verify it against this system's own runs")
    p.add_argument("test", metavar="TEST", help="TEST01, TEST04, TEST04-A, TEST04-B or TEST05")
    _add_run_arguments(p)
    p.add_argument("--reference", action="append", type=Path, default=[], metavar="RUN_DIR",
                   help="a run to compare with (repeat for TEST01's accuracy and performance runs); default: the "
                        "newest matching runs under --log-dir (TEST04-B: the newest TEST04-A audit)")
    p.add_argument("--audit-dir", type=Path, help="root of audit folders (default <build>/audits)")
    p = sub.add_parser("submission", help="a submission folder in v0.5's layout from this system's runs and audits "
                                          "(run where missing), checked; or --check a folder")
    _add_run_arguments(p)
    p.add_argument("--system", help="the system's name (systems/<system>.json, results/<system>/)")
    p.add_argument("--out", type=Path, help="folder to write <division>/<submitter>/ into")
    p.add_argument("--division", choices=("closed", "open"), default="closed")
    p.add_argument("--submitter", default="asyncbench", help="the submitter's name (default asyncbench)")
    p.add_argument("--layout", default="v0.5",
                   help="v0.5 (the seed's round, default) or v6.1 (the round of the LoadGen that runs here)")
    p.add_argument("--system-json", type=_file, help="system description keys that replace the measured ones")
    p.add_argument("--collect", action="store_true", help="take existing runs and audits only; run nothing")
    p.add_argument("--audit-dir", type=Path, help="root of audit folders (default <build>/audits)")
    p.add_argument("--check", type=Path, metavar="DIR", help="only check DIR (holding closed/ or open/) and exit")
    p = sub.add_parser("serve", help="serve an engine from a Triton Inference Server (for --engine triton runs, "
                                     "on this host or others)")
    _common(p)
    p.add_argument("--engine", type=_choice(EngineKind, "engine"), default=EngineKind.ONNXRUNTIME,
                   help="onnxruntime (default), torch, tensorrt or null: the engine each model instance runs")
    p.add_argument("--precision", type=_choice(Precision, "precision"), help="default: the engine's best")
    p.add_argument("--null", dest="null_spec", default="", help="null engine model, as for run")
    p.add_argument("--threads", type=positive_int, help="onnxruntime intra-op threads per instance")
    p.add_argument("--torch-compile", type=_choice(TorchCompile, "torch.compile mode"), default=TorchCompile.DEFAULT)
    p.add_argument("--instances", type=positive_int, default=1,
                   help="model instances (Triton instance_group count), each its own process and engine")
    p.add_argument("--max-batch-size", type=positive_int,
                   help="the model's max_batch_size (default: the engine's: CPU 32, GPU 1024, null 1024)")
    p.add_argument("--max-queue-delay-us", type=non_negative_int, default=0,
                   help="Triton's dynamic batcher delay (default 0: it joins only requests already queued)")
    p.add_argument("--no-dynamic-batching", action="store_true", help="run each request as it was sent")
    p.add_argument("--preferred-batch-sizes", type=_sizes, default=(), help="Triton's preferred_batch_size list")
    p.add_argument("--model-name", default=TRITON_MODEL, help=f"the served model's name (default {TRITON_MODEL})")
    p.add_argument("--host", default="127.0.0.1", help="address every endpoint binds (default 127.0.0.1; "
                                                        "0.0.0.0 serves other hosts)")
    p.add_argument("--grpc-port", type=positive_int, default=8001)
    p.add_argument("--http-port", type=positive_int, default=8000)
    p.add_argument("--metrics-port", type=positive_int, default=8002)
    p.add_argument("--shm-token", metavar="TOKEN",
                   help="clients must send TOKEN to use shared memory (default: none on loopback; a random one, "
                        "printed, when --host lets other hosts in)")
    p = sub.add_parser("report", help="tabulate result.json of run folders (or tune folders)")
    p.add_argument("paths", nargs="+", type=Path, metavar="RUN_DIR")
    p.add_argument("--csv", type=Path, help="also write the table as CSV")
    p = sub.add_parser("plot", help="PNG plots of a run folder or a tune folder (needs matplotlib)")
    p.add_argument("path", type=Path, metavar="RUN_DIR|TUNE_DIR")
    return parser


SUBCOMMANDS = ("prepare", "preprocess", "calibrate", "evaluate", "accuracy", "run", "tune", "audit", "submission",
               "serve", "report", "plot")


def _with_default_command(argv: Sequence[str]) -> list[str]:
    """`python -m asyncbench --scenario Server ...` means `run`."""
    argv = list(argv)
    if argv and argv[0] in ("-h", "--help"):
        return argv
    return argv if argv and argv[0] in SUBCOMMANDS else ["run", *argv]


def run_configs(args: argparse.Namespace) -> list[RunConfig]:
    """The one configuration per scenario asked for, built from the parsed command line."""
    if args.null_spec and args.engine is not EngineKind.NULL:
        raise ConfigError(f"--null {args.null_spec} models the null engine, but --engine is {args.engine}: "
                          f"add --engine null, or drop --null")
    if args.engine is EngineKind.TRITON and not args.triton_urls:
        raise ConfigError("--engine triton needs --triton-url HOST:PORT (a server `python -m asyncbench serve` "
                          "started, or any Triton serving the model)")
    if args.engine is not EngineKind.TRITON and (args.triton_urls or args.triton_shm):
        raise ConfigError(f"--triton-url / --triton-shm are for --engine triton, but --engine is {args.engine}")
    if args.triton_shm_token is not None and not args.triton_shm:
        raise ConfigError("--triton-shm-token is the servers' shared-memory token: it goes with --triton-shm")
    loadgen = LoadGenConfig(
        test_mode=args.test_mode, target_qps=args.target_qps, server_target_latency_ms=args.p99_ms,
        min_duration_s=args.min_duration,
        min_query_count=args.min_query_count, performance_sample_count=args.performance_sample_count,
        user_conf=args.user_conf, mlperf_conf=args.mlperf_conf, audit_config=args.audit_config, trace=args.trace,
        submission_length=args.submission_length, memory_mb=args.loadgen_memory_mb, strict=args.strict,
        rng_seeds=args.rng_seeds)
    batching = BatchingConfig(max_batch_size=args.max_batch_size, max_queue_delay_us=args.max_queue_delay_us,
                              preferred_batch_sizes=args.preferred_batch_sizes, inflight=args.inflight,
                              idle_dispatch=args.idle_dispatch, inline=args.inline)
    engine = EngineConfig(kind=args.engine, precision=args.precision, threads=args.threads,
                          timeout_s=args.engine_timeout, null_spec=args.null_spec, torch_compile=args.torch_compile,
                          triton_urls=args.triton_urls, triton_model=args.triton_model, triton_shm=args.triton_shm,
                          triton_shm_token=args.triton_shm_token)
    gpu = GpuConfig(count=args.gpus, start_from_device=args.start_from_device, completion=args.completion,
                    cuda_graphs=args.cuda_graphs == "on", inference_streams=args.inference_streams,
                    copy_streams=args.copy_streams)
    process = ProcessConfig(loop=args.loop, gil_switch_us=args.gil_switch_us)
    return [RunConfig(scenario, loadgen, batching, engine, gpu, process) for scenario in args.scenarios]


def served_model(args: argparse.Namespace) -> ServedModel:
    """What `serve` serves, from its command line."""
    if args.engine in (EngineKind.AUTO, EngineKind.TRITON):
        raise ConfigError(f"serve --engine {args.engine}: name the engine the server runs (onnxruntime, torch, "
                          f"tensorrt or null)")
    if args.null_spec and args.engine is not EngineKind.NULL:
        raise ConfigError(f"--null {args.null_spec} models the null engine, but --engine is {args.engine}")
    default_max = engine_sizing(RunConfig(), args.engine).max_batch_size
    return ServedModel(
        engine=str(args.engine), max_batch_size=args.max_batch_size or default_max, name=args.model_name,
        instances=args.instances, precision=None if args.precision is None else str(args.precision),
        null_spec=args.null_spec, threads=args.threads, torch_compile=str(args.torch_compile),
        build_dir=str(args.build_dir.resolve()),
        max_queue_delay_us=None if args.no_dynamic_batching else args.max_queue_delay_us,
        preferred_batch_sizes=args.preferred_batch_sizes)


def _inputs(args: argparse.Namespace) -> Inputs:
    return Inputs(BuildPaths(args.build_dir), args.data_dir, args.data_maps)


def _progress_every(args: argparse.Namespace) -> float | None:
    """Seconds between progress lines, or None with --no-progress."""
    from asyncbench.harness.progress import progress_interval

    return None if args.no_progress else progress_interval(sys.stderr, args.progress_every)


def _command(args: argparse.Namespace) -> int:
    """The one harness function for the parsed subcommand."""
    if args.command == "preprocess":
        return preprocess_mod.run(args)
    if args.command == "accuracy":
        return accuracy_mod.run(args)
    if args.command == "report":
        return report_command(args.paths, args.csv)
    if args.command == "plot":
        return plot_command(args.path)
    if args.command == "prepare":
        return prepare_command(BuildPaths(args.build_dir))
    if args.command == "calibrate":
        return calibrate_command(_inputs(args), args.method)
    if args.command == "evaluate":
        return evaluate_command(_inputs(args), args.model, args.batch_size, args.threads)
    if args.command == "serve":
        return serve_command(served_model(args), Endpoints(args.host, args.grpc_port, args.http_port,
                                                           args.metrics_port, shm_token_for(args.host, args.shm_token)),
                             _inputs(args))
    if args.command == "tune":
        if len(args.scenarios) != 1:
            raise ConfigError("tune takes one --scenario: Server or MultiStream")
        (cfg,) = run_configs(args)
        return tune_command(cfg, _inputs(args), TuneOptions(
            trial_duration_s=args.trial_duration, grid=tuple(args.grid), start_qps=args.start_qps,
            repeats=args.repeats, precision=args.search_precision, confirm=args.confirm, tune_dir=args.tune_dir,
            progress_every_s=_progress_every(args)))
    outputs = RunOutputs(log_dir=args.log_dir, json_out=args.json_out, timeline=args.timeline, nvtx=args.nvtx,
                         progress_every_s=_progress_every(args), tuned_config=args.config, strict=args.strict)
    if args.command == "audit":
        if len(args.scenarios) != 1:
            raise ConfigError(f"audit {args.test} takes one --scenario: audit each scenario on its own")
        (cfg,) = run_configs(args)
        return audit_command(args.test, cfg, _inputs(args), outputs, args.reference, args.audit_dir)
    if args.command == "submission":
        if args.check is not None:
            return check_command(args.check)
        if not args.system or args.out is None:
            raise ConfigError("submission needs --system NAME and --out DIR (or --check DIR)")
        return submission_command(run_configs(args), _inputs(args), outputs, SubmissionOptions(
            args.system, args.out, args.division, args.submitter, args.system_json, args.layout, args.collect,
            args.audit_dir))
    return run_command(run_configs(args), _inputs(args), outputs)


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the process exit code."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)  # until a run installs its own clean abort
    try:
        return _command(build_parser().parse_args(_with_default_command(sys.argv[1:] if argv is None else argv)))
    except AsyncbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def console_main() -> None:
    """The `asyncbench` console script."""
    sys.exit(main())
