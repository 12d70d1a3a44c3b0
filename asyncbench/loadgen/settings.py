"""LoadGen ``TestSettings`` from mlperf.conf, user.conf and command-line values, in that order of precedence.

How LoadGen 6.0's ``TestSettings.FromConfig(path, model, scenario, conf_type)`` really behaves
(read from its source and checked by tests/test_loadgen_settings.py):

* ``conf_type 0`` ignores ``path`` and always parses LoadGen's built-in copy of mlperf.conf. It
  is the only call that reads the RNG seeds (``*.*.qsl_rng_seed`` ...), ``test05*`` and
  ``accuracy_log_probability``; files never set those.
* ``conf_type 1`` (user.conf) bumps a process-wide counter. On the first such call of the
  process it first applies the built-in mlperf.conf itself; on every later call it does not,
  so a fresh ``TestSettings`` keeps the struct defaults (min_duration 10 s, seeds 0, ...) and
  LoadGen queues the error ``error_invalid_config`` "Multiple conf files are used. This is not
  valid for official submission." into the next test's detail log ("1 ERROR encountered" in
  the summary; the result itself can still be VALID). The counter moves even when the file
  cannot be opened.
* any other ``conf_type`` parses the file at ``path`` like user.conf without touching the counter.
* a file that cannot be opened returns ``-ENOENT`` and a malformed line ``-EINVAL``; a directory
  "opens" and reads as empty (return 0). Unknown keys are ignored silently.
* keys are looked up as ``model.scenario.key``, then ``*.scenario.key``, ``model.*.key``,
  ``*.*.key``. The built-in file has no ``mobilenet`` entries, so its ``*`` defaults apply.

So ``build_test_settings`` always applies the built-in file explicitly (conf_type 0) before the
user's files, which makes the result the same whichever call of the process it is.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import mlperf_loadgen as lg

from asyncbench.config import Scenario, TestMode
from asyncbench.errors import ConfigError, UserError


def lg_scenario(scenario: Scenario) -> lg.TestScenario:
    """LoadGen's enum member for a scenario (the names match)."""
    return getattr(lg.TestScenario, scenario.value)


def lg_mode(mode: TestMode) -> lg.TestMode:
    """LoadGen's enum member for a test mode (the names match)."""
    return getattr(lg.TestMode, mode.value)


_BUILTIN = 0  # FromConfig's conf_type for LoadGen's built-in mlperf.conf (the path is ignored)
_USER = 1  # user.conf: counted process-wide, the first one also applies the built-in mlperf.conf
_PLAIN = 2  # any other value: just parse the file

# How many conf_type 1 calls this process has made (LoadGen's own counter cannot be read).
_user_conf_calls = 0

# Every key LoadGen 6.0's TestSettings::FromConfig looks up (test_settings_internal.cc); any other key is
# ignored by LoadGen without a word, so a misspelling silently changes nothing.
CONF_KEYS = frozenset({
    "accuracy_log_probability", "accuracy_log_rng_seed", "accuracy_log_sampling_target",
    "accuracy_sample_count_override", "coalesce_queries", "infer_token_latencies", "max_async_queries",
    "max_duration", "max_query_count", "min_duration", "min_query_count", "mode", "performance_issue_same",
    "performance_issue_same_index", "performance_issue_unique", "performance_sample_count_override",
    "print_timestamps", "qsl_rng_seed", "sample_concatenate_permutation", "sample_index_rng_seed",
    "samples_per_query", "schedule_rng_seed", "target_latency", "target_latency_percentile", "target_qps",
    "test05", "test05_qsl_rng_seed", "test05_sample_index_rng_seed", "test05_schedule_rng_seed",
    "token_latency_scaling_factor", "tpot_latency", "ttft_latency", "use_token_latencies",
})


@dataclass(frozen=True)
class ConfFile:
    """A LoadGen conf file read the way FromConfig reads it: ``model.scenario.key = number`` lines."""

    path: Path
    values: dict[str, str]  # full key -> value text; a later line wins, as in LoadGen

    def lookup(self, model: str, scenario: str, key: str) -> str | None:
        """The value LoadGen would use for ``key`` (exact, then ``*.scenario``, ``model.*``, ``*.*``)."""
        for m, s in ((model, scenario), ("*", scenario), (model, "*"), ("*", "*")):
            value = self.values.get(f"{m}.{s}.{key}")
            if value is not None:
                return value
        return None

    def number(self, model: str, scenario: str, key: str) -> float | None:
        """``lookup`` as a number (LoadGen already accepted the text as one)."""
        value = self.lookup(model, scenario, key)
        return None if value is None else float(int(value, 0)) if _is_int(value) else float(value)

    def problems(self, model: str) -> list[str]:
        """Keys LoadGen would ignore: an unknown key name or scenario, or another model's key."""
        found = []
        for full in self.values:
            parts = full.split(".")
            if len(parts) != 3:
                found.append(f"{full} (expected model.scenario.key)")
            elif parts[2] not in CONF_KEYS:
                close = difflib.get_close_matches(parts[2], CONF_KEYS, 1)
                found.append(f"{full} (unknown key{f'; did you mean {close[0]}?' if close else ''})")
            elif parts[1] != "*" and parts[1] not in tuple(Scenario):
                found.append(f"{full} (unknown scenario {parts[1]!r})")
            elif parts[0] not in ("*", model):
                found.append(f"{full} (for model {parts[0]!r}, not {model!r})")
        return found


def _is_int(text: str) -> bool:
    try:
        int(text, 0)
    except ValueError:
        return False
    return True


def read_conf(path: Path, what: str = "user.conf") -> ConfFile:
    """Parse a conf file like LoadGen does; a value that is not a number is a usage error naming the line."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is not a file") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if "#" in tokens:
            tokens = tokens[: tokens.index("#")]
        if not tokens or tokens[0].startswith("#"):
            continue
        if len(tokens) != 3 or tokens[1] != "=":
            raise ConfigError(f"{what} {path} line {number}: {line.strip()!r} is not 'model.scenario.key = number'")
        key, value = tokens[0], tokens[2]
        try:
            ok = _is_int(value) or math.isfinite(float(value))
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"{what} {path} line {number}: {key} = {value!r} is not a finite number")
        values[key] = value
    return ConfFile(Path(path), values)


@dataclass(frozen=True)
class LoadGenOptions:
    """What the user asked for; None leaves the value to user.conf, then mlperf.conf."""

    scenario: Scenario
    mode: TestMode = TestMode.PERFORMANCE_ONLY
    target_qps: float | None = None  # Server: server_target_qps; Offline: offline_expected_qps
    min_duration_s: float | None = None
    min_query_count: int | None = None
    max_query_count: int | None = None  # 0: no limit
    performance_sample_count: int | None = None
    user_conf: Path | None = None
    mlperf_conf: Path | None = None  # applied over the built-in file; cannot change the RNG seeds
    server_target_latency_ms: float | None = None
    multistream_samples_per_query: int | None = None
    multistream_expected_latency_ms: float | None = None
    offline_expected_qps: float | None = None
    single_stream_expected_latency_ms: float | None = None
    server_max_async_queries: int | None = None  # Server: LoadGen stops issuing past this many outstanding
    qsl_rng_seed: int | None = None
    sample_index_rng_seed: int | None = None
    schedule_rng_seed: int | None = None

    def __post_init__(self) -> None:
        # Plain strings spelled exactly as LoadGen's enums are accepted and normalised.
        for name, kind in (("scenario", Scenario), ("mode", TestMode)):
            value = getattr(self, name)
            if value not in tuple(kind):
                raise ConfigError(f"unknown {'scenario' if kind is Scenario else 'test mode'} {value!r}: "
                                  f"choose one of {', '.join(kind)}")
            object.__setattr__(self, name, kind(value))
        positive = {
            "target_qps": self.target_qps,
            "server_target_latency_ms": self.server_target_latency_ms,
            "multistream_expected_latency_ms": self.multistream_expected_latency_ms,
            "offline_expected_qps": self.offline_expected_qps,
            "single_stream_expected_latency_ms": self.single_stream_expected_latency_ms,
            "min_query_count": self.min_query_count,
            "performance_sample_count": self.performance_sample_count,
            "multistream_samples_per_query": self.multistream_samples_per_query,
        }
        for name, value in positive.items():
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be greater than 0, got {value}")
        not_negative = {
            "min_duration_s": self.min_duration_s,
            "max_query_count": self.max_query_count,
            "server_max_async_queries": self.server_max_async_queries,
            "qsl_rng_seed": self.qsl_rng_seed,
            "sample_index_rng_seed": self.sample_index_rng_seed,
            "schedule_rng_seed": self.schedule_rng_seed,
        }
        for name, value in not_negative.items():
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be 0 or more, got {value}")
        if self.target_qps is not None and self.scenario not in (Scenario.SERVER, Scenario.OFFLINE):
            raise ConfigError(
                f"target_qps applies to the Server and Offline scenarios, not {self.scenario}: "
                "set the expected latency instead"
            )
        if self.target_qps is not None and self.offline_expected_qps is not None:
            raise ConfigError("give either target_qps or offline_expected_qps, not both")


def _apply_conf(
    settings: lg.TestSettings, path: Path, model: str, scenario: str, conf_type: int, what: str, notes: list[str]
) -> None:
    """Apply one conf file, turning LoadGen's silent or numeric failures into one-line errors."""
    global _user_conf_calls
    if not path.exists():
        raise UserError(f"{what} {path} does not exist")
    if not path.is_file():
        raise UserError(f"{what} {path} is not a file")
    try:
        with path.open("rb"):
            pass
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from None
    if conf_type == _USER:
        if _user_conf_calls:
            notes.append(
                "a user.conf was already loaded in this process: LoadGen logs error_invalid_config "
                "('Multiple conf files are used') in the next test's detail log; run each test in its own "
                "process for a submission"
            )
        _user_conf_calls += 1
    rc = settings.FromConfig(str(path), model, scenario, conf_type)
    if rc != 0:
        raise UserError(
            f"LoadGen rejected {what} {path} (FromConfig returned {rc}): every line must be "
            "'model.scenario.key = number' or a '#' comment"
        )


def builtin_mlperf_conf() -> str:
    """The mlperf.conf compiled into LoadGen, which it parses for every test (it has no accessor for the text)."""
    data = Path(lg.__file__).read_bytes()
    key = data.find(b"*.*.qsl_rng_seed = ")
    if key < 0:
        raise UserError(f"cannot find the built-in mlperf.conf in {lg.__file__}: pass --mlperf-conf")
    start, end = data.rfind(b"\x00", 0, key) + 1, data.find(b"\x00", key)
    return data[start:end].decode()


def builtin_settings(model: str, scenario: str) -> lg.TestSettings:
    """Settings with only LoadGen's built-in mlperf.conf applied: what a submission run starts from."""
    settings = lg.TestSettings()
    settings.FromConfig("", model, scenario, _BUILTIN)
    return settings


def submission_shortfalls(settings: lg.TestSettings, model: str = "mobilenet") -> list[str]:
    """Why a performance run with ``settings`` is shorter than the installed LoadGen's mlperf.conf asks.

    The minimums come from LoadGen's built-in mlperf.conf, not from a table here. In LoadGen
    6.0 that is min_duration 600 s for every scenario and min_query_count 662 for MultiStream;
    SingleStream, Server and Offline keep the struct default of 100 and rely on early stopping.
    (The v0.5 rules this harness follows asked for 60 s, 1024 SingleStream queries, 270336
    Server/MultiStream queries and 24576 Offline samples; current LoadGen no longer applies them.)
    """
    scenario = settings.scenario.name
    reference = builtin_settings(model, scenario)
    shortfalls = []
    if settings.min_duration_ms < reference.min_duration_ms:
        shortfalls.append(
            f"min_duration {settings.min_duration_ms / 1000:g} s is shorter than the submission minimum "
            f"{reference.min_duration_ms / 1000:g} s"
        )
    if settings.min_query_count < reference.min_query_count:
        shortfalls.append(
            f"min_query_count {settings.min_query_count} is below the {scenario} submission minimum "
            f"{reference.min_query_count}"
        )
    return shortfalls


def build_test_settings(opts: LoadGenOptions, model: str = "mobilenet") -> tuple[lg.TestSettings, list[str]]:
    """The settings for one LoadGen test, plus notes on anything that keeps it from being a submission run.

    Precedence, lowest first: LoadGen's built-in mlperf.conf, ``opts.mlperf_conf``, ``opts.user_conf``,
    then every option that is not None; scenario and mode always come from ``opts`` (a conf file's
    ``mode`` key is overridden). ``server_num_issue_query_threads`` is forced to 0: any other value
    makes LoadGen wait for threads to call RegisterIssueQueryThread, which Python cannot, so it hangs.
    """
    notes: list[str] = []
    settings = builtin_settings(model, opts.scenario)
    if opts.mlperf_conf is not None:
        _apply_conf(settings, Path(opts.mlperf_conf), model, opts.scenario, _PLAIN, "mlperf.conf", notes)
        notes.append(
            f"mlperf.conf {opts.mlperf_conf} is applied over LoadGen's built-in one (LoadGen takes RNG seeds "
            "only from its own copy): not a submission configuration"
        )
    if opts.user_conf is not None:
        # With the user's own mlperf.conf, conf_type 1 could re-apply the built-in one over it.
        conf_type = _USER if opts.mlperf_conf is None else _PLAIN
        _apply_conf(settings, Path(opts.user_conf), model, opts.scenario, conf_type, "user.conf", notes)

    settings.scenario = lg_scenario(opts.scenario)
    settings.mode = lg_mode(opts.mode)
    if opts.target_qps is not None:
        if opts.scenario is Scenario.SERVER:
            settings.server_target_qps = opts.target_qps
        else:
            settings.offline_expected_qps = opts.target_qps
    if opts.offline_expected_qps is not None:
        settings.offline_expected_qps = opts.offline_expected_qps
    if opts.min_duration_s is not None:
        settings.min_duration_ms = round(opts.min_duration_s * 1000)
    if opts.min_query_count is not None:
        settings.min_query_count = opts.min_query_count
    if opts.max_query_count is not None:
        settings.max_query_count = opts.max_query_count
    if opts.performance_sample_count is not None:
        settings.performance_sample_count_override = opts.performance_sample_count
    if opts.server_target_latency_ms is not None:
        settings.server_target_latency_ns = round(opts.server_target_latency_ms * 1e6)
    if opts.multistream_samples_per_query is not None:
        settings.multi_stream_samples_per_query = opts.multistream_samples_per_query
    if opts.multistream_expected_latency_ms is not None:
        settings.multi_stream_expected_latency_ns = round(opts.multistream_expected_latency_ms * 1e6)
    if opts.single_stream_expected_latency_ms is not None:
        settings.single_stream_expected_latency_ns = round(opts.single_stream_expected_latency_ms * 1e6)
    if opts.server_max_async_queries is not None:
        settings.server_max_async_queries = opts.server_max_async_queries
    seeds = {
        "qsl_rng_seed": opts.qsl_rng_seed,
        "sample_index_rng_seed": opts.sample_index_rng_seed,
        "schedule_rng_seed": opts.schedule_rng_seed,
    }
    for name, seed in seeds.items():
        if seed is not None:
            setattr(settings, name, seed)
            notes.append(f"{name} {seed} replaces the official seed: not a submission run")
    settings.server_num_issue_query_threads = 0

    if opts.mode != "AccuracyOnly":
        notes += [f"{reason}: not a submission-length run" for reason in submission_shortfalls(settings, model)]
    return settings, notes


def make_log_settings(outdir: Path, trace: bool = False) -> lg.LogSettings:
    """Log settings writing LoadGen's files into ``outdir``, made first: LoadGen aborts the process without it.

    The summary is not copied to stdout: the harness prints its own digest of it. The trace
    (mlperf_log_trace.json) is off by default because it grows with every sample.
    """
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create LoadGen log directory {outdir}: {e.strerror}") from None
    if not os.access(outdir, os.W_OK | os.X_OK):
        raise UserError(f"LoadGen log directory {outdir} is not writable")
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(outdir)
    log_settings.log_output.copy_summary_to_stdout = False
    log_settings.log_output.copy_detail_to_stdout = False
    log_settings.enable_trace = trace
    return log_settings
