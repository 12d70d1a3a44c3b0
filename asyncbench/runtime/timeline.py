"""``--timeline FILE.json``: a Chrome / Perfetto trace of every batch, from stamps the pipeline takes anyway.

Per batch: the oldest sample's arrival on LoadGen's issue thread, the batch being formed by the
batcher, the start and end of its execution on a slot (host view: for a GPU engine, from the
enqueue of the copy-in to the loop seeing the top-1 result back), and its completion to LoadGen.
For a GPU engine, the device view too: CUDA events around each batch's host-to-device copy and
its compute (top-1 copy back included), placed on the host clock (asyncbench.engines.gpu); for a
remote engine (Triton), each request's round trip on a track per server. One track per stage,
per execute slot, per device stream and per server, plus counters (samples pending in the
batcher, batches in flight). Nothing is recorded without the flag; with it, one tuple per batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from asyncbench.engines.base import DeviceSpan, RequestSpan
from asyncbench.fileio import write_output
from asyncbench.runtime.observer import BatchStamps, Observer

_PID = 1
_TID_BATCHER, _TID_COMPLETE, _TID_SLOT0, _TID_DEVICE0, _TID_SERVER0 = 1, 2, 10, 100, 200


class Timeline(Observer):
    """The recorded batches (the run's ``batch_done`` hook); ``write`` turns them into trace events."""

    active = True

    def __init__(self) -> None:
        self.batches: list[BatchStamps] = []
        self.device_spans: list[DeviceSpan] = []
        self.device_uncertainty_ns = 0
        self.request_spans: list[RequestSpan] = []
        self.servers: list[str] = []

    def batch_done(self, stamps: BatchStamps) -> None:
        self.batches.append(stamps)

    def add_device_spans(self, spans: list[DeviceSpan], uncertainty_ns: int) -> None:
        """The GPU's own view of the batches (CUDA events), placed on the host clock to within ``uncertainty_ns``."""
        self.device_spans += spans
        self.device_uncertainty_ns = max(self.device_uncertainty_ns, uncertainty_ns)

    def add_request_spans(self, spans: list[RequestSpan], servers: list[str]) -> None:
        """A remote engine's requests: one track per server, each request's round trip on it."""
        self.request_spans += spans
        self.servers = list(servers)

    def events(self) -> list[dict[str, object]]:
        """Chrome trace events (microseconds from the first arrival)."""
        if not self.batches and not self.device_spans and not self.request_spans:
            return []
        t0 = min([b.oldest_arrival for b in self.batches] + [d.copy_start for d in self.device_spans]
                 + [r.sent for r in self.request_spans])

        def us(ns: int) -> float:
            return (ns - t0) / 1000

        slots = sorted({b.slot for b in self.batches})
        events: list[dict[str, object]] = [
            {"ph": "M", "pid": _PID, "name": "process_name", "args": {"name": "asyncbench"}},
            {"ph": "M", "pid": _PID, "tid": _TID_BATCHER, "name": "thread_name", "args": {"name": "batcher (queue)"}},
            {"ph": "M", "pid": _PID, "tid": _TID_COMPLETE, "name": "thread_name", "args": {"name": "completion"}},
            *({"ph": "M", "pid": _PID, "tid": _TID_SLOT0 + s, "name": "thread_name",
               "args": {"name": f"execute slot {s}"}} for s in slots),
        ]
        for b in self.batches:
            args = {"batch": b.seq, "size": b.size, "ok": b.ok}
            events += [
                {"ph": "X", "pid": _PID, "tid": _TID_BATCHER, "name": f"queued ({b.size})", "ts": us(b.oldest_arrival),
                 "dur": (b.formed - b.oldest_arrival) / 1000, "args": args},
                {"ph": "X", "pid": _PID, "tid": _TID_SLOT0 + b.slot, "name": f"wait for slot ({b.size})",
                 "ts": us(b.formed), "dur": (b.started - b.formed) / 1000, "args": args},
                {"ph": "X", "pid": _PID, "tid": _TID_SLOT0 + b.slot, "name": f"execute ({b.size})", "ts": us(b.started),
                 "dur": (b.executed - b.started) / 1000, "args": args},
                {"ph": "X", "pid": _PID, "tid": _TID_COMPLETE, "name": f"complete ({b.size})", "ts": us(b.executed),
                 "dur": (b.completed - b.executed) / 1000, "args": args},
                {"ph": "C", "pid": _PID, "name": "pending samples", "ts": us(b.formed),
                 "args": {"pending": b.pending_after}},
                {"ph": "C", "pid": _PID, "name": "batches in flight", "ts": us(b.started),
                 "args": {"in flight": b.in_flight}},
            ]
        # One track per stream of each device: its copy streams (a modelled device copies nothing), then its
        # inference streams.
        tracks: dict[tuple[int, int, int], int] = {}
        kinds = {d.device: d.kind for d in self.device_spans}
        for key in sorted({(d.device, 0, d.copy_stream) for d in self.device_spans if d.copy_end > d.copy_start}
                          | {(d.device, 1, d.stream) for d in self.device_spans}):
            tracks[key] = _TID_DEVICE0 + len(tracks)
            device, compute, lane = key
            name = (f"{kinds[device]}:{device} inference stream {lane} (engine, top-1 back)" if compute
                    else f"{kinds[device]}:{device} copy stream {lane} (host to device)")
            events.append({"ph": "M", "pid": _PID, "tid": tracks[key], "name": "thread_name", "args": {"name": name}})
        for d in self.device_spans:
            args = {"device batch": d.batch, "size": d.size, "bucket": d.bucket}
            if d.copy_end > d.copy_start:
                events.append({"ph": "X", "pid": _PID, "tid": tracks[(d.device, 0, d.copy_stream)],
                               "name": f"copy in ({d.size})", "ts": us(d.copy_start),
                               "dur": (d.copy_end - d.copy_start) / 1000, "args": args})
            events.append({"ph": "X", "pid": _PID, "tid": tracks[(d.device, 1, d.stream)],
                           "name": f"compute ({d.bucket})", "ts": us(d.compute_start),
                           "dur": (d.compute_end - d.compute_start) / 1000, "args": args})
        events += self._server_events(us)
        return events

    def _server_events(self, us: Callable[[int], float]) -> list[dict[str, object]]:
        """Per server, its requests' round trips; requests overlapping on one server stack as lanes."""
        events: list[dict[str, object]] = []
        lanes: dict[tuple[int, int], int] = {}
        ends: dict[int, list[int]] = {}
        for r in sorted(self.request_spans, key=lambda r: r.sent):
            free = ends.setdefault(r.server, [])
            lane = next((i for i, end in enumerate(free) if end <= r.sent), len(free))
            if lane == len(free):
                free.append(0)
            free[lane] = r.received
            if (r.server, lane) not in lanes:
                lanes[(r.server, lane)] = _TID_SERVER0 + len(lanes)
            events.append({"ph": "X", "pid": _PID, "tid": lanes[(r.server, lane)], "name": f"request ({r.size})",
                           "ts": us(r.sent), "dur": (r.received - r.sent) / 1000,
                           "args": {"size": r.size, "ok": r.ok}})
        for (server, lane), tid in lanes.items():
            name = self.servers[server] if server < len(self.servers) else str(server)
            events.append({"ph": "M", "pid": _PID, "tid": tid, "name": "thread_name",
                           "args": {"name": f"server {name} request {lane} (round trip)"}})
        return events

    def write(self, path: Path) -> Path:
        """The trace as ``{"traceEvents": [...]}``, which chrome://tracing and Perfetto open."""
        document = {"traceEvents": self.events(), "displayTimeUnit": "ms",
                    "otherData": {"batches": len(self.batches),
                                  "samples": sum(b.size for b in self.batches),
                                  "device_batches": len(self.device_spans),
                                  "server_requests": len(self.request_spans),
                                  "device_clock_uncertainty_us": self.device_uncertainty_ns / 1000}}
        write_output(path, json.dumps(document).encode(), "--timeline")
        return path
