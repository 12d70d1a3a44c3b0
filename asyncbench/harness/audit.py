"""The compliance audits a submission needs (TEST01, TEST04, TEST04-A/B, TEST05): run one, then verify it.

An audit is a performance run with an audit.config that changes what LoadGen does (log sampled
responses, issue one sample over and over, use other RNG seeds), compared with the submitter's
own runs of the same scenario on the same engine: the latest matching runs under the log root,
or the ones named with ``--reference``. The audit file is written into the audit's folder and
passed to LoadGen explicitly; what LoadGen really applied is read back from the detail log's
``effective_*`` keys before anything is judged, because LoadGen 6.0 silently ignores several
keys of the v0.5 files (the TEST05 seeds, ``accuracy_log_probability``). Verdicts go to
``verify_accuracy.txt`` / ``verify_performance.txt``, each ending in ``TEST PASS`` or ``TEST FAIL``,
beside copies of the logs in the layout MLCommons' ``run_verification.py`` makes
(``accuracy/``, ``performance/run_1/``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asyncbench.config import RunConfig, Scenario, TestMode
from asyncbench.data.dataset import UNLABELLED, read_map
from asyncbench.errors import ConfigError, UserError
from asyncbench.loadgen.accuracy import load_accuracy_log
from asyncbench.loadgen.logs import detail_values, parse_detail

AUDIT_WARNING = "Found Audit Config file"
ACCURACY_LOG = "mlperf_log_accuracy.json"
PERFORMANCE_LOGS = ("mlperf_log_summary.txt", "mlperf_log_detail.txt")
# The detail-log key of the figure each scenario is judged on (MLCommons' verify_performance.py reads the same).
METRIC = {
    Scenario.OFFLINE: "result_samples_per_second",
    Scenario.SERVER: "result_completed_samples_per_sec",
    Scenario.SINGLE_STREAM: "early_stopping_latency_ss",
    Scenario.MULTI_STREAM: "early_stopping_latency_ms",
}
LATENCY_METRICS = (Scenario.SINGLE_STREAM, Scenario.MULTI_STREAM)
TEST01_SEED = 720381539243781796
TEST01_SAMPLING_TARGET = 4096
TEST05_SEEDS = (195, 235, 634)  # v0.5's qsl, sample index and schedule seeds
SAME_INDEX = 3


@dataclass(frozen=True)
class Audit:
    """One compliance test: its audit.config, what LoadGen must report applying, and how it is judged."""

    name: str
    what: str
    config: tuple[tuple[str, object], ...]  # audit.config keys (each written as *.*.key)
    expect: tuple[tuple[str, object], ...]  # detail-log effective_* values that prove LoadGen applied it
    rule: str  # "band": within the threshold either way; "not faster": not faster by more than it; "none"
    against: str  # "submission": the latest VALID performance run; or the audit whose run this one is compared with
    seeds: tuple[int, int, int] | None = None  # set through TestSettings: LoadGen reads no seeds from audit.config
    # v0.5's TEST04 pair ran unchecked: TEST04-A issues each loaded sample once, too few for the minimum
    # duration, so LoadGen calls it INVALID by design.
    needs_valid: bool = True


_SAME = (("performance_issue_unique", 0), ("performance_issue_same", 1), ("performance_issue_same_index", SAME_INDEX))
_SAME_EXPECT = (("effective_performance_issue_unique", False), ("effective_performance_issue_same", True),
                ("effective_performance_issue_same_index", SAME_INDEX))
AUDITS: dict[str, Audit] = {
    "TEST01": Audit(
        "TEST01", "responses logged during a performance run match the accuracy run's",
        (("mode", 2), ("accuracy_log_rng_seed", TEST01_SEED), ("accuracy_log_sampling_target", TEST01_SAMPLING_TARGET)),
        (("effective_accuracy_log_rng_seed", TEST01_SEED),
         ("effective_accuracy_log_sampling_target", TEST01_SAMPLING_TARGET)),
        "band", "submission"),
    "TEST04": Audit(
        "TEST04", "one sample issued over and over is not served faster (no caching)",
        (("mode", 2), *_SAME), _SAME_EXPECT, "not faster", "submission"),
    "TEST04-A": Audit(
        "TEST04-A", "v0.5's unique-sample run, the reference of TEST04-B",
        (("mode", 2), ("performance_issue_unique", 1), ("performance_issue_same", 0)),
        (("effective_performance_issue_unique", True), ("effective_performance_issue_same", False)),
        "none", "submission", needs_valid=False),
    "TEST04-B": Audit(
        "TEST04-B", "v0.5's same-sample run is not faster than TEST04-A's unique samples (no caching)",
        (("mode", 2), *_SAME), _SAME_EXPECT, "not faster", "TEST04-A", needs_valid=False),
    "TEST05": Audit(
        "TEST05", "performance with other RNG seeds matches the submission run's",
        (("mode", 2),),
        tuple(zip(("effective_qsl_rng_seed", "effective_sample_index_rng_seed", "effective_schedule_rng_seed"),
                  TEST05_SEEDS, strict=True)),
        "band", "submission", seeds=TEST05_SEEDS),
}
V05_ORDER = ("TEST01", "TEST04-A", "TEST04-B", "TEST05")  # v0.5's audits, each after what it compares with
NOT_HERE = {
    "TEST03": "TEST03 runs the submission on modified images in submission mode; asyncbench does not make "
              "those images",
    "TEST06": "TEST06 checks LLM output lengths and applies to the LLM benchmarks only, not MobileNet",
    "TEST07": "TEST07 applies to the LLM benchmarks only, not MobileNet",
    "TEST08": "TEST08 applies to the recommendation benchmarks only, not MobileNet",
    "TEST09": "TEST09 applies to the LLM benchmarks only, not MobileNet",
}


def audit_named(name: str) -> Audit:
    """The audit called ``name`` (any case); one clear line for the ones MobileNet has not or we do not run."""
    key = name.strip().upper()
    if key in AUDITS:
        return AUDITS[key]
    if key in NOT_HERE:
        raise ConfigError(f"{NOT_HERE[key]}: choose one of {', '.join(AUDITS)}")
    raise ConfigError(f"unknown audit {name!r}: choose one of {', '.join(AUDITS)}")


def audit_config_text(audit: Audit) -> str:
    """The audit.config LoadGen reads: ``*.*.key = value`` lines (LoadGen matches those and ``*.<Scenario>``)."""
    lines = [f"# {audit.name}: {audit.what}", "# written by asyncbench audit; LoadGen reads it through "
             "StartTestWithLogSettings"]
    if audit.seeds is not None:
        lines.append("# the seeds (qsl, sample index, schedule = " + ", ".join(map(str, audit.seeds)) +
                     ") go through TestSettings: LoadGen ignores seeds in an audit.config")
    lines += [f"*.*.{key} = {value}" for key, value in audit.config]
    return "\n".join(lines) + "\n"


def threshold(scenario: Scenario, reference_metric: float) -> float:
    """0.10, or 0.20 where latencies are short enough for OS noise to matter (SingleStream <= 0.2 ms,
    MultiStream <= 1.6 ms), as MLCommons' verification scripts allow."""
    if scenario is Scenario.SINGLE_STREAM and reference_metric <= 200_000:
        return 0.20
    if scenario is Scenario.MULTI_STREAM and reference_metric <= 1_600_000:
        return 0.20
    return 0.10


# --- the runs an audit is compared with ----------------------------------------------------------------------


def read_record(run_dir: Path) -> dict[str, Any]:
    """A run folder's result.json; a folder without one is a UserError."""
    path = run_dir / "result.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{run_dir} is not an asyncbench run folder (no result.json)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not isinstance(record, dict) or "config" not in record:
        raise UserError(f"{path} is not an asyncbench result record")
    return record


def sut_key(config: dict[str, Any], audit: dict[str, Any] | None = None) -> Any:
    """What makes two runs the same system under test: the engine's settings and the RNG seeds its runs use.

    An audit run is keyed by the seeds of the runs it audits (``sut_seeds``), not by TEST05's own.
    """
    seeds = (audit or {}).get("sut_seeds", config.get("loadgen", {}).get("rng_seeds"))
    return json.loads(json.dumps({"engine": config.get("engine", {}), "seeds": seeds}, default=str))


def run_folders(root: Path, depth: int = 1) -> list[Path]:
    """Run folders ``depth`` levels under ``root`` (2 for audits: <audit>/<run>), newest first.

    Folder names start with a timestamp, so the newest sorts last at each level.
    """
    if not root.is_dir():
        return []
    found = [p.parent for p in root.glob("/".join(["*"] * depth) + "/result.json")
             if not any(q.is_symlink() for q in p.parents if q != root and root in q.parents)]
    return sorted(found, key=lambda p: p.relative_to(root).parts, reverse=True)


def _kind(record: dict[str, Any]) -> str:
    """"accuracy" or "performance" for a plain run, else the audit's name."""
    audit = record.get("audit")
    if audit:
        return str(audit["name"])
    mode = record["config"]["loadgen"]["test_mode"]
    return "accuracy" if mode == TestMode.ACCURACY_ONLY else "performance"


def _needs_valid(kind: str) -> bool:
    """Whether a ``kind`` reference must be VALID: a performance run must, and an audit unless it is v0.5's TEST04."""
    return kind == "performance" or (kind in AUDITS and AUDITS[kind].needs_valid)


def _article(kind: str) -> str:
    """ "an accuracy", "a performance", "a TEST04-A"."""
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _usable(record: dict[str, Any], run_dir: Path, kind: str) -> str | None:
    """Why this run cannot serve as the ``kind`` reference (None when it can)."""
    if _kind(record) != kind:
        return f"it is {_article(_kind(record))} run, not {_article(kind)} run"
    if record["config"]["loadgen"].get("audit_config") and kind in ("accuracy", "performance"):
        return "it ran with an audit.config"
    if kind == "accuracy":
        return None if (run_dir / ACCURACY_LOG).is_file() else f"it has no {ACCURACY_LOG}"
    validity = record["result"]["validity"]
    if validity == "FAILED" or (validity != "VALID" and _needs_valid(kind)):
        return f"its result is {validity}"
    return None


def matching_runs(root: Path, scenario: Scenario, sut: Any, depth: int = 1) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Run folders ``depth`` levels under ``root`` of this scenario on this system under test (``sut_key``),
    newest first, with their records; folders without a readable result.json are passed over."""
    for run_dir in run_folders(root, depth):
        try:
            record = read_record(run_dir)
        except UserError:
            continue
        if record["config"].get("scenario") == scenario and sut_key(record["config"], record.get("audit")) == sut:
            yield run_dir, record


def find_reference(root: Path, scenario: Scenario, engine: dict[str, Any], kind: str) -> Path | None:
    """The newest run under ``root`` of this scenario and engine that can serve as the ``kind`` reference."""
    depth = 1 if kind in ("accuracy", "performance") else 2
    return next((run_dir for run_dir, record in matching_runs(root, scenario, engine, depth)
                 if _usable(record, run_dir, kind) is None), None)


def resolve_references(audit: Audit, cfg: RunConfig, named: Sequence[Path], logs_root: Path, audits_root: Path
                       ) -> dict[str, Path]:
    """The reference runs this audit compares with, by kind: named ones first, else the newest matching."""
    from asyncbench.harness.result import config_record

    needed = ["accuracy"] if audit.name == "TEST01" else []
    needed.append("performance")
    if audit.against != "submission":
        needed.append(audit.against)
    found: dict[str, Path] = {}
    for run_dir in named:
        if not run_dir.is_dir():
            raise UserError(f"--reference {run_dir} is not a folder: name a run folder (build/logs/<run>)")
        record = read_record(run_dir)
        kind = _kind(record)
        if kind not in needed:
            raise UserError(f"--reference {run_dir}: {audit.name} compares with "
                            f"{' and '.join(needed)} runs, and this is {_article(kind)} run")
        if record["config"].get("scenario") != cfg.scenario:
            raise UserError(f"--reference {run_dir} ran {record['config'].get('scenario')}, not {cfg.scenario}")
        why = _usable(record, run_dir, kind)
        if why is not None:
            raise UserError(f"--reference {run_dir} cannot be the {kind} reference: {why}")
        found[kind] = run_dir
    engine = sut_key(config_record(cfg))
    for kind in needed:
        if kind in found:
            continue
        root = logs_root if kind in ("accuracy", "performance") else audits_root
        newest = find_reference(root, cfg.scenario, engine, kind)
        if newest is None:
            how = {"accuracy": f"python -m asyncbench run --scenario {cfg.scenario} --test-mode AccuracyOnly",
                   "performance": f"python -m asyncbench run --scenario {cfg.scenario}"}.get(
                kind, f"python -m asyncbench audit {kind} --scenario {cfg.scenario}")
            what = f"a VALID {kind}" if _needs_valid(kind) else _article(kind)
            raise UserError(f"{audit.name} needs {what} run of {cfg.scenario} on this engine under {root} "
                            f"and found none: run `{how}` with the same engine options first, or name one with "
                            f"--reference RUN_DIR")
        found[kind] = newest
    return found


def with_reference_rate(cfg: RunConfig, performance: Path) -> tuple[RunConfig, list[str]]:
    """Server and Offline audits run at the reference's target QPS and length unless told otherwise.

    Their figures are compared with that run's, so they must be asked for the same load.
    """
    effective = read_record(performance).get("loadgen_effective", {})
    notes = []
    lg = cfg.loadgen
    if lg.target_qps is None and cfg.scenario in (Scenario.SERVER, Scenario.OFFLINE) and effective.get("target_qps"):
        lg = dataclasses.replace(lg, target_qps=float(effective["target_qps"]))
        notes.append(f"target QPS {lg.target_qps:g} from the reference run {performance.name}")
    if lg.min_duration_s is None and not lg.submission_length and effective.get("min_duration_ms"):
        lg = dataclasses.replace(lg, min_duration_s=float(effective["min_duration_ms"]) / 1000)
        notes.append(f"minimum duration {lg.min_duration_s:g} s from the reference run {performance.name}")
    return dataclasses.replace(cfg, loadgen=lg), notes


# --- verification -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """A verification's report lines and its outcome; ``text`` ends in TEST PASS or TEST FAIL."""

    lines: tuple[str, ...]
    passed: bool

    @property
    def text(self) -> str:
        return "\n".join([*self.lines, "TEST PASS" if self.passed else "TEST FAIL"]) + "\n"


def _responses(path: Path) -> list[tuple[int, bytes]]:
    """(qsl_idx, response bytes) of an accuracy log; an empty log is an empty list."""
    if path.is_file() and path.read_text().strip() in ("", "[]", "[\n]"):
        return []
    out = []
    for position, record in enumerate(load_accuracy_log(path)):
        try:
            out.append((int(record["qsl_idx"]), bytes.fromhex(record["data"])))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: record {position} is not a LoadGen accuracy record") from None
    return out


def _first(data: bytes) -> int | None:
    """Element 0 of a response as int32 (the engines' top-1), None for an empty response."""
    return int(np.frombuffer(data[:4], np.int32)[0]) if len(data) >= 4 else None


def verify_accuracy(reference_log: Path, test_log: Path, labels: list[int] | None = None) -> Verdict:
    """TEST01: every response logged in the performance run equals the accuracy run's for that sample.

    Compared as MLCommons' verify_accuracy.py compares them (element 0 as int32, the response type
    here); at least one logged sample must match a sample of the accuracy run. With ``labels``, the
    top-1 of the logged subset in both runs is reported too: the figure a submitter whose engine is
    not bit-exact documents (within 1%), which does not change the verdict.
    """
    reference: dict[int, bytes] = {}
    duplicates = reference_mismatch = 0
    for idx, data in _responses(reference_log):
        if idx in reference:
            duplicates += 1
            reference_mismatch += _first(reference[idx]) != _first(data)
        else:
            reference[idx] = data
    test = _responses(test_log)
    matched = mismatched = missing = 0
    subset: dict[int, tuple[int | None, int | None]] = {}
    for idx, data in test:
        if idx not in reference:
            missing += 1
            continue
        matched += 1
        mismatched += _first(reference[idx]) != _first(data)
        subset.setdefault(idx, (_first(reference[idx]), _first(data)))
    lines = [f"reference accuracy log: {reference_log}", f"audit accuracy log: {test_log}",
             f"num_acc_log_entries = {len(reference) + duplicates}",
             f"num_acc_log_duplicate_keys = {duplicates}",
             f"num_acc_log_data_mismatch = {reference_mismatch}",
             f"num_perf_log_entries = {len(test)}",
             f"num_perf_log_qsl_idx_match = {matched}",
             f"num_perf_log_data_mismatch = {mismatched}",
             f"num_missing_qsl_idxs = {missing}"]
    if labels is not None and subset:
        scored = [(labels[i], ref, got) for i, (ref, got) in subset.items() if labels[i] != UNLABELLED]
        if scored:
            ref_top1 = 100.0 * sum(ref == label for label, ref, _ in scored) / len(scored)
            test_top1 = 100.0 * sum(got == label for label, _, got in scored) / len(scored)
            lines.append(f"top-1 of the {len(scored)} logged labelled samples: accuracy run {ref_top1:.3f}%, "
                         f"audit run {test_top1:.3f}% (difference {test_top1 - ref_top1:+.3f} points)")
    if matched == 0:
        lines.append("no logged sample matches a sample of the accuracy run: nothing was compared")
    return Verdict(tuple(lines), matched > 0 and mismatched == 0)


def _metric(run_dir: Path, scenario: Scenario) -> tuple[float, dict[str, Any]]:
    """The figure a run is judged on (from its detail log) and all its detail values."""
    values = detail_values(parse_detail(run_dir / "mlperf_log_detail.txt"))
    key = METRIC[scenario]
    if key not in values:
        raise UserError(f"{run_dir / 'mlperf_log_detail.txt'} has no {key}: did the run finish?")
    return float(values[key]), values


def verify_performance(audit: Audit, scenario: Scenario, reference_dir: Path, test_dir: Path) -> Verdict:
    """The audit run's figure against the reference run's, by the audit's rule (both must be VALID)."""
    ref, ref_values = _metric(reference_dir, scenario)
    got, values = _metric(test_dir, scenario)
    unit = "ns" if scenario in LATENCY_METRICS else "samples/s"
    limit = threshold(scenario, ref)
    lines = [f"reference run: {reference_dir} ({ref_values.get('result_validity')})",
             f"audit run: {test_dir} ({values.get('result_validity')})",
             f"metric: {METRIC[scenario]} ({unit}{', lower is faster' if unit == 'ns' else ''})",
             f"reference score = {ref:g}", f"test score = {got:g}"]
    failures = []
    for name, run_values in (("reference", ref_values), ("audit", values)):
        if run_values.get("result_validity") != "VALID" and audit.needs_valid:
            failures.append(f"the {name} run is {run_values.get('result_validity')}")
    if scenario is Scenario.SERVER and ref_values.get("effective_target_latency_ns") != values.get(
            "effective_target_latency_ns"):
        failures.append(f"Server target latency differs: reference {ref_values.get('effective_target_latency_ns')} "
                        f"ns, audit {values.get('effective_target_latency_ns')} ns")
    speed_ratio = (ref / got if unit == "ns" else got / ref) if got > 0 and ref > 0 else float("nan")
    if audit.rule == "band":
        lines.append(f"rule: within {limit:.0%} of the reference either way")
        if not ref * (1 - limit) <= got <= ref * (1 + limit):
            failures.append(f"the audit run is {speed_ratio:.3f}x the reference's speed, outside the band")
    elif audit.rule == "not faster":
        lines.append(f"rule: not more than {limit:.0%} faster than the reference")
        if not speed_ratio <= 1 + limit:
            failures.append(f"the audit run is {speed_ratio:.3f}x the reference's speed: repeated samples are "
                            f"served faster than unique ones (a cache?)")
        elif speed_ratio < 1 - limit:
            lines.append(f"note: the audit run is {speed_ratio:.3f}x the reference's speed (slower, which passes)")
    lines += [f"fail: {f}" for f in failures]
    return Verdict(tuple(lines), not failures)


def _completed(run_dir: Path) -> int:
    """Samples the run completed (its result.json)."""
    return int(read_record(run_dir).get("samples", {}).get("completed", 0))


def comparable_reference(audit: Audit, run_dir: Path, references: dict[str, Path]) -> tuple[Path, str | None]:
    """The run this audit's figure is compared with, and why it is not the audit's own reference (or None).

    TEST04-B is compared with TEST04-A, as in v0.5, unless TEST04-A completed under a tenth of
    TEST04-B's samples: LoadGen 6.0 ends a unique-sample run after one pass over the loaded samples,
    and a run that short is dominated by start-up, so the submission run stands in for it.
    """
    if audit.against == "submission":
        return references["performance"], None
    own = references[audit.against]
    own_samples, samples = _completed(own), _completed(run_dir)
    if own_samples * 10 >= samples:
        return own, None
    return references["performance"], (f"{audit.against} completed {own_samples:,} samples, under a tenth of "
                                       f"this run's {samples:,} (LoadGen 6.0 ends a unique-sample run after one "
                                       f"pass over the loaded samples): compared with the submission run instead")


def check_applied(audit: Audit, run_dir: Path) -> list[str]:
    """What LoadGen did not apply of the audit (empty when it applied all of it), from the detail log."""
    records = parse_detail(run_dir / "mlperf_log_detail.txt")
    values = detail_values(records)
    problems = []
    if not any(AUDIT_WARNING in str(r.get("value", "")) for r in records):
        problems.append(f"the detail log has no '{AUDIT_WARNING}' message: LoadGen did not read the audit.config")
    if values.get("effective_test_mode") != TestMode.PERFORMANCE_ONLY:
        problems.append(f"effective_test_mode is {values.get('effective_test_mode')}, not PerformanceOnly")
    for key, want in audit.expect:
        if values.get(key) != want:
            problems.append(f"{key} is {values.get(key)!r}, not {want!r}")
    return problems


# --- the command ----------------------------------------------------------------------------------------------


def new_audit_dir(root: Path, scenario: Scenario, audit: Audit) -> Path:
    """<audits>/<timestamp>_<scenario>_<TEST>/, checked writable before any work."""
    path = root / f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S-%f')}_{scenario}_{audit.name}"
    try:
        path.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"cannot write the audit folder {path}: {e.strerror or e}; pass --audit-dir with a "
                        f"writable folder") from None
    return path


def copy_logs(run_dir: Path, audit_dir: Path, audit: Audit) -> None:
    """The logs in the layout of MLCommons' run_verification.py: accuracy/ (TEST01) and performance/run_1/."""
    performance = audit_dir / "performance" / "run_1"
    performance.mkdir(parents=True, exist_ok=True)
    for name in PERFORMANCE_LOGS:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, performance / name)
    if audit.name == "TEST01" and (run_dir / ACCURACY_LOG).is_file():
        (audit_dir / "accuracy").mkdir(exist_ok=True)
        shutil.copy2(run_dir / ACCURACY_LOG, audit_dir / "accuracy" / ACCURACY_LOG)


def record_audit(run_dir: Path, audit: Audit, references: dict[str, Path], verdicts: dict[str, Verdict],
                 sut_seeds: tuple[int, int, int] | None) -> None:
    """Add the audit to the run's result.json, so later audits and reports can tell it from a plain run.

    ``sut_seeds``: the seeds of the runs audited (None: LoadGen's official ones), which a submission matches.
    """
    path = run_dir / "result.json"
    record = json.loads(path.read_text())
    record["audit"] = {"name": audit.name, "sut_seeds": None if sut_seeds is None else list(sut_seeds),
                       "references": {k: str(v) for k, v in references.items()},
                       "passed": {k: v.passed for k, v in verdicts.items()}}
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")


def verify_audit(audit: Audit, scenario: Scenario, audit_dir: Path, run_dir: Path, references: dict[str, Path],
                 val_map: Path | None) -> dict[str, Verdict]:
    """Every verdict of this audit, written to verify_accuracy.txt / verify_performance.txt in ``audit_dir``."""
    verdicts: dict[str, Verdict] = {}
    problems = check_applied(audit, run_dir)
    applied = [f"LoadGen applied the audit ({AUDIT_WARNING} in the detail log; "
               + ", ".join(f"{k} = {v}" for k, v in audit.expect) + ")"] if not problems else \
        [f"fail: {p}" for p in problems]
    if audit.name == "TEST01":
        labels = [e.label for e in read_map(val_map)] if val_map is not None else None
        verdict = verify_accuracy(references["accuracy"] / ACCURACY_LOG, run_dir / ACCURACY_LOG, labels)
        verdicts["accuracy"] = Verdict((*applied, *verdict.lines), verdict.passed and not problems)
    if audit.rule == "none":
        verdicts["performance"] = Verdict((*applied, f"{audit.name} has no verdict of its own: it is the reference "
                                           f"of TEST04-B"), not problems)
    else:
        reference, why = comparable_reference(audit, run_dir, references)
        verdict = verify_performance(audit, scenario, reference, run_dir)
        if why:
            verdict = Verdict((why, *verdict.lines), verdict.passed)
        verdicts["performance"] = Verdict((*applied, *verdict.lines), verdict.passed and not problems)
    for kind, verdict in verdicts.items():
        (audit_dir / f"verify_{kind}.txt").write_text(verdict.text)
    return verdicts
