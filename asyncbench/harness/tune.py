"""`asyncbench tune`: find the best Server QPS or MultiStream batching with real LoadGen tests.

One engine is built and warmed up once; every trial is a fresh LoadGen test in the same process,
logged in its own folder under ``build/tune/<timestamp>_<scenario>/trials/``.

- Server: the target QPS doubles until a trial is INVALID, then bisects until the VALID and the
  INVALID rates are within ``--precision`` (2%) of each other. p99 varies from run to run, so the
  INVALID bound is run once more before it is trusted (VALID then: the search goes on above it),
  and the rate reported must be VALID in ``--repeats`` (3) trials; a repeat that fails makes it the
  new upper bound and the search goes on below it. With ``--grid``, every batch cap x queue delay
  runs at that rate, the setting with the lowest p99 wins, and a second search with it starts
  from that rate; the better of the two confirmed rates is kept. Without ``--grid`` (and without
  ``--max-queue-delay-us``) half and twice the queue delay the policy derived are each tried once
  one precision step above the rate found; a VALID one is searched upward from there, and the
  second search gives up once its bound falls to the rate already found.
- MultiStream: every setting of the grid (default: batch caps 8, 4, 2, 1) runs once; the lowest
  VALID p99 wins and is repeated to confirm it.

Outputs: ``trials.csv`` (one row per trial), ``best.user.conf``, ``tuned.json``, and the
per-system file ``build/tune/systems/<system>.json`` that later runs on the same system and
engine pick up (printed as a note; explicit command-line values win).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncbench.checksum import sha256_file
from asyncbench.config import RunConfig, Scenario, TestMode
from asyncbench.data.dataset import Dataset
from asyncbench.engines.base import Engine
from asyncbench.engines.sizing import engine_peak_qps
from asyncbench.errors import ConfigError, UserError
from asyncbench.fileio import write_bytes_atomic
from asyncbench.harness.plan import max_target_qps
from asyncbench.harness.run import run_scenario
from asyncbench.host import cpu_model, gpus
from asyncbench.loadgen.sut import INTERRUPTED
from asyncbench.model.profiles import source_model_path
from asyncbench.paths import BuildPaths

DEFAULT_MULTISTREAM_GRID: dict[str, tuple[int, ...]] = {"max_batch": (8, 4, 2, 1)}
DEFAULT_SERVER_DELAYS_US = (500, 2000)  # the delays a Server tune tries when the policy derived none
TRIAL_COLUMNS = ("trial", "phase", "scenario", "target_qps", "max_batch_size", "max_queue_delay_us", "validity",
                 "reasons", "metric", "p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "early_stopping_met",
                 "early_stopping", "batch_sizes", "seconds", "log_dir")


@dataclass(frozen=True)
class Setting:
    """What a trial varies: the rate (Server) and the batcher's cap and delay (None: the preset's)."""

    target_qps: float | None = None
    max_batch_size: int | None = None
    max_queue_delay_us: int | None = None


@dataclass(frozen=True)
class Trial:
    """One LoadGen test's outcome, as trials.csv records it."""

    number: int
    phase: str
    setting: Setting
    validity: str  # VALID, INVALID or FAILED
    p99_ms: float | None
    row: dict[str, object]  # every trials.csv column

    @property
    def valid(self) -> bool:
        return self.validity == "VALID"


RunTrial = Callable[[str, Setting], Trial]  # (phase, setting) -> trial


def parse_grid(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """``["max_batch=32,64", "delay_us=500,1000"]`` -> ``{"max_batch": (32, 64), "delay_us": (500, 1000)}``."""
    grid: dict[str, tuple[int, ...]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or key not in ("max_batch", "delay_us"):
            raise ConfigError(f"--grid {item!r}: use max_batch=N,N,... and/or delay_us=N,N,...")
        try:
            numbers = tuple(int(v) for v in values.split(",") if v.strip())
        except ValueError:
            raise ConfigError(f"--grid {item!r}: the values must be integers") from None
        if not numbers or min(numbers) < (1 if key == "max_batch" else 0):
            raise ConfigError(f"--grid {item!r}: give at least one value, max_batch >= 1, delay_us >= 0")
        grid[key] = numbers
    return grid


def delay_grid(trials: Sequence[Trial], qps: float) -> dict[str, tuple[int, ...]]:
    """Queue delays to try beside the rate found: half and twice what the policy derived there.

    The policy's delay comes from a model of the engine and the harness; whether a shorter or a
    longer wait carries more load is measured instead (the cap stays the policy's).
    """
    at_rate = [t for t in trials if t.setting.target_qps == qps and t.valid]
    value = at_rate[-1].row["max_queue_delay_us"] if at_rate else None
    derived = value if isinstance(value, int) else 0
    delays = (derived // 2, derived * 2) if derived else DEFAULT_SERVER_DELAYS_US
    return {"delay_us": tuple(sorted(set(delays) - {derived}))}


def grid_settings(grid: dict[str, tuple[int, ...]], qps: float | None) -> list[Setting]:
    """Every max_batch x delay_us combination at this rate (a missing key: the preset decides)."""
    batches: Iterable[int | None] = grid.get("max_batch") or (None,)
    delays: Iterable[int | None] = grid.get("delay_us") or (None,)
    return [Setting(qps, b, d) for b in batches for d in delays]


class ServerSearch:
    """Doubling, bisection and confirmation over trials; pure logic, driven by a ``RunTrial``."""

    def __init__(self, run: RunTrial, precision: float = 0.02, repeats: int = 3, max_trials: int = 60,
                 ceiling: float | None = None) -> None:
        self.run, self.precision, self.repeats, self.max_trials = run, precision, repeats, max_trials
        # The highest rate a trial may ask for (LoadGen's memory for its queries), on the 0.1 QPS grid of the rates.
        self.ceiling = None if ceiling is None else math.floor(ceiling * 10) / 10
        self.trials: list[Trial] = []

    def _trial(self, phase: str, setting: Setting) -> Trial:
        if len(self.trials) >= self.max_trials:
            raise UserError(f"tuning stopped after {self.max_trials} trials without a confirmed rate: "
                              f"the results vary too much run to run; try a longer --trial-duration")
        trial = self.run(phase, setting)
        self.trials.append(trial)
        return trial

    def _outcomes(self, base: Setting, qps: float) -> list[bool]:
        return [t.valid for t in self.trials if t.setting == dataclasses.replace(base, target_qps=qps)]

    def find(self, base: Setting, start: float, lo: float = 0.0, phase: str = "search",
             growth: float = 2.0, beat: float = 0.0) -> float:
        """The highest rate VALID in ``repeats`` trials (0 if none), searching from ``start``.

        ``lo`` is a rate already known VALID with this setting (the search then only goes up).
        ``beat``: a rate another setting already reached; once the bound falls to it, this setting
        cannot do better and the search ends with 0 instead of searching further down.
        """
        hi: float | None = None
        known = lo  # VALID before this search (a probe run outside it): a floor it keeps after a failed repeat
        rechecked: set[float] = set()
        qps = min(start, self.ceiling) if self.ceiling else start
        while True:
            if qps <= beat:  # nothing this setting could still show would beat the other one
                return 0.0
            trial = self._trial(phase, dataclasses.replace(base, target_qps=qps))
            if trial.valid:
                lo = max(lo, qps)
                if hi is not None and qps >= hi:  # the bound was a run that happened to miss: the next
                    hi = min((q for q in self._rates(base)  # INVALID rate above takes its place
                              if q > qps and not all(self._outcomes(base, q))), default=None)
            else:
                hi = qps if hi is None else min(hi, qps)
            if hi is None and self.ceiling is not None and qps >= self.ceiling:
                if self._confirm(base, qps, phase):
                    return qps  # VALID at the highest rate LoadGen's memory allows
                hi = qps
            if hi is None:
                qps = round(qps * growth, 1)
                if self.ceiling is not None:
                    qps = min(qps, self.ceiling)
                continue
            if lo == 0.0:
                if hi < 1.0:
                    return 0.0
                qps = round(hi / 2, 1)
                continue
            if hi - lo > self.precision * lo:
                qps = round((lo + hi) / 2, 1)
                continue
            if hi not in rechecked:  # one INVALID run bounds the search: run it once more before trusting it
                rechecked.add(hi)
                qps = hi
                continue
            if lo <= beat:  # the interval left holds nothing above the rate to beat
                return 0.0
            confirmed = self._confirm(base, lo, phase)
            if confirmed:
                return lo
            hi = lo  # it failed a repeat: the bound moves below it
            lower = [q for q in self._rates(base) if q < hi and all(self._outcomes(base, q))]
            # The rate to beat is a floor too: below it this setting cannot win, so the search stays above it.
            lo = max([*lower, *([known] if known < hi else []), beat], default=0.0)
            qps = round((lo + hi) / 2, 1) if lo else round(hi / 2, 1)

    def _rates(self, base: Setting) -> set[float]:
        fields = dataclasses.replace(base, target_qps=None)
        return {t.setting.target_qps for t in self.trials
                if t.setting.target_qps is not None and dataclasses.replace(t.setting, target_qps=None) == fields}

    def _confirm(self, base: Setting, qps: float, phase: str) -> bool:
        """Repeat ``qps`` until it has ``repeats`` VALID trials; False at its first INVALID one."""
        while True:
            outcomes = self._outcomes(base, qps)
            if not all(outcomes):
                return False
            if len(outcomes) >= self.repeats:
                return True
            self._trial(f"{phase}-confirm", dataclasses.replace(base, target_qps=qps))


def best_of_grid(trials: Sequence[Trial]) -> Trial | None:
    """The VALID trial with the lowest p99 (ties: the larger batch cap, then the shorter delay)."""
    valid = [t for t in trials if t.valid and t.p99_ms is not None]
    return min(valid, key=lambda t: (t.p99_ms, -(t.setting.max_batch_size or 0), t.setting.max_queue_delay_us or 0),
               default=None)


def system_id(device: str, gpu_names: Sequence[str] | None, cpu: str, cores: int | None) -> str:
    """The system a tuned setting belongs to: GPU model x count for a GPU engine, else CPU model x cores."""
    if device.startswith("cuda") and gpu_names:
        count = len(device.split(","))
        name = re.sub(r" \(driver.*\)$", "", gpu_names[0])
        return f"{name} x{count}"
    return f"{cpu} x{cores} cores"


def system_file(root: Path, system: str) -> Path:
    """``<root>/systems/<system>.json`` with the name made safe for a file name."""
    return root / "systems" / (re.sub(r"[^A-Za-z0-9._-]+", "_", system).strip("_") + ".json")


def tuning_identity(cfg: RunConfig, engine: Engine, model_sha256: str | None) -> dict[str, object]:
    """What a tuned setting holds for: the engine and every option that changes its speed.

    A tune of ``--null fixed_us=2000 --max-batch-size 16`` says nothing about a plain null engine,
    nor one of the int8 model about the fp32 one or about other weights: a later run takes tuned
    values only when all of these match. ``model_sha256`` identifies the weights (None: the null engine).
    """
    b, e, g = cfg.batching, cfg.engine, cfg.gpu
    return {"engine": engine.name, "model_sha256": model_sha256, "null": e.null_spec or None,
            "threads": e.threads, "torch_compile": str(e.torch_compile), "gpus": g.count,
            "cuda_graphs": g.cuda_graphs, "start_from_device": g.start_from_device, "completion": str(g.completion),
            "max_batch_size": b.max_batch_size, "max_queue_delay_us": b.max_queue_delay_us,
            "preferred_batch_sizes": list(b.preferred_batch_sizes), "inflight": b.inflight,
            "idle_dispatch": b.idle_dispatch, "inline": b.inline}


def model_sha256(engine: Engine, paths: BuildPaths) -> str | None:
    """The weights an engine runs, for ``tuning_identity``: the source model and the calibration cache (None: null)."""
    if engine.name == "null":
        return None
    digest = hashlib.sha256(sha256_file(source_model_path(paths)).encode())
    if paths.calibration_cache.is_file():
        digest.update(sha256_file(paths.calibration_cache).encode())
    return digest.hexdigest()[:16]


def record_tuned(path: Path, system: str, identity: dict[str, object], scenario: str,
                 values: dict[str, object]) -> None:
    """Add (or replace) the tuned values for this engine configuration and scenario in the per-system file."""
    data: dict[str, Any] = {"system": system, "tuned": []}
    if path.is_file():
        data = _read_tuned_file(path)
    kept = [t for t in data.get("tuned", []) if not (t.get("identity") == identity and t.get("scenario") == scenario)]
    data["tuned"] = [*kept, {"identity": identity, "scenario": scenario, "values": values}]
    data.pop("engines", None)  # the older layout, keyed by engine name alone: those values cannot be matched
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, (json.dumps(data, indent=1) + "\n").encode())


def _read_tuned_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the tuned config {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a tuned config `asyncbench tune` wrote")
    return data


def tuned_values(path: Path, identity: dict[str, object], scenario: str) -> dict[str, Any] | None:
    """What a tuning run recorded for exactly this engine configuration and scenario (None if nothing)."""
    for entry in _read_tuned_file(path).get("tuned", []):
        if isinstance(entry, dict) and entry.get("identity") == identity and entry.get("scenario") == str(scenario):
            values = entry.get("values")
            return values if isinstance(values, dict) else None
    return None


def this_system(engine: Engine) -> str:
    """The system id of the machine the engine runs on (see ``system_id``)."""
    return system_id(engine.device, gpus() if engine.device.startswith("cuda") else None, cpu_model(), os.cpu_count())


def with_tuned(cfg: RunConfig, engine: Engine, tune_root: Path, explicit: Path | None, identity: dict[str, object],
               run_duration_s: float) -> tuple[RunConfig, str | None]:
    """``cfg`` with the tuned settings for this system and engine configuration, and a note saying which.

    ``explicit`` is ``--config``'s file, else the system's under ``tune_root`` is read.
    ``run_duration_s`` is this run's minimum duration: see ``apply_tuned``.
    """
    path = explicit or system_file(tune_root, this_system(engine))
    if explicit is None and not path.is_file():
        return cfg, None
    values = tuned_values(path, identity, str(cfg.scenario))
    if values is None:
        return cfg, (f"{path} has no tuned {cfg.scenario} settings for {engine.name} with these options"
                     if explicit else None)
    source = f"tuned, {path.name}"
    tuned, taken, left = apply_tuned(cfg, values, run_duration_s, source)
    if not taken and not left:
        return cfg, None
    note = f"tuned settings from {path} ({values.get('tuned_at', 'date unknown')})"
    if taken:
        note += f": {', '.join(taken)}; values given on the command line win"
    return tuned, "; ".join([note, *left])


def apply_tuned(cfg: RunConfig, values: dict[str, Any], run_duration_s: float | None = None,
                source: str = "tuned") -> tuple[RunConfig, list[str], list[str]]:
    """``cfg`` with the tuned values where the command line left them unset; what was taken; what was not, and why.

    A Server target QPS is only evidence for runs as long as the trials that found it (p99 over a
    longer run meets more of the tail): it is applied when the run is no longer than the tune's
    trials (or its ``--confirm`` run), and otherwise left out with a note; the batching values apply either way.
    """
    taken: list[str] = []
    left: list[str] = []
    loadgen, batching = cfg.loadgen, cfg.batching
    if cfg.scenario == Scenario.SERVER and loadgen.target_qps is None and values.get("target_qps"):
        covered = values.get("confirmed_duration_s") or values.get("trial_duration_s")
        if run_duration_s is not None and covered is not None and run_duration_s > float(covered) * 1.001:
            left.append(f"its target QPS {values['target_qps']:g} is not applied: it was VALID in {covered:g} s "
                        f"trials and this run lasts {run_duration_s:g} s (tune with --trial-duration "
                        f"{run_duration_s:g} or --confirm, or pass --target-qps)")
        else:
            loadgen = dataclasses.replace(loadgen, target_qps=float(values["target_qps"]),
                                          sources=(*loadgen.sources, ("target_qps", source)))
            taken.append(f"target QPS {values['target_qps']:g}")
    if batching.max_batch_size is None and values.get("max_batch_size"):
        batching = dataclasses.replace(batching, max_batch_size=int(values["max_batch_size"]))
        taken.append(f"max batch {values['max_batch_size']}")
    if batching.max_queue_delay_us is None and values.get("max_queue_delay_us") is not None:
        batching = dataclasses.replace(batching, max_queue_delay_us=int(values["max_queue_delay_us"]))
        taken.append(f"max queue delay {values['max_queue_delay_us']} us")
    return dataclasses.replace(cfg, loadgen=loadgen, batching=batching), taken, left


def trial_row(number: int, phase: str, setting: Setting, record: dict[str, Any], seconds: float) -> dict[str, object]:
    """One trials.csv row from a run's result.json record."""
    latency = record["latency_ns"]
    batching = record["batching"]

    def ms(key: str) -> float | None:
        return round(latency[key] / 1e6, 4) if key in latency else None

    verdict = record["result"]["early_stopping"]
    return {
        "trial": number, "phase": phase, "scenario": record["config"]["scenario"],
        "target_qps": setting.target_qps, "max_batch_size": batching["max_batch_size"],
        "max_queue_delay_us": batching["max_queue_delay_us"], "validity": record["result"]["validity"],
        "reasons": " | ".join(record["result"]["reasons"]),
        "metric": record["metric"]["value"] if record["metric"] else None,
        "p50_ms": ms("p50"), "p90_ms": ms("p90"), "p99_ms": ms("p99"), "p99.9_ms": ms("p99.9"),
        "early_stopping_met": verdict["met"], "early_stopping": " | ".join(verdict["verdict"]),
        "batch_sizes": " ".join(f"{b}x{n}" for b, n in record["batch_sizes"].items()),
        "seconds": round(seconds, 2), "log_dir": record["log_dir"],
    }


class TrialLog:
    """trials.csv, appended and flushed trial by trial so an interrupted tuning run keeps what it measured."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("w", newline="") as f:
            csv.DictWriter(f, TRIAL_COLUMNS).writeheader()

    def add(self, row: dict[str, object]) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, TRIAL_COLUMNS).writerow(row)


def progress_line(trial: Trial, scenario: str) -> str:
    """The one line printed per trial."""
    s = trial.setting
    rate = f"{s.target_qps:,.0f} QPS, " if s.target_qps is not None else ""
    p99 = f"p99 {trial.p99_ms:.3f} ms" if trial.p99_ms is not None else "no p99"
    return (f"trial {trial.number:3d} [{trial.phase}] {scenario}: {rate}max batch {trial.row['max_batch_size']}, "
            f"delay {trial.row['max_queue_delay_us']} us -> {trial.validity}, {p99}")


def new_tune_dir(root: Path, scenario: str) -> Path:
    """``<root>/<timestamp>_<scenario>/`` with its trials folder."""
    path = root / f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}_{scenario}"
    (path / "trials").mkdir(parents=True, exist_ok=False)
    return path


def trial_config(base: RunConfig, setting: Setting, duration_s: float) -> RunConfig:
    """The RunConfig of one trial: the base with this trial's rate, batching and duration."""
    # A quick run's length, so a trial of an SUT too fast to stop quickly is shortened instead of running out
    # of LoadGen's bounded queries (INVALID); a submission-length tune keeps it as the minimum duration.
    submission = base.loadgen.submission_length or base.loadgen.test_mode == TestMode.SUBMISSION_RUN
    loadgen = dataclasses.replace(base.loadgen, min_duration_s=duration_s if submission else None,
                                  quick_duration_s=duration_s,
                                  target_qps=setting.target_qps if base.scenario == Scenario.SERVER else None,
                                  sources=(("target_qps", "the trial's rate"), ("min_duration_s", "--trial-duration")))
    batching = dataclasses.replace(base.batching, max_batch_size=setting.max_batch_size or base.batching.max_batch_size,
                                   max_queue_delay_us=setting.max_queue_delay_us)
    return dataclasses.replace(base, loadgen=loadgen, batching=batching)


def best_user_conf(scenario: Scenario, best: Trial) -> str:
    """A user.conf holding the tuned LoadGen value, with the batching that goes with it as comments."""
    lines = [f"# asyncbench tune: best {scenario} setting (trial {best.number})",
             f"# run it with: --max-batch-size {best.row['max_batch_size']} "
             f"--max-queue-delay-us {best.row['max_queue_delay_us']}"]
    if scenario == Scenario.SERVER:
        lines.append(f"mobilenet.Server.target_qps = {best.setting.target_qps:g}")
    elif best.p99_ms is not None:
        lines.append(f"mobilenet.MultiStream.target_latency = {best.p99_ms:.3f}")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, cfg: RunConfig, engine: Engine, best: Trial, trials: Sequence[Trial],
                  tune_root: Path, identity: dict[str, object], duration_s: float, runs_read: Path) -> list[str]:
    """tuned.json, best.user.conf and the per-system file; returns the lines to print.

    ``runs_read`` is the tune root later runs read (``<build>/tune``): a file written elsewhere
    (``--tune-dir``) is only used when a run names it with ``--config``, and the last line says so.
    """
    system = this_system(engine)
    tuned_at = dt.datetime.now().isoformat(timespec="seconds")
    values = {"target_qps": best.setting.target_qps, "max_batch_size": best.row["max_batch_size"],
              "max_queue_delay_us": best.row["max_queue_delay_us"], "p99_ms": best.p99_ms,
              "trial_duration_s": duration_s, "tuned_at": tuned_at, "tune_dir": str(out)}
    target_ms = cfg.loadgen.server_target_latency_ms or 10.0
    summary = {"system": system, "engine": engine.name, "identity": identity, "scenario": str(cfg.scenario),
               "tuned_at": tuned_at, "target_latency_ms": target_ms if cfg.scenario == Scenario.SERVER else None,
               "trials": len(trials), "valid_trials": sum(t.valid for t in trials),
               "best": {"trial": best.number, "log_dir": best.row["log_dir"], **values}}
    write_bytes_atomic(out / "tuned.json", (json.dumps(summary, indent=1) + "\n").encode())
    write_bytes_atomic(out / "best.user.conf", best_user_conf(cfg.scenario, best).encode())
    per_system = system_file(tune_root, system)
    record_tuned(per_system, system, identity, str(cfg.scenario), values)
    what = (f"{best.setting.target_qps:,.0f} QPS VALID in every repeat" if cfg.scenario == Scenario.SERVER
            else f"p99 {best.p99_ms:.3f} ms")
    if tune_root.resolve() == runs_read.resolve():
        later = (f"later runs on {system} with {engine.name} and these options pick these up from {per_system} "
                 f"(a Server target only for runs of at most {duration_s:g} s)")
    else:
        later = (f"later runs read {system_file(runs_read, system)}, not this file: pass --config {per_system} "
                 f"to use it")
    return [f"best {cfg.scenario}: {what}, max batch {best.row['max_batch_size']}, "
            f"max queue delay {best.row['max_queue_delay_us']} us (trial {best.number} of {len(trials)})",
            f"wrote {out / 'trials.csv'}, {out / 'best.user.conf'}, {out / 'tuned.json'}", later]


def record_confirmed(tune_root: Path, engine: Engine, identity: dict[str, object], scenario: str,
                     duration_s: float) -> None:
    """After a VALID ``--confirm`` run: the tuned values also hold for runs as long as it."""
    path = system_file(tune_root, this_system(engine))
    values = tuned_values(path, identity, scenario)
    if values is not None:
        record_tuned(path, this_system(engine), identity, scenario, {**values, "confirmed_duration_s": duration_s})


def tune(base: RunConfig, engine: Engine, dataset: Dataset, preprocessed: Path, out: Path, *,
         grid: dict[str, tuple[int, ...]], duration_s: float, precision: float, repeats: int,
         start_qps: float | None, say: Callable[[str], None] = print) -> tuple[Trial | None, list[Trial]]:
    """Run the search for ``base.scenario`` with one warmed-up engine; returns the best trial and all trials."""
    log = TrialLog(out / "trials.csv")
    trials: list[Trial] = []

    def run(phase: str, setting: Setting) -> Trial:
        number = len(trials) + 1
        label = f"{number:03d}_{phase}" + (f"_{setting.target_qps:g}qps" if setting.target_qps else "")
        log_dir = out / "trials" / label
        log_dir.mkdir()
        start = time.perf_counter()
        result = run_scenario(trial_config(base, setting, duration_s), engine, dataset, preprocessed, log_dir,
                              say=lambda _: None)
        row = trial_row(number, phase, setting, result.record, time.perf_counter() - start)
        p99 = row["p99_ms"]
        trial = Trial(number, phase, setting, str(row["validity"]), p99 if isinstance(p99, float) else None, row)
        trials.append(trial)
        log.add(row)
        say(progress_line(trial, str(base.scenario)))
        if result.failure is not None and str(result.failure).startswith(INTERRUPTED):
            raise KeyboardInterrupt  # a signal ends the tune, not just this trial (which would bound the search)
        return trial

    if base.scenario == Scenario.SERVER:
        search = ServerSearch(run, precision, repeats, ceiling=max_target_qps(Scenario.SERVER, duration_s,
                                                                               base.loadgen.memory_mb))
        if start_qps is None:
            peak = engine_peak_qps(engine) or 1000.0
            start_qps = round(peak * max(1, engine.capabilities.slots // engine.capabilities.slots_per_device) / 2, 1)
        first = Setting(None, base.batching.max_batch_size, base.batching.max_queue_delay_us)
        best_qps = search.find(first, start_qps)
        if best_qps and best_qps == search.ceiling:
            say(f"note: {best_qps:,.1f} QPS is the highest rate whose {duration_s:g} s of queries fit in "
                f"{base.loadgen.memory_mb:g} MB of LoadGen memory (--loadgen-memory-mb): the engine may sustain more")
        best_setting = dataclasses.replace(first, target_qps=best_qps)
        if not grid and best_qps and first.max_queue_delay_us is None:
            # Does another queue delay carry more? One trial of each one precision step above the rate
            # found; a VALID one is searched upward from there, and given up once it cannot beat the rate.
            above = round(best_qps * (1 + precision), 1)
            probes = [run("delay", dataclasses.replace(first, target_qps=above, max_queue_delay_us=d))
                      for d in delay_grid(trials, best_qps)["delay_us"]]
            for probe in sorted((t for t in probes if t.valid), key=lambda t: t.p99_ms or 0.0)[:1]:
                setting = dataclasses.replace(probe.setting, target_qps=None)
                second = search.find(setting, round(above * (1 + 4 * precision), 1), lo=above,
                                     phase="search-2", growth=1 + 4 * precision, beat=best_qps)
                if second > best_qps:
                    best_qps, best_setting = second, dataclasses.replace(setting, target_qps=second)
        elif grid and best_qps:
            grid_trials = [run("grid", s) for s in grid_settings(grid, best_qps)]
            winner = best_of_grid(grid_trials)
            if winner is not None and winner.setting != best_setting:
                second = search.find(dataclasses.replace(winner.setting, target_qps=None),
                                     round(best_qps * (1 + 4 * precision), 1), lo=best_qps, phase="search-2",
                                     growth=1 + 4 * precision, beat=best_qps)
                if second > best_qps:
                    best_qps, best_setting = second, dataclasses.replace(winner.setting, target_qps=second)
        confirmed = [t for t in trials if t.setting == best_setting and t.valid]
        return (confirmed[-1] if confirmed and best_qps else None), trials
    settings = grid_settings(grid or DEFAULT_MULTISTREAM_GRID, None)
    first_round = [run("grid", s) for s in settings]
    winner = best_of_grid(first_round)
    if winner is None:
        return None, trials
    repeats_run = [run("confirm", winner.setting) for _ in range(max(0, repeats - 1))]
    if not all(t.valid for t in repeats_run):
        say("note: the best MultiStream setting was INVALID in a repeat: the p99 target is close")
    chosen = [winner, *repeats_run]
    return sorted(chosen, key=lambda t: t.p99_ms or 0.0)[len(chosen) // 2], trials
