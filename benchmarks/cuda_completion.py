"""How fast the event loop hears that GPU work finished: completion thread vs cudaLaunchHostFunc.

Rerun: python benchmarks/cuda_completion.py [--rounds 3000]

Each round enqueues a small device memset on a stream, records an event, asks the notifier
for a future and awaits it on the running loop (uvloop). Reported: loop-observed round trip
(enqueue to the awaiting task resuming) p50 / p99 / max, and host CPU time per round, for an
idle GPU and with 8 rounds in flight at once. Both notifiers alternate in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from asyncbench.cuda.api import call, device_name
from asyncbench.cuda.memory import DeviceBuffer
from asyncbench.cuda.stream import Event, Stream
from asyncbench.engines.gpu import make_notifier


async def measure(kind: str, rounds: int, depth: int, stream: Stream, buf: DeviceBuffer) -> dict[str, float]:
    """Round-trip microseconds (p50/p99/max) and CPU microseconds per round, ``depth`` rounds in flight."""
    notifier = make_notifier(kind, 0)
    events = [Event(0) for _ in range(depth)]
    trips: list[float] = []
    cpu = time.process_time()
    try:
        for _ in range(rounds // depth):
            starts, futures = [], []
            for event in events:
                starts.append(time.perf_counter())
                call("cudaMemsetAsync", buf.ptr, 1, buf.nbytes, stream.raw)
                event.record(stream)
                futures.append(notifier.after(stream, event))
            for start, fut in zip(starts, futures, strict=True):
                await fut
                trips.append((time.perf_counter() - start) * 1e6)
    finally:
        cpu = time.process_time() - cpu
        notifier.close()
        for e in events:
            e.close()
    trips.sort()
    return {"p50_us": statistics.median(trips), "p99_us": trips[int(0.99 * (len(trips) - 1))], "max_us": trips[-1],
            "cpu_us_per_round": cpu / len(trips) * 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3000)
    p.add_argument("--trials", type=int, default=3)
    args = p.parse_args()
    import uvloop

    stream, buf = Stream(0), DeviceBuffer(64 << 10, 0)
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        for _ in range(args.trials):
            for depth in (1, 8):
                for kind in ("thread", "hostfunc"):
                    results.setdefault((kind, depth), []).append(
                        runner.run(measure(kind, args.rounds, depth, stream, buf)))
    print(f"GPU: {device_name(0)}; {args.rounds} rounds x {args.trials} trials, alternating, uvloop")
    print("| notifier | in flight | p50 us | p99 us | max us | CPU us/round |")
    print("|---|---|---|---|---|---|")
    for (kind, depth), trials in results.items():
        med = {k: statistics.median(t[k] for t in trials) for k in trials[0]}
        print(f"| {kind} | {depth} | {med['p50_us']:.0f} | {med['p99_us']:.0f} | {med['max_us']:.0f} | "
              f"{med['cpu_us_per_round']:.0f} |")


if __name__ == "__main__":
    main()
