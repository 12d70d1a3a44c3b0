"""``--engine triton``: batches sent to Triton Inference Servers over gRPC, awaited on the event loop.

The batcher forms batches as for any engine; each goes to the server with the fewest samples in
flight among those with a free slot (``--inflight`` per server, default two per model instance:
one computing, one crossing the network). The same contract as every engine: int8 NHW4 samples
in, one int32 class each out. At start every server is asked for the model's configuration and
it must match that contract; anything else is one line before LoadGen starts.

Failures: a server that cannot be reached (gone, restarting, past the deadline) is marked down
and the batch goes once to another server, which is counted and reported; a request the server
refuses fails the run at once (another server would refuse it too). Either way the pipeline
completes every sample exactly once.

Each slot owns a send buffer and the pipeline gathers a batch's samples straight into it (the
engine is a ``FillingEngine``): the only copy of a batch on this host. ``shared_memory``: the
servers run on this host, so that buffer is a POSIX shared-memory region registered with its
server and the request carries only its address (Triton's system shared memory), instead of 200 KB
per sample through gRPC. Warm-up sends one full batch through every region, so neither side
faults its pages in during a test.

gRPC's asyncio channels belong to the loop that made them: the engine makes its clients on each
run's loop and warms them before LoadGen starts (``bind_loop``); the first queries of a test paid
10-60 ms for connecting before, enough to fail a 5 s Server run's p99 on 2 cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from asyncbench.config import TRITON_MODEL, TRITON_SHM_TOKEN_GRPC_HEADER
from asyncbench.contract import RESULT_DTYPE, SAMPLE_BYTES, SAMPLE_DTYPE, SAMPLE_SHAPE, check_batch
from asyncbench.engines.base import (
    Capabilities,
    EngineError,
    ExecutionForm,
    HostEngine,
    RequestSpan,
    batch_sizes_upto,
    warmup_batch,
)
from asyncbench.errors import ConfigError, UserError

CHECK_TIMEOUT_S = 5.0  # each start-up question to a server
RESULT_BYTES = np.dtype(RESULT_DTYPE).itemsize
# gRPC status codes after which a server is taken as gone (the batch is retried elsewhere, once).
UNREACHABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN")
_URL = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def parse_urls(text: str) -> tuple[str, ...]:
    """``HOST:PORT[,HOST:PORT...]`` (gRPC endpoints), checked; ValueError names the bad one."""
    urls = tuple(u.strip().removeprefix("grpc://") for u in text.split(",") if u.strip())
    if not urls:
        raise ValueError("needs at least one HOST:PORT (a Triton server's gRPC address)")
    for url in urls:
        match = _URL.match(url)
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise ValueError(f"{url!r} is not HOST:PORT (a server's gRPC address, e.g. 127.0.0.1:8001)")
    if len(set(urls)) != len(urls):
        raise ValueError(f"names a server twice: {','.join(urls)}")
    return urls


def _grpc() -> Any:
    """tritonclient's gRPC module, or one line saying how to get it."""
    # gRPC's core logs a line to stderr whenever the process forks (LoadGen's run spawns git, nvidia-smi).
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        import tritonclient.grpc as grpcclient
    except ImportError:
        raise UserError("--engine triton needs tritonclient: pip install '.[triton]'") from None
    return grpcclient


def _status(error: BaseException) -> str:
    """A tritonclient error's gRPC status code (``UNAVAILABLE``...), empty when it has none."""
    status = getattr(error, "status", None)
    return str(status() if callable(status) else "").removeprefix("StatusCode.")


def _reason(error: BaseException) -> str:
    """A client error in one line: its gRPC status and the first line of its message."""
    code = _status(error)
    message = getattr(error, "message", None)
    text = str((message() if callable(message) else None) or error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return f"{code}: {line}" if code and code not in line else line


def _unreachable(error: BaseException) -> bool:
    return _status(error) in UNREACHABLE or "failed to connect" in str(error)


@dataclass(frozen=True)
class ModelInfo:
    """What a server says about the model: the names and the batching the engine needs."""

    max_batch_size: int
    input_name: str
    output_name: str
    instances: int


def check_model(url: str, model: str, config: dict[str, Any]) -> ModelInfo:
    """The model's configuration against the sample contract; ConfigError says what differs."""
    where = f"model {model!r} at {url}"
    max_batch = int(config.get("max_batch_size", 0))
    if max_batch < 1:
        raise ConfigError(f"{where} does not batch (max_batch_size {max_batch}): serve it with max_batch_size >= 1")
    inputs, outputs = config.get("input", []), config.get("output", [])
    if len(inputs) != 1:
        raise ConfigError(f"{where} has {len(inputs)} inputs; asyncbench sends one int8 "
                          f"{tuple(SAMPLE_SHAPE)} tensor per sample")
    dims = tuple(int(d) for d in inputs[0].get("dims", []))
    if inputs[0].get("data_type") != "TYPE_INT8" or dims != tuple(SAMPLE_SHAPE):
        raise ConfigError(f"{where} takes {inputs[0].get('name')!r} {inputs[0].get('data_type')} "
                          f"{list(dims)}; asyncbench sends int8 {list(SAMPLE_SHAPE)} (NHW4) per sample")
    if len(outputs) != 1 or outputs[0].get("data_type") != "TYPE_INT32" \
            or [int(d) for d in outputs[0].get("dims", [])] not in ([1], []):
        got = [(o.get("name"), o.get("data_type"), o.get("dims")) for o in outputs]
        raise ConfigError(f"{where} answers {got}; asyncbench expects one int32 class per sample (dims [1])")
    instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
    return ModelInfo(max_batch, inputs[0]["name"], outputs[0]["name"], instances)


@dataclass
class _Region:
    """A slot's send buffer: its batch in, its classes out. With ``--triton-shm`` shared memory
    registered with one server (``name``), else host memory whose batch travels in the message."""

    name: str | None
    memory: shared_memory.SharedMemory | None
    batch: np.ndarray
    top1: np.ndarray
    spare: bool = False  # made for one batch past a server's slots, not kept


def _message_region(max_batch: int, spare: bool = False) -> _Region:
    """A send buffer in this process's memory (no shared memory): its batch is copied into the message."""
    return _Region(None, None, np.empty((max_batch, *SAMPLE_SHAPE), SAMPLE_DTYPE), np.empty(0, RESULT_DTYPE),
                   spare)


@dataclass
class _Server:
    url: str
    index: int
    info: ModelInfo
    slots: int
    batches: int = 0  # in flight now
    samples: int = 0
    down: str | None = None  # why it was taken out
    sent_batches: int = 0
    sent_samples: int = 0
    round_trip_ns: int = 0
    regions: list[_Region] = field(default_factory=list)  # the loop path's free ones, one per slot
    blocking: _Region | None = None  # the blocking path's shared memory (one call at a time)
    owned: list[_Region] = field(default_factory=list)  # shared memory to unregister and free


class TritonEngine(HostEngine):
    """Batches to one or more Triton servers serving the asyncbench contract (see the module docstring)."""

    name = "triton"

    def __init__(self, urls: tuple[str, ...], model: str = TRITON_MODEL, max_batch_size: int | None = None,
                 slots_per_server: int | None = None, timeout_s: float = 60.0, shm: bool = False,
                 shm_token: str | None = None) -> None:
        super().__init__()
        self._grpc = _grpc()
        self.model, self.timeout_s, self.shm = model, timeout_s, shm
        # Servers that restrict their shared-memory API (`serve --shm-token`) want it in this header.
        self._shm_headers = {TRITON_SHM_TOKEN_GRPC_HEADER: shm_token} if shm_token else None
        self._sync = [self._grpc.InferenceServerClient(url) for url in urls]
        infos = [self._ask(url, client) for url, client in zip(urls, self._sync, strict=True)]
        served = min(i.max_batch_size for i in infos)
        if max_batch_size is not None and max_batch_size > served:
            raise ConfigError(f"--max-batch-size {max_batch_size}: the served model takes at most {served} "
                              f"(its max_batch_size{' on the smallest server' if len(infos) > 1 else ''})")
        self.max_batch_size = max_batch_size or served
        self._servers = [_Server(url, i, info, slots_per_server or max(2, 2 * info.instances))
                         for i, (url, info) in enumerate(zip(urls, infos, strict=True))]
        total = sum(s.slots for s in self._servers)
        self.capabilities = Capabilities(ExecutionForm.LOOP, total, max(s.slots for s in self._servers),
                                         batch_sizes_upto(self.max_batch_size))
        self.device = ",".join(urls)
        self.retried = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._aio: list[Any] = []
        self._lock = threading.Lock()
        self._next = 0  # the blocking path's round robin
        self._spans: list[RequestSpan] | None = None
        self._baseline: list[dict[str, Any] | None] = []
        self._shm_seq = 0
        try:
            for server in self._servers:
                if shm:
                    server.blocking = self._add_region(server)
                server.regions = [self._add_region(server) if shm else _message_region(self.max_batch_size)
                                  for _ in range(server.slots)]
        except BaseException:
            self.close()
            raise

    # -- start-up ---------------------------------------------------------------------------------------------------
    def _ask(self, url: str, client: Any) -> ModelInfo:
        """Reachable, the model ready, its configuration the contract's: else one line that says which."""
        error = self._grpc.InferenceServerException
        try:
            live = client.is_server_live(client_timeout=CHECK_TIMEOUT_S)
        except error as e:
            raise UserError(f"cannot reach a Triton server at {url} ({_reason(e)}): start one there with "
                            f"`python -m asyncbench serve`, or fix --triton-url") from None
        if not live:
            raise UserError(f"the Triton server at {url} is not live; wait for it or restart it")
        try:
            ready = client.is_model_ready(self.model, client_timeout=CHECK_TIMEOUT_S)
            if not ready:
                index = client.get_model_repository_index(as_json=True, client_timeout=CHECK_TIMEOUT_S)
                names = sorted({m.get("name", "?") for m in index.get("models", [])})
                raise UserError(f"the Triton server at {url} has no ready model {self.model!r} (it has: "
                                f"{', '.join(names) or 'none'}): serve it with `python -m asyncbench serve`, or "
                                f"pass --triton-model")
            config = client.get_model_config(self.model, as_json=True, client_timeout=CHECK_TIMEOUT_S)["config"]
        except error as e:
            raise UserError(f"the Triton server at {url} did not describe model {self.model!r}: {_reason(e)}") from None
        return check_model(url, self.model, config)

    def _add_region(self, server: _Server) -> _Region:
        """One slot's shared memory, registered with ``server`` (which must be on this host)."""
        self._shm_seq += 1
        name = f"asyncbench-{os.getpid()}-{server.index}-{self._shm_seq}"
        size = self.max_batch_size * (SAMPLE_BYTES + RESULT_BYTES)
        memory = shared_memory.SharedMemory(name, create=True, size=size)
        region = _Region(name, memory,
                         np.ndarray((self.max_batch_size, *SAMPLE_SHAPE), SAMPLE_DTYPE, memory.buf),
                         np.ndarray((self.max_batch_size,), RESULT_DTYPE, memory.buf,
                                    offset=self.max_batch_size * SAMPLE_BYTES))
        server.owned.append(region)
        try:
            self._sync[server.index].register_system_shared_memory(name, f"/{name}", size, headers=self._shm_headers,
                                                                   client_timeout=CHECK_TIMEOUT_S)
        except self._grpc.InferenceServerException as e:
            if "protocol is restricted" in str(e):
                said = "did not take the one given" if self._shm_headers else "wants its token"
                raise UserError(f"--triton-shm: the server at {server.url} restricts its shared memory and {said}: "
                                f"pass --triton-shm-token (`serve --shm-token`, or the token serve printed)") from None
            raise UserError(f"--triton-shm: the server at {server.url} cannot map this host's shared memory "
                            f"({_reason(e)}); it must run on this machine, else drop --triton-shm") from None
        return region

    # -- the blocking path (warm-up, evaluation) ---------------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Top-1 of ``batch`` from the next server in turn, waited for on this thread (one call at a time)."""
        n = check_batch(batch, self.max_batch_size, self.name)
        grpc = self._grpc
        with self._lock:
            live = [s for s in self._servers if s.down is None] or self._servers
            server = live[self._next % len(live)]
            self._next += 1
            region = server.blocking
            if region is not None:
                np.copyto(region.batch[:n], batch)
            request, output = self._request(grpc, server, n, region, batch)
            start = time.perf_counter()
            result = self._infer_sync(server, request, output)
            self._latency.record(n, time.perf_counter() - start)
            return self._result(result, region, n, server)

    def _infer_sync(self, server: _Server, request: Any, output: Any) -> Any:
        """One request on ``server``'s blocking client; a client error is an EngineError naming the server."""
        try:
            return self._sync[server.index].infer(self.model, [request], outputs=[output],
                                                  client_timeout=self.timeout_s)
        except self._grpc.InferenceServerException as e:
            raise EngineError(f"Triton server {server.url}: {_reason(e)}") from None

    def warmup(self, batch_sizes: Sequence[int]) -> dict[int, float]:
        """The sizes through the blocking path, then one full batch through every slot's send buffer: each
        buffer's pages (shared memory: the server's mapping too) are touched before a query waits on them."""
        result = super().warmup(batch_sizes)
        full = warmup_batch(self.max_batch_size)
        with self._lock:
            for server in self._servers:
                for region in server.regions:
                    np.copyto(region.batch, full)
                    self._infer_sync(server, *self._request(self._grpc, server, self.max_batch_size, region,
                                                             region.batch))
        return result

    def _request(self, module: Any, server: _Server, n: int, region: _Region | None,
                 data: np.ndarray) -> tuple[Any, Any]:
        """The request's input and output: in ``region``'s shared memory (the batch already there), else
        ``data`` inside the message."""
        info = server.info
        request = module.InferInput(info.input_name, [n, *SAMPLE_SHAPE], "INT8")
        output = module.InferRequestedOutput(info.output_name)
        if region is None or region.name is None:
            request.set_data_from_numpy(data)
            return request, output
        request.set_shared_memory(region.name, n * SAMPLE_BYTES)
        output.set_shared_memory(region.name, n * RESULT_BYTES, offset=self.max_batch_size * SAMPLE_BYTES)
        return request, output

    def _result(self, result: Any, region: _Region | None, n: int, server: _Server) -> np.ndarray:
        """The classes a response carries (or its shared memory holds), checked for count."""
        if region is not None and region.name is not None:
            values = region.top1[:n].copy()
        else:
            values = result.as_numpy(server.info.output_name)
        if values is None or values.size != n:
            raise EngineError(f"Triton server {server.url} answered {0 if values is None else values.size} "
                              f"classes for a batch of {n}")
        return values.reshape(n).astype(RESULT_DTYPE, copy=False)

    @property
    def concurrency(self) -> int:
        """Requests in flight at once: every server's slots (a batch's round trip overlaps the others')."""
        return self.capabilities.slots

    def sustained(self, batch_size: int) -> float | None:
        """Seconds per batch with every slot busy: the measured round trip shared by the slots."""
        seconds = self.latency(batch_size)
        return None if seconds is None else seconds / self.concurrency

    # -- the loop path -------------------------------------------------------------------------------------------------
    def _clients(self) -> list[Any]:
        """This loop's asyncio clients (made on first use on each loop: gRPC channels are bound to one)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            import tritonclient.grpc.aio as aio

            self._loop = loop
            self._aio = [aio.InferenceServerClient(s.url) for s in self._servers]
        return self._aio

    async def bind_loop(self) -> None:
        """This loop's clients, each channel connected and warmed by a round of one-sample requests (one
        per slot, twice), so that a test's first queries do not pay for it. A server that does not answer
        is left to the run (its first batch fails or retries as any would); its statistics are read again
        afterwards, so the warming requests are not counted as the run's."""
        import tritonclient.grpc.aio as aio

        clients = self._clients()
        sample = np.zeros((1, *SAMPLE_SHAPE), SAMPLE_DTYPE)

        async def warm(server: _Server) -> None:
            def one() -> Any:
                request, output = self._request(aio, server, 1, None, sample)
                return clients[server.index].infer(self.model, [request], outputs=[output],
                                                   client_timeout=CHECK_TIMEOUT_S)

            with contextlib.suppress(self._grpc.InferenceServerException):
                for _ in range(2):
                    await asyncio.gather(*(one() for _ in range(server.slots)))

        live = [s for s in self._servers if s.down is None]
        await asyncio.gather(*(warm(s) for s in live))
        if self._baseline:  # a run is being counted (remote_begin): its baseline after the warming
            self._baseline = [self._statistics(s) for s in self._servers]

    def _pick(self, exclude: _Server | None = None) -> _Server | None:
        """The usable server with the fewest samples in flight, one with a free slot where there is one.

        Once a server is down the pipeline still sends as many batches as every server had slots,
        so the live ones may take more than theirs.
        """
        usable = [s for s in self._servers if s.down is None and s is not exclude]
        pool = [s for s in usable if s.batches < s.slots] or usable
        return min(pool, key=lambda s: (s.samples, s.sent_batches)) if pool else None

    async def infer_async(self, batch: np.ndarray) -> np.ndarray:
        """Top-1 of ``batch`` from the least loaded server; one retry elsewhere if that server is gone."""
        n = check_batch(batch, self.max_batch_size, self.name)

        def fill(out: np.ndarray) -> np.ndarray:
            np.copyto(out[:n], batch)
            return out[:n]

        return await self.infer_fill(n, fill)

    async def infer_fill(self, size: int, fill: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """``infer_async`` with the batch written by ``fill`` straight into the chosen slot's send buffer
        (its shared memory with ``--triton-shm``): the pipeline's gather is the only copy on this host."""
        if not 0 < size <= self.max_batch_size:
            raise EngineError(f"{self.name}: a batch of {size} (the engine takes 1 to {self.max_batch_size})")
        server = self._pick()
        if server is None:
            raise EngineError(self._all_down())
        region = self._slot_region(server)
        data = fill(region.batch)
        if not np.may_share_memory(data, region.batch):
            np.copyto(region.batch[:size], data)
        try:
            return await self._send(server, region, size)
        except _Unreachable as e:
            server.down = str(e)
            other = self._pick(exclude=server)
            if other is None:
                raise EngineError(self._all_down()) from None
            self.retried += 1
            again = self._slot_region(other)
            np.copyto(again.batch[:size], region.batch[:size])
            try:
                return await self._send(other, again, size)
            except _Unreachable as second:
                other.down = str(second)
                raise EngineError(f"{e}; the retry on {other.url} failed too: {second}") from None

    def _slot_region(self, server: _Server) -> _Region:
        """A free send buffer of ``server``'s; past its slots (another server is down) one whose batch
        travels in the message."""
        return server.regions.pop() if server.regions else _message_region(self.max_batch_size, spare=True)

    async def _send(self, server: _Server, region: _Region, n: int) -> np.ndarray:
        import tritonclient.grpc.aio as aio

        client = self._clients()[server.index]
        request, output = self._request(aio, server, n, region, region.batch[:n])
        server.batches += 1
        server.samples += n
        sent = time.monotonic_ns()
        ok = False
        try:
            result = await client.infer(self.model, [request], outputs=[output], client_timeout=self.timeout_s)
            top1 = self._result(result, region, n, server)
            ok = True
            return top1
        except self._grpc.InferenceServerException as e:
            if _unreachable(e):
                raise _Unreachable(f"Triton server {server.url} is unreachable ({_reason(e)})") from None
            raise EngineError(f"Triton server {server.url} refused a batch of {n}: {_reason(e)}") from None
        finally:
            received = time.monotonic_ns()
            server.batches -= 1
            server.samples -= n
            if ok and not region.spare:  # a failed request's region may still be written to: never reused
                server.regions.append(region)
            server.sent_batches += 1
            server.sent_samples += n
            server.round_trip_ns += received - sent
            if self._spans is not None:
                self._spans.append(RequestSpan(server.index, n, sent, received, ok))

    def _all_down(self) -> str:
        return "no Triton server is left: " + "; ".join(s.down or f"{s.url}: busy" for s in self._servers)

    # -- what a run reports ------------------------------------------------------------------------------------------
    def remote_begin(self, trace: bool) -> None:
        """Start counting a run: the servers' statistics now, fresh client counters, request spans if ``trace``."""
        for s in self._servers:
            s.sent_batches = s.sent_samples = s.round_trip_ns = 0
        self.retried = 0
        self._spans = [] if trace else None
        self._baseline = [self._statistics(s) for s in self._servers]

    def remote_end(self) -> tuple[dict[str, Any], list[RequestSpan]]:
        """What the run sent each server against what each server says it did (Triton's statistics API)."""
        servers = []
        for s, before in zip(self._servers, self._baseline or [None] * len(self._servers), strict=True):
            after = self._statistics(s)
            entry: dict[str, Any] = {
                "url": s.url, "slots": s.slots, "instances": s.info.instances, "down": s.down,
                "batches": s.sent_batches, "samples": s.sent_samples,
                "round_trip_ms": s.round_trip_ns / s.sent_batches / 1e6 if s.sent_batches else None,
                "server": None if after is None or before is None else _server_side(before, after)}
            servers.append(entry)
        spans, self._spans = self._spans or [], None
        self._baseline = []
        return {"model": self.model, "shared_memory": self.shm, "retried_batches": self.retried,
                "servers": servers}, spans

    def _statistics(self, server: _Server) -> dict[str, Any] | None:
        if server.down is not None:
            return None
        try:
            stats = self._sync[server.index].get_inference_statistics(self.model, as_json=True,
                                                                      client_timeout=CHECK_TIMEOUT_S)
        except self._grpc.InferenceServerException:
            return None
        models = stats.get("model_stats", [])
        return models[0] if models else None

    def close(self) -> None:
        """Unregister (from live servers) and free the shared memory, close the clients."""
        for server in getattr(self, "_servers", []):
            for region in server.owned:
                if server.down is None:  # a server taken out is not asked (a hung one would hold the exit)
                    with contextlib.suppress(Exception):
                        self._sync[server.index].unregister_system_shared_memory(
                            region.name, headers=self._shm_headers, client_timeout=1.0)
                # numpy views keep the buffer exported; drop them before the mapping closes
                region.batch = region.top1 = np.empty(0)
                memory, region.memory = region.memory, None
                if memory is not None:
                    with contextlib.suppress(Exception):
                        memory.close()
                    with contextlib.suppress(FileNotFoundError):
                        memory.unlink()
            server.owned.clear()
            server.regions.clear()
            server.blocking = None
        for client in getattr(self, "_sync", []):
            with contextlib.suppress(Exception):
                client.close()


class _Unreachable(Exception):
    """A server could not be reached for one request (the engine retries it elsewhere, once)."""


def _server_side(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per-request means (ms) of what the server spent during the run, from two statistics snapshots."""
    b, a = before.get("inference_stats", {}), after.get("inference_stats", {})

    def delta(key: str) -> tuple[int, int]:
        return (int(a.get(key, {}).get("count", 0)) - int(b.get(key, {}).get("count", 0)),
                int(a.get(key, {}).get("ns", 0)) - int(b.get(key, {}).get("ns", 0)))

    requests, _ = delta("success")
    record: dict[str, Any] = {
        "requests": requests,
        "executions": int(after.get("execution_count", 0)) - int(before.get("execution_count", 0)),
        "inferences": int(after.get("inference_count", 0)) - int(before.get("inference_count", 0)),
    }
    for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        count, ns = delta(key)
        record[f"{'request' if key == 'success' else key}_ms"] = ns / count / 1e6 if count else None
    return record
