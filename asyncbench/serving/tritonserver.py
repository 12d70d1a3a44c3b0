"""A real Triton Inference Server process serving one of asyncbench's engines through the Python backend.

The server is the ``tritonserver`` binary nvidia-pytriton bundles (2.51, Python backend only), run
bare, not through PyTriton: the model is a Python-backend model whose ``execute`` calls the engine
inside Triton's own stub process, so a request crosses no extra proxy (PyTriton relays every
request through a socket to the Python process that started it). Starting bare also measured
faster here (2.6 s to ready against PyTriton's 4.5 s).

What the Python backend needs from this interpreter, set up here so the user never has to:
its stub embeds a libpython of the same version (shared, found through ``LD_LIBRARY_PATH``), and
it finds its ``sys.prefix`` by looking for ``python3`` on ``PATH`` (this interpreter's folder
goes first, so a virtual environment's packages are the stub's); the entries of this process's
``sys.path`` go into the generated model file, so packages added through ``PYTHONPATH`` (which
the stub ignores) are found too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from asyncbench.config import TRITON_MODEL, TRITON_SHM_TOKEN_KEY
from asyncbench.contract import SAMPLE_SHAPE
from asyncbench.errors import ConfigError, UserError

INSTALL_HINT = "pip install --no-deps 'nvidia-pytriton>=0.7,<0.8' (only the tritonserver binary it bundles is used)"
STOP_TIMEOUT_S = 10.0  # SIGTERM, then this long for in-flight requests and the stubs, then SIGKILL


@dataclass(frozen=True)
class ServedModel:
    """What the served model is: the engine it runs and how Triton batches and instantiates it."""

    engine: str  # an EngineKind value: onnxruntime, torch, tensorrt or null
    max_batch_size: int
    name: str = TRITON_MODEL
    instances: int = 1
    precision: str | None = None
    null_spec: str = ""
    threads: int | None = None
    torch_compile: str = "default"
    build_dir: str = "build"
    # Triton's dynamic batcher: None turns it off (each request runs as sent); else its delay in us.
    max_queue_delay_us: int | None = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    input_dims: tuple[int, ...] = SAMPLE_SHAPE  # the contract's; tests serve a wrong one on purpose

    def config_pbtxt(self) -> str:
        """The model's config.pbtxt: int8 NHW4 in, one int32 class per sample out, the engine in a parameter."""
        engine = {k: v for k, v in asdict(self).items() if k not in ("name", "instances", "max_queue_delay_us",
                                                                        "preferred_batch_sizes", "input_dims")}
        lines = [
            f'name: "{self.name}"',
            'backend: "python"',
            f"max_batch_size: {self.max_batch_size}",
            f'input [ {{ name: "input" data_type: TYPE_INT8 dims: [ {", ".join(map(str, self.input_dims))} ] }} ]',
            'output [ { name: "top1" data_type: TYPE_INT32 dims: [ 1 ] } ]',
            f"instance_group [ {{ count: {self.instances} kind: KIND_CPU }} ]",
            f"parameters {{ key: \"asyncbench\" value: {{ string_value: {json.dumps(json.dumps(engine))} }} }}",
        ]
        if self.max_queue_delay_us is not None:
            preferred = (f" preferred_batch_size: [ {', '.join(map(str, self.preferred_batch_sizes))} ]"
                         if self.preferred_batch_sizes else "")
            lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {self.max_queue_delay_us}{preferred} }}")
        return "\n".join(lines) + "\n"


LOOPBACK = ("127.", "::1", "localhost")


def shm_token_for(host: str, given: str | None) -> str | None:
    """The shared-memory token a server bound to ``host`` gets: the one given, else none on loopback (only
    this host reaches it) and a random one on any other address (other hosts must not map this one's
    /dev/shm)."""
    if given is not None:
        if not given or any(c.isspace() or c in ",:=" for c in given):
            raise ConfigError("--shm-token must be non-empty, without spaces, ',', ':' or '='")
        return given
    return None if host.startswith(LOOPBACK) else secrets.token_hex(16)


@dataclass(frozen=True)
class Endpoints:
    """Where the server listens (Triton's default ports), and the token its shared-memory API asks for.

    With ``shm_token`` a client must send it in the ``shm-token`` header to register shared memory
    (Triton's restricted protocols): a server reachable from other hosts should not let them map
    this host's ``/dev/shm``. Inference, health and statistics stay open.
    """

    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    shm_token: str | None = None

    @property
    def local_host(self) -> str:
        """The address this machine reaches the server at (a wildcard bind is reached on loopback)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else "::1" if self.host == "::" else self.host

    @property
    def grpc_url(self) -> str:
        return f"{self.local_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.local_host}:{self.http_port}"

    def ports(self) -> tuple[int, int, int]:
        return self.grpc_port, self.http_port, self.metrics_port


@dataclass(frozen=True)
class Distribution:
    """The tritonserver binary, its bundled libraries and the Python backend files for this interpreter."""

    binary: Path
    libraries: Path
    backend: Path  # libtriton_python.so and triton_python_backend_utils.py
    stub: Path


def find_distribution() -> Distribution:
    """nvidia-pytriton's bundled server (found without importing pytriton, which pulls in much more)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"asyncbench serve needs a tritonserver: {INSTALL_HINT}")
    root = Path(next(iter(spec.submodule_search_locations)))
    dist = root / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    found = Distribution(dist / "bin" / "tritonserver", root.parent / "nvidia_pytriton.libs",
                         dist / "backends" / "python", stub)
    if not found.binary.is_file():
        raise UserError(f"nvidia-pytriton at {root} has no tritonserver binary: reinstall it ({INSTALL_HINT})")
    for program in (found.binary, stub):
        if program.is_file() and not os.access(program, os.X_OK):
            raise UserError(f"{program} is not executable (a copy that lost its file modes, such as an archive "
                            f"extracted without them): chmod +x it, or reinstall nvidia-pytriton with pip")
    if not stub.is_file():
        have = sorted(p.name for p in (dist / "python_backend_stubs").glob("*"))
        raise UserError(f"the bundled Triton Python backend has stubs for Python {', '.join(have)}, not {version}: "
                        f"serve from one of those")
    return found


def libpython_dir() -> Path:
    """The folder holding this interpreter's shared libpython, which the Python backend's stub loads."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise UserError("this Python has no shared libpython, which Triton's Python backend loads: serve from a "
                        "Python built with --enable-shared (Debian/Ubuntu's python3; pyenv with "
                        "PYTHON_CONFIGURE_OPTS=--enable-shared)")
    return Path(str(sysconfig.get_config_var("LIBDIR")))


BOOTSTRAP = '''"""Triton Python-backend model: asyncbench's served engine (generated by asyncbench serve)."""
import sys

for _entry in reversed({paths!r}):
    if _entry not in sys.path:
        sys.path.insert(0, _entry)

from asyncbench.serving.python_model import TritonPythonModel  # noqa: E402,F401
'''


def write_repository(root: Path, model: ServedModel) -> Path:
    """``root/<name>/config.pbtxt`` and ``root/<name>/1/model.py`` (the bootstrap into asyncbench)."""
    folder = root / model.name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(model.config_pbtxt())
    paths = [str(Path(p).resolve()) for p in sys.path if p and Path(p).exists()]
    (folder / "1" / "model.py").write_text(BOOTSTRAP.format(paths=paths))
    return root


def _backend_dir(root: Path, dist: Distribution) -> Path:
    """A backend folder whose python/ holds the stub for this interpreter's version (links to the rest)."""
    python = root / "python"
    python.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (python / name).symlink_to(dist.backend / name)
    shutil.copy(dist.stub, python / "triton_python_backend_stub")
    return root


def server_environment(dist: Distribution, base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: its libraries and libpython found, this interpreter first on PATH."""
    env = dict(os.environ if base is None else base)
    libs = [str(libpython_dir()), str(dist.libraries)]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(libs)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


class TritonServer:
    """One tritonserver process (and its Python-backend stubs) serving ``model``; a context manager.

    ``start`` returns once the model is ready, or raises UserError with the server's own reason in
    one line (a port in use, the engine failing to load). ``stop`` sends SIGTERM to the whole
    process group and SIGKILL after ``STOP_TIMEOUT_S``; nothing it started outlives it.
    """

    def __init__(self, model: ServedModel, endpoints: Endpoints = Endpoints(), workdir: Path | None = None) -> None:
        if model.max_batch_size < 1:
            raise ConfigError(f"a served model needs max batch size >= 1, got {model.max_batch_size}")
        if model.instances < 1:
            raise ConfigError(f"--instances must be at least 1, got {model.instances}")
        if len(set(endpoints.ports())) != 3:
            raise ConfigError(f"the gRPC, HTTP and metrics ports must differ, got {endpoints.ports()}")
        self.model, self.endpoints = model, endpoints
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="asyncbench-triton-")) if workdir is None else workdir
        self.log_path = self.workdir / "tritonserver.log"
        self.process: subprocess.Popen[bytes] | None = None
        # The Python backend's shared memory (20 MB per model instance) outlives a killed server: a prefix
        # of this server's own lets stop() and kill() remove it.
        self.stub_memory_prefix = f"asyncbench_{os.getpid()}_{endpoints.grpc_port}_"

    @property
    def url(self) -> str:
        """The gRPC address a client on this machine uses."""
        return self.endpoints.grpc_url

    def command(self, dist: Distribution) -> list[str]:
        """The tritonserver command line: every endpoint on the chosen address, models loaded at start."""
        e = self.endpoints
        return [str(dist.binary), f"--model-repository={self.workdir / 'models'}",
                f"--backend-directory={self.workdir / 'backends'}",
                f"--grpc-address={e.host}", f"--grpc-port={e.grpc_port}",
                f"--http-address={e.host}", f"--http-port={e.http_port}",
                f"--metrics-address={e.host}", f"--metrics-port={e.metrics_port}",
                "--exit-on-error=true", "--strict-readiness=true", "--disable-auto-complete-config",
                f"--exit-timeout-secs={int(STOP_TIMEOUT_S) // 2}", "--log-verbose=0",
                f"--backend-config=python,shm-region-prefix-name={self.stub_memory_prefix}",
                *([f"--grpc-restricted-protocol=shared-memory:{TRITON_SHM_TOKEN_KEY}={e.shm_token}",
                   f"--http-restricted-api=shared-memory:{TRITON_SHM_TOKEN_KEY}={e.shm_token}"] if e.shm_token else [])]

    def start(self, timeout_s: float = 180.0) -> Self:
        """Write the repository, start the server, and wait until the model is ready."""
        dist = find_distribution()
        env = server_environment(dist)
        write_repository(self.workdir / "models", self.model)
        _backend_dir(self.workdir / "backends", dist)
        with self.log_path.open("wb") as log:
            # Its own session: a Ctrl-C at the terminal reaches us, not the server, and stop() signals the group.
            self.process = subprocess.Popen(self.command(dist), stdout=log, stderr=subprocess.STDOUT, env=env,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        ready = f"{self.endpoints.http_url}/v2/models/{self.model.name}/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                reason = self.failure_reason()
                self._own_workdir = False  # keep the log the message points at
                self.stop()
                raise UserError(f"tritonserver exited before {self.model.name} was ready: {reason} "
                                f"(log: {self.log_path})")
            if _http_ok(ready):
                return self
            time.sleep(0.05)
        self._own_workdir = False
        self.stop()
        raise UserError(f"tritonserver did not get {self.model.name} ready within {timeout_s:g} s "
                        f"(log: {self.log_path})")

    def failure_reason(self) -> str:
        """The line of the server's log that says why it stopped (or its last line)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        for marker in ("Address already in use", "Failed to create instance", "failed to load", "error:"):
            for line in lines:
                if marker in line:
                    return " ".join(line.split())[:400]
        return lines[-1][:400] if lines else "no output"

    def alive(self) -> bool:
        """Whether the server process is running."""
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        """Stop the server and its stubs (SIGTERM to its process group, SIGKILL past the timeout); its exit status."""
        process, self.process = self.process, None
        status = None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                status = process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                status = process.wait()
            with contextlib.suppress(ProcessLookupError):  # a stub the server left behind
                os.killpg(process.pid, signal.SIGKILL)
        self._remove_stub_memory()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return status

    def kill(self) -> None:
        """SIGKILL the server and its stubs at once (what a crashed host looks like to a client)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self._remove_stub_memory()

    def _remove_stub_memory(self) -> None:
        """The Python backend's shared-memory regions of this server, once nothing of it is left to use them."""
        for path in Path("/dev/shm").glob(f"{self.stub_memory_prefix}*"):
            with contextlib.suppress(OSError):
                path.unlink()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
