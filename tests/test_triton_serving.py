"""`--engine triton` against real Triton servers started on loopback by the tests, and `asyncbench serve`.

The servers are nvidia-pytriton's bundled tritonserver serving the null engine through Triton's
Python backend (asyncbench.serving); every test stops what it starts.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from asyncbench.cli import main
from asyncbench.engines.triton_remote import TritonEngine, check_model, parse_urls
from asyncbench.errors import ConfigError, UserError
from asyncbench.paths import REPO_ROOT, BuildPaths
from asyncbench.serving.tritonserver import Endpoints, ServedModel, TritonServer, find_distribution, shm_token_for

if os.environ.get("CI") != "true" and not all(importlib.util.find_spec(m) for m in ("pytriton", "tritonclient")):
    # CI installs both (the test extra has them) and must run these; elsewhere they may be missing
    pytest.skip("the Triton server and client come with pip install '.[triton]'", allow_module_level=True)

NULL = "fixed_us=300,per_sample_us=20"  # a modelled device: 1.6 ms per batch of 64, about 40k samples/s


def free_endpoints() -> Endpoints:
    """Three loopback ports nothing listens on now."""
    sockets = [socket.socket() for _ in range(3)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        grpc, http, metrics = (s.getsockname()[1] for s in sockets)
    finally:
        for s in sockets:
            s.close()
    return Endpoints("127.0.0.1", grpc, http, metrics)


def served(**kwargs: object) -> ServedModel:
    return ServedModel(**{"engine": "null", "max_batch_size": 64, "null_spec": NULL, **kwargs})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server() -> Iterator[TritonServer]:
    with TritonServer(served(), free_endpoints()) as s:
        yield s


def _run(build: BuildPaths, tmp: Path, *args: str) -> int:
    return main(["run", "--engine", "triton", "--build-dir", str(build.root), "--log-dir", str(tmp / "logs"),
                 "--no-progress", *args])


def _record(tmp: Path) -> dict[str, object]:
    (run,) = [p for p in (tmp / "logs").iterdir() if not p.is_symlink()]
    return json.loads((run / "result.json").read_text())


SCENARIOS = {
    "Offline": ("--min-duration", "1"),
    # Enough queries that a host stall on the 2-core machine cannot decide early stopping.
    "Server": ("--target-qps", "300", "--min-duration", "1", "--min-query-count", "2500"),
    "SingleStream": ("--min-duration", "1"),
    "MultiStream": ("--min-duration", "1"),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_is_valid_through_a_triton_server(calibrated: BuildPaths, server: TritonServer,
                                                         tmp_path: Path, scenario: str) -> None:
    assert _run(calibrated, tmp_path, "--triton-url", server.url, "--triton-shm", "--scenario", scenario,
                *SCENARIOS[scenario]) == 0
    record = _record(tmp_path)
    assert record["result"]["validity"] == "VALID"  # type: ignore[index]
    remote = record["remote"]
    assert isinstance(remote, dict) and remote["shared_memory"] and remote["retried_batches"] == 0
    (entry,) = remote["servers"]
    samples = record["samples"]
    assert isinstance(samples, dict) and entry["samples"] == samples["issued"] == samples["completed"]
    side = entry["server"]  # Triton's statistics API saw the same requests, and said where their time went
    assert side["requests"] == entry["batches"] and side["inferences"] == entry["samples"]
    assert 0 < side["compute_infer_ms"] < side["request_ms"] < entry["round_trip_ms"]


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_offline_through_grpc_messages_on_either_loop(calibrated: BuildPaths, server: TritonServer,
                                                      tmp_path: Path, loop: str) -> None:
    """Without shared memory the samples travel inside the gRPC messages; the clients are made on the run's loop."""
    timeline = tmp_path / "timeline.json"
    # An expected rate above what plain gRPC carries on 2 cores (~3k/s): LoadGen's one query outlasts 0.5 s.
    assert _run(calibrated, tmp_path, "--triton-url", server.url, "--loop", loop, "--min-duration", "0.5",
                "--target-qps", "10000", "--timeline", str(timeline)) == 0
    record = _record(tmp_path)
    assert record["result"]["validity"] == "VALID"  # type: ignore[index]
    assert record["remote"]["shared_memory"] is False  # type: ignore[index]
    trace = json.loads(timeline.read_text())
    names = {e["args"]["name"] for e in trace["traceEvents"] if e.get("name") == "thread_name"}
    assert any(n.startswith(f"server {server.url} request") for n in names)
    assert trace["otherData"]["server_requests"] == record["remote"]["servers"][0]["batches"]  # type: ignore[index]


def test_two_servers_share_the_load(calibrated: BuildPaths, server: TritonServer, tmp_path: Path) -> None:
    with TritonServer(served(), free_endpoints()) as second:
        assert _run(calibrated, tmp_path, "--triton-url", f"{server.url},{second.url}", "--triton-shm",
                    "--min-duration", "1", "--target-qps", "30000") == 0
    record = _record(tmp_path)
    assert record["result"]["validity"] == "VALID"  # type: ignore[index]
    shares = [s["samples"] for s in record["remote"]["servers"]]  # type: ignore[index]
    assert len(shares) == 2 and sum(shares) == record["samples"]["issued"]  # type: ignore[index]
    assert min(shares) > 0.25 * sum(shares), shares


def test_a_served_onnxruntime_engine_answers_as_it_does_in_process(calibrated: BuildPaths, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The real model served: the classes that come back (through gRPC and shared memory) are the engine's own."""
    from asyncbench.data.dataset import VAL_LAYOUT, read_map, resolve_dataset
    from asyncbench.data.qsl import SampleArena
    from asyncbench.engines.onnxruntime_engine import OnnxRuntimeEngine

    dataset = resolve_dataset(calibrated)
    names = [e.name for e in read_map(dataset.val_map)][:16]
    arena = SampleArena(dataset.preprocessed_dir(calibrated.preprocessed, VAL_LAYOUT), names)
    arena.load(list(range(16)))
    photos = arena.gather(list(range(16)), out=np.empty((16, 224, 224, 4), np.int8))
    with OnnxRuntimeEngine(calibrated.int8_model, max_batch_size=16) as local:
        want = local.infer(photos)
    model = ServedModel(engine="onnxruntime", max_batch_size=16, build_dir=str(calibrated.root.resolve()))
    with TritonServer(model, free_endpoints()) as ort:
        for shm in (False, True):
            remote = TritonEngine((ort.url,), shm=shm)
            try:
                assert remote.infer(photos).tolist() == want.tolist()
                assert remote.infer(photos[3:8]).tolist() == want[3:8].tolist()
            finally:
                remote.close()
        for flags in (["--triton-shm"], []):  # gathered straight into shared memory, or into the message's buffer
            capsys.readouterr()
            assert _run(calibrated, tmp_path, "--triton-url", ort.url, *flags, "--test-mode", "AccuracyOnly") == 0
            assert "accuracy=100.000%, good=4, total=4" in capsys.readouterr().out


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_wrong_url_is_one_line_before_loadgen(calibrated: BuildPaths, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    dead = free_endpoints().grpc_url
    assert _run(calibrated, tmp_path, "--triton-url", dead) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert f"cannot reach a Triton server at {dead}" in line and "asyncbench serve" in line
    assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").rglob("mlperf_log_summary.txt"))


def test_a_server_without_the_model_is_one_line(calibrated: BuildPaths, server: TritonServer, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(calibrated, tmp_path, "--triton-url", server.url, "--triton-model", "resnet50") == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "no ready model 'resnet50' (it has: mobilenet)" in line
    assert not list((tmp_path / "logs").rglob("mlperf_log_summary.txt"))


def test_a_model_with_the_wrong_input_shape_is_one_line(calibrated: BuildPaths, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    with TritonServer(served(input_dims=(3, 224, 224)), free_endpoints()) as wrong:
        assert _run(calibrated, tmp_path, "--triton-url", wrong.url) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "takes 'input' TYPE_INT8 [3, 224, 224]; asyncbench sends int8 [224, 224, 4]" in line
    assert not list((tmp_path / "logs").rglob("mlperf_log_summary.txt"))


def test_a_refused_batch_fails_the_run_with_every_sample_completed_once(calibrated: BuildPaths, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # The served engine fails its 200th batch: its own warm-up takes 35, the client's 35, the run the rest.
    with TritonServer(served(null_spec=f"{NULL},fail_after=200"), free_endpoints()) as failing:
        code = _run(calibrated, tmp_path, "--triton-url", failing.url, "--triton-shm", "--target-qps", "20000",
                    "--min-duration", "1")
    captured = capsys.readouterr()
    line = _one_error_line(captured.out + captured.err)
    assert code == 1 and "refused a batch" in line and "injected failure" in line
    record = _record(tmp_path)
    samples = record["samples"]
    assert record["result"]["validity"] == "FAILED"  # type: ignore[index]
    assert samples["issued"] == samples["completed"] and samples["failed"] > 0  # type: ignore[index]


def test_a_server_killed_mid_run_ends_the_run_within_10_s(calibrated: BuildPaths, tmp_path: Path) -> None:
    with TritonServer(served(), free_endpoints()) as doomed:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        run = subprocess.Popen([sys.executable, "-m", "asyncbench", "run", "--engine", "triton", "--triton-url",
                                doomed.url, "--triton-shm", "--scenario", "Server", "--target-qps", "500",
                                "--min-duration", "60", "--no-progress", "--build-dir", str(calibrated.root),
                                "--log-dir", str(tmp_path / "logs")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            deadline = time.monotonic() + 60
            while not list((tmp_path / "logs").rglob("mlperf_log_detail.txt")) and time.monotonic() < deadline:
                time.sleep(0.1)  # the test itself has started (LoadGen opened its logs)
            time.sleep(1.0)
            stub_memory = Path("/dev/shm").glob(f"{doomed.stub_memory_prefix}*")
            assert next(stub_memory, None) is not None  # its Python backend's regions, named for this server
            doomed.kill()
            killed = time.monotonic()
            assert not list(Path("/dev/shm").glob(f"{doomed.stub_memory_prefix}*"))  # not left behind
            out, err = run.communicate(timeout=30)
            took = time.monotonic() - killed
        finally:
            if run.poll() is None:
                run.kill()
    line = _one_error_line(out + err)
    assert run.returncode == 1 and took < 10, (took, line)
    assert f"Triton server {doomed.url} is unreachable" in line
    record = _record(tmp_path)
    samples = record["samples"]
    assert samples["issued"] == samples["completed"] and samples["failed"] > 0  # type: ignore[index]
    assert "result: FAILED" in out or record["result"]["validity"] == "FAILED"  # type: ignore[index]


def test_a_server_killed_mid_run_hands_its_batches_to_the_other(calibrated: BuildPaths, server: TritonServer,
                                                                 tmp_path: Path) -> None:
    with TritonServer(served(), free_endpoints()) as doomed:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        run = subprocess.Popen([sys.executable, "-m", "asyncbench", "run", "--engine", "triton", "--triton-url",
                                f"{doomed.url},{server.url}", "--triton-shm", "--scenario", "Server",
                                "--target-qps", "400", "--min-duration", "4", "--no-progress",
                                "--build-dir", str(calibrated.root), "--log-dir", str(tmp_path / "logs")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            deadline = time.monotonic() + 60
            while not list((tmp_path / "logs").rglob("mlperf_log_detail.txt")) and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)
            doomed.kill()
            out, err = run.communicate(timeout=60)
        finally:
            if run.poll() is None:
                run.kill()
    assert run.returncode == 0, out + err
    record = _record(tmp_path)
    remote = record["remote"]
    assert isinstance(remote, dict) and remote["retried_batches"] >= 1
    first, second = remote["servers"]
    assert "unreachable" in first["down"] and second["down"] is None and second["samples"] > first["samples"]
    assert "were sent again to another server" in out
    assert record["samples"]["failed"] == 0  # type: ignore[index]


def test_warm_up_and_the_runs_loop_are_warmed_outside_the_runs_count(server: TritonServer) -> None:
    """Warm-up sends a full batch through every slot's shared memory (its pages touched on both sides);
    bind_loop connects the run's loop with one-sample requests that the run's record leaves out."""
    import tritonclient.grpc as grpcclient

    reader = grpcclient.InferenceServerClient(server.url)

    def served_counts() -> tuple[int, int]:
        stats = reader.get_inference_statistics("mobilenet", as_json=True)["model_stats"][0]
        return int(stats["inference_stats"]["success"].get("count", 0)), int(stats.get("inference_count", 0))

    engine = TritonEngine((server.url,), shm=True)
    try:
        requests, samples = served_counts()
        engine.warmup([1])
        assert served_counts() == (requests + 5 + 2, samples + 5 + 2 * engine.max_batch_size)

        async def run() -> list[int]:
            await engine.bind_loop()
            return (await engine.infer_async(np.zeros((3, 224, 224, 4), np.int8))).tolist()

        engine.remote_begin(trace=False)
        assert asyncio.run(run()) == [0, 0, 0]
        (entry,) = engine.remote_end()[0]["servers"]
        assert (entry["batches"], entry["server"]["requests"], entry["server"]["inferences"]) == (1, 1, 3)
        assert served_counts() == (requests + 7 + 2 * 2 + 1, samples + 7 + 2 * engine.max_batch_size + 2 + 3)
    finally:
        engine.close()
        reader.close()


def test_a_shared_memory_token_lets_in_only_the_clients_that_send_it(calibrated: BuildPaths, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    ends = free_endpoints()
    with TritonServer(served(), Endpoints(ends.host, *ends.ports(), shm_token="t0ken")) as guarded:
        engine = TritonEngine((guarded.url,), shm=True, shm_token="t0ken")
        try:
            assert engine.infer(np.zeros((3, 224, 224, 4), np.int8)).tolist() == [0] * 3
        finally:
            engine.close()
        for token, said in ((None, "wants its token"), ("wrong", "did not take the one given")):
            with pytest.raises(UserError, match=f"restricts its shared memory and {said}: pass --triton-shm-token"):
                TritonEngine((guarded.url,), shm=True, shm_token=token)
        plain = TritonEngine((guarded.url,))  # inference itself stays open
        try:
            assert plain.infer(np.zeros((2, 224, 224, 4), np.int8)).tolist() == [0, 0]
        finally:
            plain.close()
        assert _run(calibrated, tmp_path, "--triton-url", guarded.url, "--triton-shm", "--triton-shm-token",
                    "t0ken", "--min-duration", "0.5", "--target-qps", "30000") == 0
        assert _record(tmp_path)["result"]["validity"] == "VALID"  # type: ignore[index]
        capsys.readouterr()
        assert _run(calibrated, tmp_path, "--triton-url", guarded.url, "--triton-shm") == 1
        assert "pass --triton-shm-token" in _one_error_line(capsys.readouterr().err)
        assert _run(calibrated, tmp_path, "--triton-url", guarded.url, "--triton-shm-token", "t0ken") == 2
        assert "it goes with --triton-shm" in _one_error_line(capsys.readouterr().err)


def test_a_server_other_hosts_reach_gets_a_shared_memory_token() -> None:
    assert shm_token_for("127.0.0.1", None) is None and shm_token_for("::1", None) is None
    first, second = shm_token_for("0.0.0.0", None), shm_token_for("10.1.2.3", None)
    assert first and second and first != second and len(first) == 32
    assert shm_token_for("0.0.0.0", "mine") == "mine"
    with pytest.raises(ConfigError, match="--shm-token must be non-empty"):
        shm_token_for("127.0.0.1", "a:b")


def test_a_server_past_its_slots_takes_the_extra_batches_in_the_message(server: TritonServer) -> None:
    """What a live server gets once another is down: more batches than it has shared-memory regions."""
    engine = TritonEngine((server.url,), slots_per_server=1, shm=True)

    async def three() -> list[np.ndarray]:
        batches = [np.full((n, 224, 224, 4), n, np.int8) for n in (1, 2, 3)]
        return list(await asyncio.gather(*(engine.infer_async(b) for b in batches)))

    try:
        assert [r.tolist() for r in asyncio.run(three())] == [[0], [0, 0], [0, 0, 0]]
        assert engine.remote_end()[0]["servers"][0]["batches"] == 3
    finally:
        engine.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_prints_its_urls_and_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    ends = free_endpoints()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    serve = subprocess.Popen([sys.executable, "-m", "asyncbench", "serve", "--engine", "null", "--null", NULL,
                              "--max-batch-size", "8", "--build-dir", str(tmp_path / "build"),
                              "--grpc-port", str(ends.grpc_port), "--http-port", str(ends.http_port),
                              "--metrics-port", str(ends.metrics_port)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True)
    try:
        assert serve.stdout is not None
        first = serve.stdout.readline()
        assert first.startswith("serving mobilenet (null, 1 instance(s), max batch 8"), first
        urls = serve.stdout.readline()
        assert f"grpc {ends.grpc_url}" in urls and "(bound to 127.0.0.1)" in urls
        engine = TritonEngine((ends.grpc_url,))  # a client sees it, with the batch size it was given
        try:
            assert engine.max_batch_size == 8 and engine.infer(np.zeros((3, 224, 224, 4), np.int8)).tolist() == [0] * 3
        finally:
            engine.close()
        serve.send_signal(sig)
        start = time.monotonic()
        serve.wait(timeout=20)
        assert serve.returncode == 0 and time.monotonic() - start < 10
        assert "stopped (tritonserver exit status" in (serve.stderr.read() if serve.stderr else "")
        with pytest.raises(ProcessLookupError):  # nothing of its process group is left
            os.killpg(serve.pid, 0)
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", ends.grpc_port)) != 0
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    ends = free_endpoints()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ends.grpc_port))
        taken.listen()
        with pytest.raises(Exception, match="Address already in use|address already in use|failed to start"):
            TritonServer(served(), ends).start(timeout_s=60)


def test_a_server_binary_without_its_exec_bit_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the distribution whose binaries lost their modes (as a plain zip extraction leaves them)."""
    import shutil

    from asyncbench.errors import UserError

    real = find_distribution()
    root = tmp_path / "pytriton"
    binary = root / "tritonserver" / "bin" / "tritonserver"
    binary.parent.mkdir(parents=True)
    (root / "__init__.py").write_text("")  # a regular package: it shadows the installed one
    binary.write_bytes(b"")  # a stand-in: only its mode is looked at
    binary.chmod(0o644)
    stub_dir = root / "tritonserver" / "python_backend_stubs" / real.stub.parent.name
    stub_dir.mkdir(parents=True)
    shutil.copy(real.stub, stub_dir / real.stub.name)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match="is not executable .* chmod \\+x it"):
        find_distribution()


# --- no server needed ---------------------------------------------------------------------------------------------


def test_urls_are_checked() -> None:
    assert parse_urls("127.0.0.1:8001, grpc://h2:9001") == ("127.0.0.1:8001", "h2:9001")
    for bad in ("", "host", "host:0", "host:70000", "a:1,a:1"):
        with pytest.raises(ValueError):
            parse_urls(bad)


def test_model_configs_against_the_contract() -> None:
    good = {"max_batch_size": 32, "input": [{"name": "x", "data_type": "TYPE_INT8", "dims": ["224", "224", "4"]}],
            "output": [{"name": "y", "data_type": "TYPE_INT32", "dims": ["1"]}],
            "instance_group": [{"count": 2}, {"count": 1}]}
    info = check_model("h:1", "m", good)
    assert (info.max_batch_size, info.input_name, info.output_name, info.instances) == (32, "x", "y", 3)
    for change, words in [({"max_batch_size": 0}, "does not batch"),
                          ({"input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [224, 224, 4]}]}, "TYPE_FP32"),
                          ({"output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [1000]}]}, "one int32 class")]:
        with pytest.raises(ConfigError, match=words):
            check_model("h:1", "m", {**good, **change})


def test_the_served_config_names_the_engine_and_batcher() -> None:
    text = served(instances=2, max_queue_delay_us=500, preferred_batch_sizes=(8, 16)).config_pbtxt()
    assert "max_batch_size: 64" in text and "count: 2 kind: KIND_CPU" in text
    assert "dynamic_batching { max_queue_delay_microseconds: 500 preferred_batch_size: [ 8, 16 ] }" in text
    assert "dims: [ 224, 224, 4 ]" in text and "TYPE_INT8" in text and "TYPE_INT32" in text
    assert "dynamic_batching" not in served(max_queue_delay_us=None).config_pbtxt()
    assert find_distribution().binary.is_file()
